"""Config fields: declared once with their help, --help group and valid values; parsed, checked and documented
from that one declaration.

A training config (DistillConfig, TeacherConfig) is a flat frozen dataclass whose fields are declared with
`setting(default, help, group=..., <valid values>)`: the metadata is the single source of

- the type a text value is parsed to (the field's annotation: bool, int, float, str, or a comma tuple typed
  like the default's items): `parse_value` — one parser for the CLI flags and the SaltDistill `overrides` box;
- the key check (unknown keys with a did-you-mean, renamed keys with their new name): `salt_core.config.check_keys`;
- the per-field validation (choices, counts, number ranges, applied to each item of a tuple): `check_fields`,
  called from the config's one validation entry in training/validate.py;
- `--help` (one argparse section per group: `add_config_flags`) and the settings table of docs/training.md
  (`fields_markdown`).

Why groups in metadata and not nested sub-configs: run folders store a flat `config.json` that must keep
resuming, the CLI flags (`--lr-gen`) and node overrides (`lr_gen=...`) are flat names users already write, and
the training loops read `cfg.<field>` in many places. Groups give the reader the structure (model sources,
data, cache, steps, Salt terms, one optimiser per network, ...) in --help, docs/training.md and the declaration,
while every stored file, flag and attribute stays as it was.

Knows nothing of files, the loops or ComfyUI.
"""
import argparse
import dataclasses
import re

from ..salt_core.config import check_keys, strict_from_dict
from ..salt_core.validate import check_count, check_number, parse_bool, quote

SCALARS = (bool, int, float, str)


MAX_THREADS = 256   # torch CPU threads: more is a typo, and thousands make libgomp fail and take a server down
MAX_ITEMS = 64      # items of a tuple field (step choices, eval NFEs): more is a typo or a hostile request


def setting(default, help: str, *, group: str = "", choices: tuple = (), count: int | None = None,
            maximum: int | None = None, low=None, high=None, low_open: bool = False, high_open: bool = False,
            fix: str = ""):
    """A dataclass field whose metadata holds its help text, its --help group and its valid values:
    `choices` (allowed words), `count` (an integer >= count, <= maximum) or `low`/`high` (a number in that range,
    bounds open with *_open; float fields are always checked finite); tuple fields apply the rule to every item.
    `fix` ends the error."""
    rule = dict(choices=choices, count=count, maximum=maximum, low=low, high=high, low_open=low_open,
                high_open=high_open, fix=fix)
    return dataclasses.field(default=default, metadata={"help": help, "group": group, "rule": rule})


def grouped(group: str):
    """`setting` with the group filled in, for declaring one section of a config."""
    def declare(default, help: str, **rule):
        return setting(default, help, group=group, **rule)
    return declare


def _kind(f: dataclasses.Field) -> type:
    """The scalar type of a field's values (a tuple field: the type of its default's items, str if empty)."""
    if isinstance(f.default, tuple):
        return type(f.default[0]) if f.default else str
    return f.type if f.type in SCALARS else type(f.default)


def _describe(f: dataclasses.Field) -> str:
    """What a field accepts, in words: 'a boolean', 'an int', 'comma-separated floats', ..."""
    kind = _kind(f)
    if isinstance(f.default, tuple):
        return f"comma-separated {kind.__name__}s"
    return {bool: "a boolean", int: "an int", float: "a float", str: "a string"}[kind]


def parse_value(f: dataclasses.Field, text: str, *, where: str = ""):
    """A field's value from text, typed from the field: strict booleans (true/false, yes/no, on/off, 1/0; any
    other word is an error), ints, floats, strings, or a comma tuple ('8,4,2'). Errors name the key, the text,
    what was expected and an example."""
    kind = _kind(f)
    if f.type is bool:
        return parse_bool(f.name, text, where=where)
    try:
        if isinstance(f.default, tuple):
            items = [v for v in str(text).split(",") if v.strip()]
            if len(items) > MAX_ITEMS:
                raise ValueError(f"{where + ': ' if where else ''}{f.name} lists {len(items)} items; at most "
                                 f"{MAX_ITEMS}, e.g. {f.name}={_show(f.default)}")
            return tuple(kind(v.strip()) for v in items)
        return kind(text)
    except ValueError:
        raise ValueError(f"{where + ': ' if where else ''}{f.name}={quote(text)}; expected {_describe(f)}, e.g. "
                         f"{f.name}={_show(f.default)}") from None


def field_map(cls) -> dict:
    """{name: dataclasses.Field} of a config class, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls)}


def parse_overrides(cls, text: str, *, where: str, renamed: dict | None = None, reserved: dict | None = None) -> dict:
    """'key=value; key=value' (';' or new lines) → {field: typed value} of `cls`. Unknown and renamed keys are
    refused by check_keys, a key given twice too; `reserved` {field: why} refuses fields set elsewhere (e.g. a
    node's own widget)."""
    fields, pairs = field_map(cls), []
    for match in re.finditer(r"[^;\n]+", text or ""):    # one item at a time: a client's text may be any length
        item = match.group()
        if item.strip():
            key, eq, value = (part.strip() for part in item.partition("="))
            if not eq or not key:
                raise ValueError(f"{where}: {quote(item.strip())} is not `field=value`; e.g. critic_ratio=1; "
                                 f"step_choices=8,4,2; sc_symmetric=true")
            pairs.append((key, value))
            if len(pairs) > len(fields):    # some key is then unknown or given twice: say which below
                break
    check_keys(cls, [k for k, _ in pairs], where=where, renamed=renamed)
    seen = set()
    for key, _ in pairs:
        if key in seen:            # the last would win silently: say which one was meant
            raise ValueError(f"{where}: {key} is set twice in the overrides; keep one {key}=...")
        seen.add(key)
        if reserved and key in reserved:
            raise ValueError(f"{where}: {key} {reserved[key]}")
    return {key: parse_value(fields[key], value, where=where) for key, value in pairs}


def with_overrides(base, overrides: dict, *, where: str = "", renamed: dict | None = None):
    """`base` (a config instance) with some fields replaced; unknown or renamed keys refused by check_keys."""
    check_keys(type(base), overrides, where=where, renamed=renamed)
    return dataclasses.replace(base, **overrides) if overrides else base


def from_dict(cls, d: dict, *, where: str = "", renamed: dict | None = None):
    """A config from a dict (a stored config.json); unknown or renamed keys refused by check_keys."""
    return strict_from_dict(cls, d, where=where, renamed=renamed)


def check_fields(cfg, where: str) -> None:
    """Every field of `cfg` against the valid values declared in its metadata (each item of a tuple field)."""
    for f in dataclasses.fields(cfg):
        rule = f.metadata.get("rule")
        if rule is None:
            continue
        value = getattr(cfg, f.name)
        if isinstance(value, (tuple, list)) and len(value) > MAX_ITEMS:
            raise ValueError(f"{where}: {f.name} holds {len(value)} items; at most {MAX_ITEMS}, e.g. "
                             f"{f.name}={_show(f.default)}")
        for item in (value if isinstance(value, (tuple, list)) else (value,)):   # lists: from config.json
            if rule["choices"] and item not in rule["choices"]:
                raise ValueError(f"{where}: {f.name}={quote(item)}; expected one of {tuple(rule['choices'])}")
            if rule["count"] is not None:
                check_count(f.name, item, where=where, minimum=rule["count"], maximum=rule["maximum"], fix=rule["fix"])
            elif _kind(f) is float or rule["low"] is not None or rule["high"] is not None:
                check_number(f.name, item, where=where, low=rule["low"], high=rule["high"], low_open=rule["low_open"],
                             high_open=rule["high_open"], fix=rule["fix"])


def _flag_type(f: dataclasses.Field):
    """An argparse `type` for a field: parse_value with its error as the argparse message."""
    def parse(text):
        try:
            return parse_value(f, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = _describe(f)
    return parse


def _groups(cls) -> dict:
    """{group: [fields]} in order of first appearance."""
    out = {}
    for f in dataclasses.fields(cls):
        out.setdefault(f.metadata.get("group", ""), []).append(f)
    return out


def describe(f: dataclasses.Field) -> str:
    """A field's help text with its choices, as --help and docs/training.md print it."""
    choices = f.metadata.get("rule", {}).get("choices")
    return f.metadata.get("help", "") + (f" (one of: {', '.join(choices)})" if choices else "")


def _show(value) -> str:
    """A default as a user types it: 8,4,2 for a tuple, repr otherwise."""
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else repr(value)


class _RenamedFlag(argparse.Action):
    """A flag whose field was renamed: using it stops with the new flag's name (hidden from --help)."""

    def __init__(self, option_strings, dest, renamed_to: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.renamed_to = renamed_to

    def __call__(self, parser, namespace, values, option_string=None):
        new, _, why = self.renamed_to.partition(" ")
        parser.error(f"{option_string} was renamed to --{new.replace('_', '-')} {why}".rstrip())


def add_config_flags(parser: argparse.ArgumentParser, cls, renamed: dict | None = None, presets: bool = False) -> None:
    """One --flag per field of `cls`, in one --help section per group; help = the field's help, its choices and
    default. Flags default to None (= keep the preset's / config's value); `presets`: the command starts from a
    preset, so the default shown is the config's and a preset may set another (said in each section's title).
    `renamed` {old field: "new_field (how to convert)"} keeps the old flags, each stopping with its new name."""
    for old, new in (renamed or {}).items():
        parser.add_argument(f"--{old.replace('_', '-')}", dest=f"_renamed_{old}", action=_RenamedFlag,
                            renamed_to=new)
    for group, fields in _groups(cls).items():
        title = f"{cls.__name__}: {group}" if group else cls.__name__
        section = parser.add_argument_group(title + (" (defaults shown are the config's: --preset may set others)"
                                                     if presets else ""))
        for f in fields:
            section.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, type=_flag_type(f),
                                 metavar=f.name.upper() if f.type is not bool else "BOOL",
                                 help=f"{describe(f)} (default {_show(f.default)})")


def overrides_from_args(args: argparse.Namespace, cls) -> dict:
    """{field: value} of the config flags given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}


def fields_markdown(cls) -> str:
    """The settings table of `cls` (docs/training.md): one row per field, a heading row per group (from the
    metadata)."""
    rows = [f"| {cls.__name__} field | default | meaning |", "|---|---|---|"]
    for group, fields in _groups(cls).items():
        rows.append(f"| **{group}** | | |")
        for f in fields:
            rows.append(f"| `{f.name}` | `{_show(f.default)}` | {describe(f).replace('|', '/')} |")
    return "\n".join(rows)
