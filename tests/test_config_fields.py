"""Config fields: one parser, one key check and one validation for the CLI, the SaltDistill overrides and stored
config.json files; --help and the settings table of docs/training.md come from the field declarations."""
import argparse
import dataclasses
import itertools
import json
import os

import pytest

from comfyui_salt.salt_core.config import WanConfig
from comfyui_salt.training.config_fields import (add_config_flags, fields_markdown, field_map, overrides_from_args,
                                                 parse_overrides, parse_value)
from comfyui_salt.training.distill_config import (DISTILL_PRESETS, RENAMED, RENAMED_PRESETS, DistillConfig,
                                                  get_preset)
from comfyui_salt.training.teacher import TeacherConfig

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "training.md")
FIELDS = field_map(DistillConfig)


@pytest.mark.parametrize("name, text, value", [
    ("critic_ratio", "3", 3), ("lr_gen", "1e-5", 1e-5), ("teacher", "a/b.safetensors", "a/b.safetensors"),
    ("step_choices", "8, 4,2", (8, 4, 2)), ("step_probs", "0.5,0.5", (0.5, 0.5)), ("sc_symmetric", "YES", True),
    ("align_k4", "off", False), ("shift", "5", 5.0),
])
def test_text_values_are_typed_from_the_field(name, text, value):
    parsed = parse_value(FIELDS[name], text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("name, text, words", [
    ("sc_symmetric", "ture", ["sc_symmetric='ture'", "true/false, yes/no, on/off or 1/0"]),
    ("critic_ratio", "fast", ["critic_ratio='fast'", "an int", "critic_ratio=5"]),
    ("step_choices", "8;4", ["step_choices='8;4'", "comma-separated ints", "step_choices=4"]),
])
def test_a_bad_word_is_an_error_naming_the_key_the_word_and_what_is_accepted(name, text, words):
    with pytest.raises(ValueError) as e:
        parse_value(FIELDS[name], text)
    assert all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize("call", [
    lambda: get_preset("toy-dmd", lr_gne=1e-5),
    lambda: DistillConfig.from_dict({"lr_gne": 1e-5}),
    lambda: parse_overrides(DistillConfig, "lr_gne=1e-5", where="SaltDistill: overrides"),
])
def test_an_unknown_key_gets_a_did_you_mean_and_the_known_keys_at_every_door(call):
    with pytest.raises(ValueError) as e:
        call()
    assert "unknown keys ['lr_gne']" in str(e.value) and "did you mean lr_gen" in str(e.value)
    assert "known keys" in str(e.value) and "'critic_ratio'" in str(e.value)


def test_the_model_and_world_configs_share_the_key_check():
    with pytest.raises(ValueError, match=r"WanConfig: unknown keys \['num_head'\]; num_head: did you mean num_heads"):
        WanConfig.from_dict({"num_head": 4})


@pytest.mark.parametrize("call", [
    lambda: get_preset("toy-dmd", ema_start=20),
    lambda: DistillConfig.from_dict({"ema_start": 20}),
    lambda: parse_overrides(DistillConfig, "ema_start=20", where="x", renamed=RENAMED),
])
def test_a_renamed_key_names_its_replacement_at_every_door(call):
    with pytest.raises(ValueError, match="ema_start was renamed to ema_start_iter"):
        call()


def test_the_cli_flags_and_the_node_overrides_parse_the_same_text_to_the_same_config():
    text = {"step_choices": "8,2", "step_probs": "0.5,0.5", "sc_symmetric": "on", "lr_gen": "1e-5",
            "critic_ratio": "1", "align_coupling": "independent", "prompts_file": "p.txt"}
    parser = argparse.ArgumentParser()
    add_config_flags(parser, DistillConfig)
    argv = list(itertools.chain.from_iterable((f"--{k.replace('_', '-')}", v) for k, v in text.items()))
    from_cli = get_preset("toy-salt", **overrides_from_args(parser.parse_args(argv), DistillConfig))
    from_node = get_preset("toy-salt", **parse_overrides(DistillConfig, "; ".join(f"{k}={v}" for k, v in text.items()),
                                                          where="SaltDistill: overrides"))
    assert from_cli == from_node
    assert (from_cli.step_choices, from_cli.sc_symmetric, from_cli.critic_ratio) == ((8, 2), True, 1)


def test_a_bad_boolean_flag_is_an_argparse_error_naming_the_word(capsys):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, DistillConfig)
    with pytest.raises(SystemExit):
        parser.parse_args(["--align-k4", "maybe"])
    assert "align_k4='maybe'; expected a boolean" in capsys.readouterr().err


@pytest.mark.parametrize("cls", [DistillConfig, TeacherConfig])
def test_every_numeric_field_declares_its_valid_values(cls):
    for f in dataclasses.fields(cls):
        rule = f.metadata["rule"]
        assert f.metadata["help"] and f.metadata["group"], f.name
        if f.type is int and f.name != "local_attn_frames":          # -1 (global) or a count: a cross-field rule
            assert rule["count"] is not None, f.name
        if f.type is float:
            with pytest.raises(ValueError, match=f"{cls.__name__}: {f.name}=nan"):
                cls(**{f.name: float("nan")})


def test_a_word_outside_the_declared_choices_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"align_coupling='noise-aligned'; expected one of \('noise_aligned', "
                                         r"'independent'\)"):
        get_preset("toy-salt", align_coupling="noise-aligned")


def test_help_prints_one_section_per_group_holding_every_field():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, DistillConfig)
    sections = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups
                if g.title.startswith("DistillConfig")}
    assert len(sections) >= 8
    assert sorted(itertools.chain.from_iterable(sections.values())) == sorted(FIELDS)
    assert sections["DistillConfig: critic optimiser"] == ["lr_critic", "beta1_critic", "beta2_critic"]


def test_the_docs_settings_table_is_generated_from_the_declarations():
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    from comfyui_salt.training.ode_init_config import OdeInitConfig
    for cls in (DistillConfig, OdeInitConfig):
        assert fields_markdown(cls) in readme, (
            f"docs/training.md's {cls.__name__} settings table is stale: replace the block between its `generated` "
            f"comments with comfyui_salt.training.config_fields.fields_markdown({cls.__name__})")


def test_no_two_presets_share_their_settings():
    same = [(a, b) for (a, x), (b, y) in itertools.combinations(DISTILL_PRESETS.items(), 2) if x == y]
    assert not same, f"presets with identical settings: {same}; keep one name (RENAMED_PRESETS for the old one)"


@pytest.mark.parametrize("old", sorted(RENAMED_PRESETS))
def test_a_folded_preset_name_is_refused_with_the_name_to_use(old):
    new = RENAMED_PRESETS[old].split()[0]
    assert new in DISTILL_PRESETS
    with pytest.raises(KeyError, match=f"{old}.*folded into {new}"):
        get_preset(old)


@pytest.mark.parametrize("name", sorted(DISTILL_PRESETS))
def test_a_stored_flat_config_json_loads_back_to_the_same_config(name):
    stored = json.loads(json.dumps(dataclasses.asdict(DISTILL_PRESETS[name]), indent=1, sort_keys=True))
    assert DistillConfig.from_dict(stored) == DISTILL_PRESETS[name]


def test_a_key_given_twice_in_the_overrides_is_refused_naming_it():
    from comfyui_salt.training.config_fields import parse_overrides
    from comfyui_salt.training.distill_config import DistillConfig
    assert parse_overrides(DistillConfig, "lr_gen=1e-5; critic_ratio=2", where="t") == {"lr_gen": 1e-5,
                                                                                        "critic_ratio": 2}
    with pytest.raises(ValueError, match="t: lr_gen is set twice in the overrides"):
        parse_overrides(DistillConfig, "lr_gen=1e-5; lr_gen=2e-5", where="t")
