"""Checkpoint files: read and write Wan weights in any layout as safetensors or weights-only torch files.

The file side of `salt_core.layouts` (which never sees a path). Torch files are read with
`weights_only=True` only: Salt never unpickles arbitrary code. Writes go to a temporary file in the
target directory and are renamed into place, so an interrupted save never leaves a torn file.
Knows nothing of training loops, samplers or ComfyUI.
"""
import collections
import dataclasses
import json
import logging
import math
import os
import pickle
import re
import secrets
import tempfile
from collections.abc import Mapping

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..salt_core import layouts
from ..salt_core.config import WanConfig, get_config
from ..salt_core.model import WanModel
from ..salt_core.rope import RotaryTable
from ..salt_core.validate import available_memory, check_memory, out_of_memory

log = logging.getLogger(__name__)

SAFETENSORS_EXTS = (".safetensors",)
TORCH_EXTS = (".pt", ".pth", ".ckpt", ".bin")
NESTED_LAYOUTS = ("self_forcing", "longlive")
NESTED_HEADS = ("generator", "generator_ema", layouts.LORA_KEY)  # first key parts that mark a flattened release
CONFIG_META, LAYOUT_META, ALIAS_META = "salt_config", "salt_layout", "salt_aliases"
COMFY_CONFIG_META = "config"     # ComfyUI's model-detection overrides ({"transformer": {...}}), read by 0.16+
# a release torch file's metadata ({str: str}, e.g. a student's teacher_mode): an entry beside the release's heads,
# which Self Forcing's loaders, reading those heads by name, pass over
TORCH_META_KEY = "salt_metadata"


def _extension(path: str) -> str:
    """The lower-case extension of a checkpoint path, validated against the supported ones."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in SAFETENSORS_EXTS + TORCH_EXTS:
        raise ValueError(f"checkpoint path {path!r} has extension {ext!r}; expected one of "
                         f"{SAFETENSORS_EXTS + TORCH_EXTS} (rename the file if its content is one of those)")
    return ext


# -- nesting for safetensors (which stores one flat dict of tensors) ------------------------------------
def flatten_release(obj: Mapping) -> dict:
    """{"generator_ema": {"model.x": t}} → {"generator_ema.model.x": t}; top-level tensors stay as they are."""
    flat = {}
    for outer, value in obj.items():
        if isinstance(value, Mapping):
            flat.update({f"{outer}.{k}": v for k, v in value.items()})
        elif isinstance(value, torch.Tensor):
            flat[outer] = value
    return flat


def unflatten_release(flat: Mapping) -> dict:
    """Inverse of `flatten_release` for dicts with `generator.` / `generator_ema.` keys; others unchanged."""
    if not any(k.partition(".")[0] in NESTED_HEADS for k in flat):
        return dict(flat)
    nested = {}
    for key, value in flat.items():
        outer, dot, inner = key.partition(".")
        if dot:
            nested.setdefault(outer, {})[inner] = value
        else:
            nested[key] = value
    return nested


def _unshare(sd: Mapping) -> tuple:
    """(tensors safetensors accepts, {alias key: saved key}): identical views saved once, overlaps cloned."""
    unique, aliases, views, storages = {}, {}, {}, set()
    for key, t in sd.items():
        storage = (t.device, t.untyped_storage().data_ptr())
        view = storage + (t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in views:
            aliases[key] = views[view]
            continue
        views[view] = key
        if storage in storages and t.numel():  # a different view of memory we already save
            t = t.clone(memory_format=torch.contiguous_format)
        storages.add(storage)
        unique[key] = t.contiguous()
    return unique, aliases


# -- reading ------------------------------------------------------------------------------------------
def read_metadata(path: str) -> dict:
    """The metadata of a safetensors file, from its header only (no tensor is read). A path that is not a regular file
    (a FIFO: opening it would wait for a writer for good; a device) is a ValueError, as an unreadable file is."""
    if not os.path.isfile(path):
        raise ValueError(f"read_metadata: {path!r} is not a regular file (missing, a folder, a FIFO or a device); a "
                         f"model file is expected there")
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except SafetensorError as e:
        raise ValueError(f"read_metadata: {path!r} is not a readable safetensors file ({e}); it is "
                         f"truncated or corrupt — download or save it again") from e


def _read_safetensors(path: str) -> tuple:
    """(tensors with release nesting and aliases restored, metadata) of a safetensors file."""
    try:
        flat = load_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except SafetensorError as e:
        raise ValueError(f"read_checkpoint: {path!r} is not a readable safetensors file ({e}); it is "
                         f"truncated or corrupt — download or save it again") from e
    for alias, saved in _aliases(path, metadata, flat).items():
        flat[alias] = flat[saved]
    return unflatten_release(flat), metadata


def _aliases(path: str, metadata: Mapping, flat: Mapping) -> dict:
    """The file's `salt_aliases` {alias: saved key}, validated: JSON of strings naming tensors in the file."""
    text = metadata.get(ALIAS_META, "{}")
    try:
        aliases = json.loads(text)
    except (ValueError, RecursionError) as e:    # RecursionError: "[[[[…" nested past the parser's depth
        raise ValueError(f"read_checkpoint: {path!r}: metadata field {ALIAS_META!r} is not valid JSON "
                         f"({type(e).__name__}: {str(e)[:80]}); the file's header is damaged — save the model "
                         f"again") from None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ValueError(f"read_checkpoint: {path!r}: metadata field {ALIAS_META!r} is {text[:80]!r}; expected a JSON "
                         f"object of tensor names — save the model again")
    missing = sorted(v for v in aliases.values() if v not in flat)
    if missing:
        raise ValueError(f"read_checkpoint: {path!r}: metadata field {ALIAS_META!r} points at tensors the file does "
                         f"not hold: {missing[:5]}; the header is damaged — save the model again")
    stored = sorted(a for a in aliases if a in flat)   # save_model aliases only names it did not store
    if stored:
        raise ValueError(f"read_checkpoint: {path!r}: metadata field {ALIAS_META!r} would replace tensors the file "
                         f"stores: {stored[:5]}; the header is damaged or forged — save the model again")
    return aliases


def _read_torch(path: str):
    """The object in a torch file, loaded with weights_only=True (tensors, dicts, lists, numbers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = next((ln.strip() for ln in str(e).splitlines() if "WeightsUnpickler error" in ln), str(e)[:200])
        raise ValueError(
            f"read_checkpoint: refusing {path!r}: it holds Python objects other than tensors ({reason}). Salt "
            f"reads torch files with torch.load(weights_only=True) only and never unpickles arbitrary code. If "
            f"you trust the file, convert it once outside Salt: obj = torch.load(path, weights_only=False), "
            f"then save its tensors with safetensors.torch.save_file(state_dict, 'model.safetensors')") from e
    except Exception as e:  # torch reports damaged files as RuntimeError, EOFError, KeyError, … by format
        if out_of_memory(e):   # the host's, not the file's
            raise
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise ValueError(f"read_checkpoint: cannot read {path!r} as a torch checkpoint ({type(e).__name__}: "
                         f"{first}); the file is truncated or corrupt — download or save it again") from e


def read_checkpoint(path) -> tuple:
    """(loaded object, metadata dict) of a .safetensors or weights-only .pt/.pth/.ckpt/.bin file.

    Flattened release dicts (`generator_ema.model.blocks…`) come back nested; a torch file's metadata is its
    TORCH_META_KEY entry (taken out of the object), else {}.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_checkpoint: no checkpoint file at {path!r}")
    if _extension(path) in SAFETENSORS_EXTS:
        return _read_safetensors(path)
    obj = _read_torch(path)
    return _without_torch_metadata(obj)


def _without_torch_metadata(obj) -> tuple:
    """(obj without its TORCH_META_KEY entry, that entry's {str: str}) of a loaded torch file ({} when none)."""
    if not isinstance(obj, dict) or not isinstance(obj.get(TORCH_META_KEY), dict):
        return obj, {}
    obj = dict(obj)
    return obj, {str(k): str(v) for k, v in obj.pop(TORCH_META_KEY).items()}


def file_metadata(path: str) -> dict:
    """The metadata of a model file without reading its tensors: a safetensors header's, or a release torch file's
    TORCH_META_KEY entry (the file memory-mapped: its pickle read, no tensor data); {} for a file without any, one
    that does not read or is not a regular file (the loaders report those with the full story). The host out of
    memory (a MemoryError, a map refused: out_of_memory) is not the file's fault: it is raised (read as "no marks", a
    bidirectional release .pt would load as causal)."""
    try:
        if _extension(path) in SAFETENSORS_EXTS:
            return read_metadata(path)
        if not os.path.isfile(path):
            return {}
        return _without_torch_metadata(torch.load(path, map_location="cpu", weights_only=True, mmap=True))[1]
    except Exception as e:   # noqa: BLE001  (an old-format torch file cannot be mapped; damaged files raise any type)
        if out_of_memory(e):
            raise
        return {}


# -- loading a model ----------------------------------------------------------------------------------
# bytes per element of every safetensors dtype code (0.8: the sub-byte F4 / F6 ones rounded up to a byte)
SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F6_E2M3": 1,
                        "F6_E3M2": 1, "F4": 1, "C64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
                        "U16": 2, "U8": 1, "BOOL": 1}
FLOAT_CODES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_SAFETENSORS_CODE = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


class HostMemoryError(MemoryError):
    """A model file refused before it is read: the host cannot hold its weights (load_host_bytes)."""


def safetensors_header(path: str):
    """({name: (dtype code, shape, stored bytes)}, metadata) from a safetensors file's header alone, as safetensors
    reads and validates it (offsets inside the file, known dtypes), or None when it is not one: read_checkpoint then
    reports the file with the full story (a FIFO or device: None without opening it)."""
    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            entries = {}
            for name in f.keys():
                view = f.get_slice(name)
                code, shape = view.get_dtype(), tuple(view.get_shape())
                entries[name] = (code, shape, math.prod(shape) * SAFETENSORS_ITEMSIZE.get(code, 1))
            return entries, dict(f.metadata() or {})
    except Exception:   # noqa: BLE001  (SafetensorError, or anything a hostile header raises: "not one")
        return None


def _loaded_entries(entries: dict, metadata: Mapping, use_ema: bool) -> dict:
    """The entries of a header that load_model keeps: all of a flat file; of a release (generator_ema / generator
    heads, the aliases of `salt_aliases` resolved), the head _pick_release_entry takes and a LoRA head."""
    try:
        aliases = json.loads(metadata.get(ALIAS_META, "{}"))
        aliases = {a: t for a, t in aliases.items() if isinstance(a, str) and t in entries}
    except (ValueError, TypeError, AttributeError, RecursionError):
        aliases = {}
    named = {**entries, **{a: entries[t] for a, t in aliases.items()}}
    heads = {k.split(".", 1)[0] for k in named}
    if not heads & set(NESTED_HEADS):
        return entries
    wanted = "generator_ema" if use_ema else "generator"
    head = wanted if wanted in heads else next((h for h in ("generator", "generator_ema") if h in heads), None)
    return {k: v for k, v in named.items() if k.split(".", 1)[0] in (head, layouts.LORA_KEY)}


def load_host_bytes(path, dtype=torch.float32, keep_fp8: bool = False, device="cpu", use_ema: bool = True) -> int:
    """Host bytes load_model(path, dtype=, keep_fp8=, device=, use_ema=) holds at its peak: the weights as loaded.
    safetensors maps its file and each tensor is cast from the mapped pages (clean file pages, which the kernel drops
    under pressure: not counted), or kept as those pages where it is stored as loaded (the model's weights: counted);
    of a release, the head it loads. Scaled-fp8 weights are dequantized on the host (into `dtype`, through float32
    a chunk of rows at a time: layouts.scaled_weight), whatever `device` and keep_fp8; on a GPU `device` the rest
    goes there, the host holding mapped pages only. A torch file: `_torch_load_bytes` (torch.load reads it whole;
    its pickle, read memory-mapped without tensor data, gives the loaded head's shapes)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return 0
    header = safetensors_header(path) if _extension(path) in SAFETENSORS_EXTS else None
    if header is None:
        return (_torch_load_bytes(path, dtype, keep_fp8, device, use_ema) if _extension(path) in TORCH_EXTS
                else os.path.getsize(path))
    entries = _loaded_entries(*header, use_ema)
    scaled = any(k.endswith((layouts.SCALE_WEIGHT, layouts.SCALED_FP8_MARKER)) for k in entries)
    item, target = torch.empty((), dtype=dtype).element_size(), _SAFETENSORS_CODE.get(dtype)
    on_host = torch.device(device).type == "cpu"
    total, transient = 0, 0
    for key, (code, shape, b) in entries.items():
        if scaled and key.endswith((layouts.SCALE_WEIGHT, layouts.SCALE_INPUT, layouts.SCALED_FP8_MARKER)):
            continue                                   # read, then dropped
        count = b // SAFETENSORS_ITEMSIZE.get(code, 1)
        if scaled and key.endswith(".weight") and key[:-len(".weight")] + layouts.SCALE_WEIGHT in entries:
            total += count * item                      # weight·scale in `dtype`, on the host (layouts.scaled_weight)
            if dtype != torch.float32 and shape:       # beside it, one chunk of rows in float32
                row = math.prod(shape[1:])
                transient = max(transient, 4 * min(count, max(layouts.DEQUANT_CHUNK, row)))
            continue
        kept = code not in FLOAT_CODES or code == target or (keep_fp8 and code.startswith("F8") and len(shape) == 2
                                                             and key.endswith(".weight"))
        total += (b if kept else count * item) if on_host else 0
    return total + transient


def _torch_load_bytes(path: str, dtype, keep_fp8: bool, device, use_ema: bool) -> int:
    """Host bytes load_model holds at its peak reading a torch file: torch.load reads the whole file (its size); the
    other heads of a release are dropped, then the loaded head is cast one tensor at a time, each original freed as
    its cast replaces it, so on the host the peak is max(file size, head as stored + one cast tensor, head as cast
    + one cast tensor) (measured: tests/test_bad_input_sizes.py); off the host the casts go to `device`. Tensors
    already in `dtype`, and with keep_fp8 fp8 linear weights, stay as read. Scaled-fp8 weights (a flat file) are
    dequantized into `dtype` on the host beside the whole file, whatever `device` and keep_fp8; a LongLive release's
    LoRA is merged there too, each adapted weight made anew beside the file (`_lora_merge_bytes`). The shapes come
    from the pickle read memory-mapped (no tensor data): a
    file that cannot be mapped (torch's old format) counts its size, and load_model checks its casts once it is
    read (`_check_views`, `_cast_bytes`)."""
    size = os.path.getsize(path)
    try:
        obj = _without_torch_metadata(torch.load(path, map_location="cpu", weights_only=True, mmap=True))[0]
    except Exception:   # noqa: BLE001  (torch's old format cannot be mapped; damage: read_checkpoint's to report)
        return size
    entry = layouts.release_entry(obj, use_ema) if isinstance(obj, Mapping) else None
    lora = obj.get(layouts.LORA_KEY) if entry is not None else None
    obj = obj[entry] if entry is not None else obj    # a release: the head load_model takes
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    _check_views(tensors.items(), path)
    merge = _lora_merge_bytes(lora, tensors) if isinstance(lora, Mapping) else 0
    scaled = {k for k in tensors if k.endswith(".weight") and k[:-len(".weight")] + layouts.SCALE_WEIGHT in tensors}
    item = torch.empty((), dtype=dtype).element_size()
    dequantized, transient = 0, 0
    if entry is None and scaled:                      # layouts.dequantize_scaled_fp8: the whole file held beside it
        for k in scaled:
            t = tensors[k]
            dequantized += t.numel() * item
            if dtype != torch.float32 and t.ndim:     # beside the result, one chunk of rows in float32
                transient = max(transient, 4 * min(t.numel(), max(layouts.DEQUANT_CHUNK, t[0].numel())))
        tensors = {k: t for k, t in tensors.items() if k not in scaled and not k.endswith(
            (layouts.SCALE_WEIGHT, layouts.SCALE_INPUT, layouts.SCALED_FP8_MARKER))}
    if torch.device(device).type != "cpu":
        return size + dequantized + transient + merge
    stored, cast, largest = _cast_bytes(tensors, dtype, keep_fp8)
    # after a merge the allocator keeps what it freed, and the casts reuse it but for about one tensor (measured)
    return max(size + dequantized + transient + merge + (largest if merge else 0),
               dequantized + max(stored, cast) + largest)


def _lora_merge_bytes(lora: Mapping, head: Mapping) -> int:
    """Host bytes layouts.merge_lora takes beside a loaded file: each adapted weight made anew in its own dtype (that
    of most of the head's weights of its shape, B's rows × A's columns: the blocks' linear layers outnumber any
    other matrix of their shape, an embedding kept in float32), and four float32 copies of the largest (the one it
    merges in, and the allocator's spare blocks of that size: measured, tests/test_bad_input_sizes.py). 0 for a LoRA
    that will not merge (load_model reports it with the file's name)."""
    try:
        factors, _ = layouts.lora_factors(lora)
    except layouts.LayoutError:
        return 0
    counts = collections.Counter((tuple(t.shape), t.element_size()) for t in head.values()
                                 if t.is_floating_point() and t.ndim == 2)
    item = {}                                        # a weight's shape → the head's most common itemsize for it
    for (shape, size), n in sorted(counts.items(), key=lambda c: (c[1], c[0][1])):
        item[shape] = size                           # the most common last (ties: the wider)
    shapes = [(p["B"].shape[0], p["A"].shape[1]) for p in factors.values() if set(p) == {"A", "B"}]
    return (sum(math.prod(s) * item.get(s, 4) for s in shapes)
            + 4 * 4 * max((math.prod(s) for s in shapes), default=0))


def _check_views(tensors, path: str) -> None:
    """Refuse, from (key, tensor) pairs, tensors whose storage is smaller than their elements (a stride-0 `expand`:
    a 37 KB file held 1.3B-wide shapes and cast to 406 MiB) and tensors of another layout than strided (sparse:
    they have no storage to measure) with a ValueError: no checkpoint stores one. Reads no tensor data."""
    tensors = list(tensors)
    other = [(k, t.layout) for k, t in tensors if t.layout != torch.strided]
    if other:
        raise ValueError(f"load_model({path!r}): {len(other)} tensor(s) are not dense (e.g. "
                         f"{[k for k, _ in other[:3]]}: {other[0][1]}), which no checkpoint's weights are; save them dense")
    short = [k for k, t in tensors if t.untyped_storage().nbytes() < t.numel() * t.element_size()]
    if short:
        raise ValueError(f"load_model({path!r}): {len(short)} tensor(s) are views holding fewer values than their "
                         f"shapes (e.g. {short[:3]}: an expanded or overlapping tensor, not a checkpoint's weights); "
                         f"save the real weights")


def _tensors_in(obj, prefix: str = "", depth: int = 0):
    """(dotted key, tensor) of every tensor in a loaded torch object: nested dicts and lists (a release's heads)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif depth < 8 and isinstance(obj, (Mapping, list, tuple)):
        for k, v in (obj.items() if isinstance(obj, Mapping) else enumerate(obj)):
            yield from _tensors_in(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)


def _kept_as_read(key: str, t: torch.Tensor, dtype, keep_fp8: bool) -> bool:
    """Whether load_model keeps tensor `key` in the dtype it was read in: not floating, already `dtype`, or with
    keep_fp8 an fp8 linear weight (2-D `.weight`, cast on use)."""
    return (not t.is_floating_point() or t.dtype == dtype
            or (keep_fp8 and t.dtype.itemsize == 1 and t.ndim == 2 and key.endswith(".weight")))


def _cast_bytes(tensors: Mapping, dtype, keep_fp8: bool) -> tuple:
    """(bytes as stored, bytes as load_model casts them, largest single cast) of {key: tensor}; no data is read."""
    item = torch.empty((), dtype=dtype).element_size()
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    casts = {k: t.numel() * item for k, t in tensors.items() if not _kept_as_read(k, t, dtype, keep_fp8)}
    cast = sum(casts.values()) + sum(t.numel() * t.element_size() for k, t in tensors.items() if k not in casts)
    return stored, cast, max(casts.values(), default=0)


def _choose_config(sd: Mapping, metadata: Mapping, preset, num_heads) -> WanConfig:
    """The config to build: `preset` if given, else the file's own `salt_config`, else inferred from shapes."""
    if preset is not None:
        cfg = get_config(preset) if isinstance(preset, str) else preset
    elif CONFIG_META in metadata:
        cfg = _config_from_metadata(metadata[CONFIG_META])
    else:
        shapes = layouts.infer_config(sd, 1 if num_heads is None else num_heads)   # 1 head: shapes alone
        preset = layouts.match_preset(shapes) if num_heads is None else None
        if preset is not None:   # a file without metadata (.pt) of a known shape: the preset's heads, text_len, eps
            log.info("load_model: no config in the file; its shapes are the %r preset's, whose config is used",
                     preset)
            return get_config(preset)
        cfg = layouts.infer_config(sd, num_heads)   # Wan's head count, dim // 128 (a LayoutError naming num_heads)
        if num_heads is None:
            log.info("load_model: config inferred from shapes; head count assumed dim // %d = %d (pass num_heads "
                     "if this model differs)", layouts.WAN_HEAD_DIM, cfg.num_heads)
        return cfg
    return cfg if num_heads is None else dataclasses.replace(cfg, num_heads=num_heads)


def _config_from_metadata(text: str) -> WanConfig:
    """The WanConfig stored in a file's `salt_config` metadata, validated like user input."""
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:    # RecursionError: "[[[[…" nested past the parser's depth
        raise ValueError(f"metadata field {CONFIG_META!r} is not valid JSON ({type(e).__name__}: "
                         f"{str(e)[:80]})") from None
    if not isinstance(d, dict):
        raise ValueError(f"metadata field {CONFIG_META!r} is {text[:80]!r}; expected a JSON object of WanConfig fields")
    try:
        return WanConfig.from_dict(d)
    except TypeError as e:
        raise ValueError(f"metadata field {CONFIG_META!r}: {e}") from None
    except (ValueError, MemoryError) as e:
        raise type(e)(f"metadata field {CONFIG_META!r}: {e}") from None


FINITE_CHUNK = 1 << 22   # elements of an fp8 tensor widened at once to check it (16 MiB of float32)


def _finite(t: torch.Tensor) -> bool:
    """Whether a floating tensor holds no NaN or Inf, in one pass and a few bytes beside it: its min and max (NaN
    propagates through both, an Inf is one of them); fp8 (no kernel) widened a chunk at a time."""
    flat, narrow = t.reshape(-1), t.dtype.itemsize == 1
    for part in flat.split(FINITE_CHUNK) if narrow else (flat,):
        part = part.float() if narrow else part
        if part.numel() and not all(bool(torch.isfinite(x)) for x in torch.aminmax(part)):
            return False
    return True


def check_finite_weights(sd: Mapping, path: str) -> None:
    """Refuse weights holding NaN or Inf, naming the first tensors affected (a broken training run or a bad copy),
    taking no memory the size of a tensor (a load's peak is its weights: load_host_bytes)."""
    bad = [k for k, t in sd.items() if t.is_floating_point() and not _finite(t)]
    if bad:
        raise ValueError(f"load_model({path!r}): {len(bad)} tensor(s) hold NaN/Inf, e.g. {bad[:3]}; the weights are "
                         f"broken (a diverged training run or a damaged copy) — use an earlier checkpoint or "
                         f"download the file again")


def load_model(path, preset=None, use_ema: bool = True, dtype=torch.float32, num_heads: int = None,
               device="cpu", keep_fp8: bool = False, copy: bool = False) -> tuple:
    """(WanModel, detected layout) from a checkpoint file in any layout.

    `preset` (a name or WanConfig) wins over the file's own config, which wins over shape inference
    (heads: `num_heads` or dim // 128). The model is built on the meta device and takes the file's
    tensors (cast to `dtype`, moved to `device`) without a second copy in memory. fp8 files (Comfy-Org's
    `*_fp8_e4m3fn`) load too: cast to `dtype`, or with `keep_fp8` their linear weights stay fp8 (the caller makes
    those layers cast on use); scaled-fp8 files are dequantized (weight·scale_weight). A file the host cannot hold
    (load_host_bytes against its free memory and swap) is refused with a MemoryError before any tensor is read.
    A safetensors tensor already in `dtype` stays a view of the file's memory map (as ComfyUI keeps it): the file
    then must not change while the model is used; `copy` copies it out (ComfyUI's --disable-mmap).
    """
    path = os.fspath(path)
    try:
        check_memory(f"reading {path!r} in {str(dtype).removeprefix('torch.')}",
                     load_host_bytes(path, dtype, keep_fp8, device, use_ema),
                     available_memory(torch.device("cpu"), swap=True), where="load_model",
                     limit_what="the host's free memory and swap",
                     fix="free host memory (other programs, other loaded models) or load a smaller file (a bf16 or "
                         "an unscaled fp8 one) or in a smaller dtype")
    except MemoryError as e:
        raise HostMemoryError(str(e)) from None
    obj, metadata = read_checkpoint(path)
    if _extension(path) in TORCH_EXTS:   # before anything is computed from them (dequantized, checked, cast)
        _check_views(_tensors_in(obj), path)   # pairs: two entries with one dotted name are both checked
    try:
        if isinstance(obj, Mapping) and not any(isinstance(v, Mapping) for v in obj.values()):   # a flat state dict
            obj = layouts.dequantize_scaled_fp8(obj, dtype)
        sd, layout = layouts.to_wan_state_dict(obj, use_ema=use_ema)
        del obj  # unused release entries (critic, the other generator) can be freed now
        cfg = _choose_config(sd, metadata, preset, num_heads)
        layouts.check_state_dict(sd, cfg, layout)
        layouts.check_float_weights(sd, "check_state_dict")
    except layouts.LayoutError as e:
        raise layouts.LayoutError(f"load_model({path!r}): {e}") from e
    except OverflowError as e:   # scaled fp8 dequantized into fp16
        raise ValueError(f"load_model({path!r}): {e}: cast, it would be Inf; load in bf16 or fp32") from None
    except (ValueError, MemoryError) as e:   # the file's config, validated like user input
        raise type(e)(f"load_model({path!r}): {e}; fix the file's metadata or pass preset=...") from None
    # a torch file's casts counted before any is made (one torch cannot map, of its old format, was estimated at its
    # size alone)
    if _extension(path) in TORCH_EXTS:
        stored, cast, largest = _cast_bytes(sd, dtype, keep_fp8)
        if torch.device(device).type == "cpu" and cast + largest > stored:
            try:
                check_memory(f"casting {path!r} to {str(dtype).removeprefix('torch.')}", cast + largest - stored,
                             available_memory(torch.device("cpu"), swap=True), where="load_model",
                             limit_what="the host's free memory and swap",
                             fix="free host memory or load the file in a smaller dtype")
            except MemoryError as e:
                raise HostMemoryError(str(e)) from None
    check_finite_weights(sd, path)
    overflowed = []
    for key in list(sd):  # one tensor at a time, so peak memory grows by one tensor at most
        t = sd[key]
        keep = keep_fp8 and t.dtype.itemsize == 1 and t.ndim == 2 and key.endswith(".weight")   # a linear layer's
        sd[key] = t.to(device=device, copy=copy) if keep else t.to(device=device, dtype=dtype, copy=copy)
        # into fp16 (max 65,504) from a wider range (bf16, fp32): a pass over the cast tensor; not into bf16 or fp32,
        # whose range every stored weight fits (a pass there measured 12 MiB more at the load's peak)
        narrower = (t.is_floating_point() and dtype.is_floating_point and not keep
                    and torch.finfo(dtype).max < torch.finfo(torch.bfloat16).max       # fp16 (or narrower)
                    and torch.finfo(t.dtype).max > torch.finfo(dtype).max)             # from a wider range
        if narrower and not _finite(sd[key]):
            overflowed.append(key)
    if overflowed:
        raise ValueError(f"load_model({path!r}): {len(overflowed)} tensor(s) hold values past "
                         f"{str(dtype).removeprefix('torch.')}'s range (±{torch.finfo(dtype).max:g}), e.g. "
                         f"{overflowed[:3]}: cast, they would be Inf; load in bf16 or fp32")
    with torch.device("meta"):
        model = WanModel(cfg)
    layouts.adopt_weights(model, sd, layout)
    # The RoPE table is a plain attribute, not a parameter: the meta build left it without data.
    model.rope = RotaryTable(cfg.head_dim, cfg.rope_max_len, cfg.rope_theta)
    return model, layout


# -- writing ------------------------------------------------------------------------------------------
SALT_WRITTEN_META = (LAYOUT_META, "salt_lora_summary")   # metadata fields every safetensors file Salt writes has one of


def salt_wrote(path: str) -> bool:
    """Whether the existing file at `path` is a safetensors file Salt wrote (a model or a LoRA: its metadata says
    so); torch files never count as ours (a release one carries only how a student generates)."""
    if _extension(path) not in SAFETENSORS_EXTS:
        return False
    try:
        meta = read_metadata(path)
    except ValueError:
        return False
    return any(field in meta for field in SALT_WRITTEN_META)


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one existing file (symlinks, hard links, case aliases), else whether they resolve to
    the same path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path, flag: str = "--out", inputs: Mapping = None) -> str:
    """`path` as a destination Salt may write, checked before any work: not one of `inputs` ({flag: path} of the
    files being read), not under a regular file, and not an existing file Salt did not write (a user's model or
    LoRA is never replaced). Returns the path; a ValueError naming the flag and the fix otherwise."""
    path = os.fspath(path)
    if not path or "\0" in path:
        raise ValueError(f"{flag}={path[:80]!r}: expected a file name (no NUL characters)")
    for name, source in (inputs or {}).items():
        if source is not None and _same_file(path, os.fspath(source)):
            raise ValueError(f"{flag}={path!r} is the {name} file being read; writing there would destroy it. "
                             f"Choose another {flag}")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ValueError(f"{flag}={path!r}: {parent!r} is a file, not a folder; choose a destination in a folder")
    if parent and not _writable(parent):
        raise ValueError(f"{flag}={path!r}: the folder {parent!r} cannot be written (permissions or a read-only "
                         f"file system); choose a destination you can write to")
    if os.path.isdir(path):
        raise ValueError(f"{flag}={path!r} is a folder; give a file name (e.g. {os.path.join(path, 'student.safetensors')!r})")
    if _in_checkpoint(path):   # a run's state (training/runs.py), Salt's own
        raise ValueError(f"{flag}={path!r} is inside a run's checkpoint; an export never replaces what a run resumes "
                         f"from: choose a path outside checkpoints/ (e.g. the run's export/ folder)")
    if os.path.exists(path) and not salt_wrote(path):
        raise ValueError(f"{flag}={path!r} exists and was not written by Salt; it is never replaced. Choose a new "
                         f"name, or move that file away first")
    return path


def _writable(folder: str) -> bool:
    """Whether a new file can be made in `folder`: tried with an anonymous temporary file (nothing is left behind;
    permission bits alone do not tell for root or a read-only mount)."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def _in_checkpoint(path: str) -> bool:
    """Whether `path` (links resolved) lies in a run's checkpoint folder, …/checkpoints/step_<8 digits>[.old]/…
    (`.old`: one being replaced, the only copy of its step while a save is cut)."""
    parts = [os.path.normcase(p) for p in os.path.realpath(path).split(os.sep)]
    return any(a == "checkpoints" and re.fullmatch(r"step_\d{8}(\.old)?", b) for a, b in zip(parts, parts[1:]))


def atomic_write(path: str, write):
    """Call write(tmp_path) for a temp file beside `path`, fsync it and rename it onto `path`. The file gets the
    permissions any new file of this process gets (0666 less the umask, as ComfyUI's own outputs), not the owner-only
    0600 of a private temp file: a ComfyUI running as another user reads what the pack writes."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    for attempt in range(100):   # a fresh name (64 random bits), created here (O_EXCL) with a new file's mode
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            if attempt == 99:
                raise
    try:
        mode = os.stat(tmp).st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)   # safetensors writes its files owner-only, whatever the umask
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_model(model_or_sd, path, layout: str = "wan", config: WanConfig = None, extra_metadata: dict = None):
    """Write a WanModel or an original-name state dict to `path` in `layout`.

    .safetensors: flat layouts as they are, release layouts flattened (`generator_ema.model.…`), with
    metadata salt_config (when known), salt_layout and salt_aliases (keys stored once, as another key).
    .pt/.pth/.ckpt/.bin: `torch.save` of the layout's object (no config; on load the config is the preset whose
    shapes the weights have, else inferred from them).
    `extra_metadata` {str: str} is added to safetensors metadata (e.g. how the weights were trained), and to a
    release torch file as its TORCH_META_KEY entry (file_metadata reads both).
    """
    path = os.fspath(path)
    ext = _extension(path)
    if layout not in layouts.LAYOUTS:
        raise ValueError(f"save_model: layout={layout!r}; expected one of {layouts.LAYOUTS}")
    if isinstance(model_or_sd, nn.Module):
        sd, config = model_or_sd.state_dict(), config or model_or_sd.cfg
    elif isinstance(model_or_sd, Mapping):
        sd = model_or_sd
    else:
        raise TypeError(f"save_model: model_or_sd is a {type(model_or_sd).__name__}; expected a WanModel or a "
                        f"state dict with original Wan names")
    sd = {k: v.detach() for k, v in sd.items()}
    obj = layouts.from_wan_state_dict(sd, layout)
    if ext in TORCH_EXTS:
        if extra_metadata and layout in NESTED_LAYOUTS:
            obj = {**obj, TORCH_META_KEY: {str(k): str(v) for k, v in extra_metadata.items()}}
        elif extra_metadata:                                 # a flat torch file has no place for it
            log.warning("save_model: %s is a torch file in the %r layout, which has no place for metadata: %s left "
                        "out (write .safetensors, or the self_forcing layout, to keep them)", path, layout,
                        sorted(extra_metadata))
        atomic_write(path, lambda tmp: torch.save(obj, tmp))
        return
    tensors, aliases = _unshare(flatten_release(obj) if layout in NESTED_LAYOUTS else obj)
    metadata = {**{str(k): str(v) for k, v in (extra_metadata or {}).items()}, LAYOUT_META: layout}
    if aliases:
        metadata[ALIAS_META] = json.dumps(aliases, sort_keys=True)
    if config is not None:
        metadata[CONFIG_META] = config.to_json()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def student_metadata(causal: bool) -> dict:
    """Metadata that tells loaders how a student generates: `teacher_mode` (Salt's loaders), and for a causal one
    the `config` marker ComfyUI 0.16+ reads to load a Wan 2.1 file as its autoregressive CausalWanModel (for
    SamplerARVideo; earlier ComfyUI ignores it for Wan)."""
    if not causal:
        return {"teacher_mode": "bidirectional"}
    return {"teacher_mode": "causal", COMFY_CONFIG_META: json.dumps({"transformer": {"causal_ar": True}})}


RUN_META = "salt_run"   # metadata field of an exported student: the id of the run that trained it (training.runs)


def published_run(path: str) -> str:
    """The run id a safetensors file Salt exported carries (RUN_META), or "" (none: another file, or one exported
    before runs had ids)."""
    try:
        return str(read_metadata(path).get(RUN_META, "")) if _extension(path) in SAFETENSORS_EXTS else ""
    except (ValueError, OSError):
        return ""


def export_student(model, run_dir: str, causal: bool = True, run_id: str = "") -> list:
    """Write a trained student as `export/student.safetensors` (original Wan layout + config + `student_metadata`,
    and `run_id` as RUN_META where given; loads in ComfyUI and Salt) and `export/student_release.pt` (Self Forcing
    release format); returns the paths."""
    folder = os.path.join(run_dir, "export")
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, "student.safetensors"), os.path.join(folder, "student_release.pt")]
    save_model(model, paths[0], layout="wan",
               extra_metadata={**student_metadata(causal), **({RUN_META: run_id} if run_id else {})})
    save_model(model, paths[1], layout="self_forcing", extra_metadata=student_metadata(causal))
    return paths
