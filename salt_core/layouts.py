"""Checkpoint layouts: recognise, normalise to original Wan names, export, check and load state dicts.

A *layout* is how a file spells the same Wan 2.1 T2V weights (docs/method.md §6):

- "wan":          original names, flat (`blocks.0.self_attn.q.weight`);
- "comfyui":      original names under `model.diffusion_model.`;
- "diffusers":    `WanTransformer3DModel` names (`blocks.0.attn1.to_q.weight`);
- "self_forcing": release dict `{"generator": sd, "generator_ema": sd}` (or `{"model": sd}`), inner keys
                  prefixed `model.`; also CausVid, Causal Forcing and Salt releases;
- "longlive":     a self_forcing dict plus a PEFT LoRA under `generator_lora`, merged into the weights.

Pure: takes and returns dicts of tensors; knows nothing of paths, file formats or ComfyUI.
I2V weights are renamed but cannot be loaded: the model has no image branch.
"""
import logging
import math
import re
from collections.abc import Mapping

import torch

from .config import MODEL_PRESETS, WanConfig
from .model import WanModel

log = logging.getLogger(__name__)

LAYOUTS = ("wan", "comfyui", "diffusers", "self_forcing", "longlive")
COMFYUI_PREFIX = "model.diffusion_model."
SF_PREFIX = "model."
RELEASE_KEYS = ("generator_ema", "generator", "model")   # Self-Forcing-style weight entries
LORA_KEY = "generator_lora"
WRAPPER_ARTEFACTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
WAN_HEAD_DIM = 128                                       # every released Wan 2.1 model uses D = 128


class LayoutError(ValueError):
    """A state dict that is in no supported layout or does not fit the model."""


# -- original <-> diffusers names -------------------------------------------------------------------
# Exact module names (their `.weight` / `.bias` follow) and bare parameters; nothing is substring-replaced.
_TOP_MODULES = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",        # I2V
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}
_TOP_PARAMS = {"head.modulation": "scale_shift_table", "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed"}
_BLOCK_MODULES = {
    # The affine pre-cross-attention norm is norm3 in Wan and norm2 in diffusers (the names are swapped).
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "cross_attn.k_img": "attn2.add_k_proj",                               # I2V
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
}
for _wan, _hf in (("self_attn", "attn1"), ("cross_attn", "attn2")):
    _BLOCK_MODULES.update({f"{_wan}.q": f"{_hf}.to_q", f"{_wan}.k": f"{_hf}.to_k", f"{_wan}.v": f"{_hf}.to_v",
                           f"{_wan}.o": f"{_hf}.to_out.0", f"{_wan}.norm_q": f"{_hf}.norm_q",
                           f"{_wan}.norm_k": f"{_hf}.norm_k"})
_BLOCK_PARAMS = {"modulation": "scale_shift_table"}


def _invert(table: dict) -> dict:
    """The inverse of a one-to-one name table."""
    inverse = {v: k for k, v in table.items()}
    assert len(inverse) == len(table), "rename table is not one-to-one"
    return inverse


_TO_HF = (_TOP_MODULES, _TOP_PARAMS, _BLOCK_MODULES, _BLOCK_PARAMS)
_TO_WAN = tuple(_invert(t) for t in _TO_HF)
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _rename(key: str, tables: tuple):
    """Rename one key with (top modules, top params, block modules, block params); None if unknown."""
    top_modules, top_params, block_modules, block_params = tables
    match = _BLOCK_KEY.match(key)
    prefix, rest = (f"blocks.{match.group(1)}.", match.group(2)) if match else ("", key)
    modules, params = (block_modules, block_params) if match else (top_modules, top_params)
    if rest in params:
        return prefix + params[rest]
    module, _, leaf = rest.rpartition(".")
    if leaf in ("weight", "bias") and module in modules:
        return f"{prefix}{modules[module]}.{leaf}"
    return None


def wan_to_diffusers_key(key: str) -> str:
    """One original Wan key → its diffusers `WanTransformer3DModel` name (LayoutError if unknown)."""
    new = _rename(key, _TO_HF)
    if new is None:
        raise LayoutError(f"wan_to_diffusers_key: no diffusers name for Wan key {key!r}")
    return new


def diffusers_to_wan_key(key: str) -> str:
    """One diffusers `WanTransformer3DModel` key → its original Wan name (LayoutError if unknown)."""
    new = _rename(key, _TO_WAN)
    if new is None:
        raise LayoutError(f"diffusers_to_wan_key: no Wan name for diffusers key {key!r}")
    return new


# -- detection ----------------------------------------------------------------------------------------
def strip_wrapper_artefacts(key: str) -> str:
    """Remove FSDP / activation-checkpoint / torch.compile wrapper names from anywhere in a key."""
    for artefact in WRAPPER_ARTEFACTS:
        key = key.replace(artefact, "")
    return key


def _preview(keys, n: int = 5) -> str:
    """The first n keys, for error messages."""
    keys = list(keys)
    more = f" … ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def _unknown(what: str, keys) -> LayoutError:
    """The error for an object in no supported layout."""
    return LayoutError(f"{what}: cannot recognise the checkpoint layout from its keys ({_preview(keys)}); "
                       f"supported layouts are {LAYOUTS}. Pass a Wan 2.1 T2V transformer checkpoint (original, "
                       f"ComfyUI, diffusers or Self-Forcing/CausVid/LongLive release format)")


def _is_release(obj: Mapping) -> bool:
    """True for a Self-Forcing-style release dict (weights nested under generator/generator_ema/model)."""
    return any(isinstance(obj.get(k), Mapping) for k in RELEASE_KEYS)


def _tensors(obj: Mapping, what: str) -> dict:
    """The tensor entries of a flat dict with wrapper artefacts stripped from the keys."""
    nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
    if nested:
        raise _unknown(what, list(obj))
    return {strip_wrapper_artefacts(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _name_style(keys) -> str:
    """'wan' or 'diffusers' by which rename table knows more of the keys; None if neither knows any."""
    keys = list(keys)
    distinct = [k for k in keys if not k.startswith("patch_embedding.")]  # same name in both
    wan = sum(_rename(k, _TO_HF) is not None for k in distinct)
    hf = sum(_rename(k, _TO_WAN) is not None for k in distinct)
    if wan == hf == 0:
        return "wan" if keys and not distinct else None
    return "wan" if wan >= hf else "diffusers"


def _flat_layout(sd: dict, what: str) -> tuple:
    """(layout, prefix to strip, name style) of a flat tensor dict with clean keys."""
    if any(k.startswith(COMFYUI_PREFIX) for k in sd):
        layout, prefix = "comfyui", COMFYUI_PREFIX
    elif sd and all(k.startswith(SF_PREFIX) for k in sd):
        layout, prefix = "self_forcing", SF_PREFIX          # a bare Self-Forcing generator
    else:
        layout, prefix = None, ""
    style = _name_style([k[len(prefix):] for k in sd if k.startswith(prefix)])
    if style is None:
        raise _unknown(what, list(sd))
    return layout or style, prefix, style


def detect_layout(obj) -> str:
    """The layout name (one of LAYOUTS) of a loaded checkpoint: a flat tensor dict or a release dict."""
    if not isinstance(obj, Mapping):
        raise LayoutError(f"detect_layout: expected a dict of tensors or a release dict, got {type(obj).__name__}")
    if _is_release(obj):
        return "longlive" if isinstance(obj.get(LORA_KEY), Mapping) else "self_forcing"
    return _flat_layout(_tensors(obj, "detect_layout"), "detect_layout")[0]


# -- normalise and export -----------------------------------------------------------------------------
def _normalise_flat(obj: Mapping, what: str) -> tuple:
    """(original-name state dict, layout) for a flat dict; tensors are shared, never copied."""
    sd = _tensors(obj, what)
    layout, prefix, style = _flat_layout(sd, what)
    dropped = [k for k in sd if not k.startswith(prefix)]
    if dropped:  # ComfyUI full checkpoints also carry the VAE and text encoder
        log.info("%s: ignoring %d keys outside %r (%s)", what, len(dropped), prefix, _preview(dropped, 3))
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if style == "diffusers":
        unknown = [k for k in sd if _rename(k, _TO_WAN) is None]
        if unknown:
            raise LayoutError(f"{what}: diffusers-layout keys with no Wan name: {_preview(unknown)}; only "
                              f"WanTransformer3DModel (Wan 2.1) weights are supported")
        sd = {diffusers_to_wan_key(k): v for k, v in sd.items()}
    return sd, layout


def release_entry(obj: Mapping, use_ema: bool):
    """Which entry of a release dict loads: generator_ema if asked and present, else generator, else generator_ema,
    else model; None for a dict without any (not a release)."""
    wanted = "generator_ema" if use_ema else "generator"
    return next((k for k in (wanted, "generator", "generator_ema", "model") if isinstance(obj.get(k), Mapping)), None)


def _pick_release_entry(obj: Mapping, use_ema: bool) -> str:
    """release_entry, with a warning when the asked entry is missing and another loads."""
    present = [k for k in RELEASE_KEYS if isinstance(obj.get(k), Mapping)]
    wanted = "generator_ema" if use_ema else "generator"
    choice = release_entry(obj, use_ema)
    if choice != wanted and (use_ema or choice != "model"):
        log.warning("checkpoint has no %r weights; loading %r instead (entries present: %s)", wanted, choice, present)
    return choice


SCALED_FP8_MARKER, SCALE_WEIGHT, SCALE_INPUT = "scaled_fp8", ".scale_weight", ".scale_input"


def dequantize_scaled_fp8(sd: Mapping, dtype: torch.dtype = torch.float32) -> Mapping:
    """ComfyUI's scaled-fp8 storage (an fp8 `<layer>.weight` with a scalar `<layer>.scale_weight` beside it,
    `<layer>.scale_input`s and a `scaled_fp8` marker, under any prefix) → plain weights weight·scale in `dtype`, one
    tensor at a time (float32 only per tensor); a state dict without it is returned as it is (the same object).
    ComfyUI's newer quantized format (`comfy_quant` / `weight_scale` keys) is refused, naming it."""
    newer = [k for k in sd if k.endswith((".weight_scale", ".comfy_quant"))]
    if newer:
        raise LayoutError(f"dequantize_scaled_fp8: {newer[0]!r} belongs to ComfyUI's newer quantized format "
                          f"(comfy_quant), which Salt does not read (neither from the file nor as a native MODEL); "
                          f"use a bf16 / fp16 / fp8_e4m3fn file of the model, or its *_fp8_scaled one")
    scales = [k for k in sd if k.endswith(SCALE_WEIGHT)]
    if not scales and not any(k.endswith(SCALED_FP8_MARKER) for k in sd):
        return sd
    out = {k: v for k, v in sd.items()
           if not k.endswith((SCALE_WEIGHT, SCALE_INPUT)) and not k.endswith(SCALED_FP8_MARKER)}
    for key in scales:
        weight = key[:-len(SCALE_WEIGHT)] + ".weight"
        if weight not in out:
            raise LayoutError(f"dequantize_scaled_fp8: {key!r} has no {weight!r} beside it; the file is damaged")
        scale, w = sd[key], out[weight]
        try:
            fits = scale.is_floating_point() and torch.broadcast_shapes(w.shape, scale.shape) == w.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise LayoutError(f"dequantize_scaled_fp8: {key!r} is {scale.dtype} of shape {tuple(scale.shape)}, which "
                              f"does not scale {weight!r} of shape {tuple(w.shape)} (expected a floating scalar or a "
                              f"shape that broadcasts to the weight's); the file is damaged or of another format")
        try:
            out[weight] = scaled_weight(w, scale, dtype)
        except OverflowError as e:
            raise OverflowError(f"{weight!r}: {e}") from None
    return out


DEQUANT_CHUNK = 1 << 18   # elements of a weight scaled in float32 at once beside its result (1 MiB)


def scaled_weight(w: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """w·scale in `dtype`, a new tensor (never `w`'s storage), computed in float32 over rows of at most
    DEQUANT_CHUNK elements (or one row): beside the result the host holds one such chunk, not a float32 copy of
    the whole weight (the allocator keeps freed blocks of that size, so the copy's size could count twice).
    w: any shape; scale: floating, broadcasting to w's shape (a scalar, per row, per column). The same numbers
    as (w.float() * scale.float()).to(dtype): the products are taken element by element either way. Into a dtype
    narrower than bfloat16 (float16), a finite product past its range raises an OverflowError (cast, it would be
    Inf and read as a broken file)."""
    scale = scale.float()
    if dtype == torch.float32 or w.dim() == 0:   # the float32 copy is the result
        return _within_range(w.to(torch.float32, copy=True).mul_(scale), dtype).to(dtype)
    out = torch.empty(w.shape, dtype=dtype)
    rows = max(1, DEQUANT_CHUNK // max(1, w[0].numel()))
    per_row = scale.dim() == w.dim() and scale.shape[0] == w.shape[0] and w.shape[0] > 1
    for start in range(0, w.shape[0], rows):
        part = slice(start, start + rows)
        out[part] = _within_range(w[part].to(torch.float32, copy=True).mul_(scale[part] if per_row else scale), dtype)
    return out


def _within_range(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` (float32), or an OverflowError where a finite value of it rounds to Inf in `dtype` (checked only for
    dtypes narrower than bfloat16: every other one holds float32's finite values or is float32)."""
    limit = torch.finfo(dtype).max
    if dtype.is_floating_point and limit < torch.finfo(torch.bfloat16).max and x.numel():
        finite = x.abs().nan_to_num(nan=0.0, posinf=0.0)
        peak = float(finite.max())
        if torch.tensor(peak).to(dtype).isinf():   # fp16: from 65,520 (below, it rounds to 65,504)
            raise OverflowError(f"w·scale reaches {peak:g}, past {str(dtype).removeprefix('torch.')}'s range "
                                f"(±{limit:g})")
    return x


def to_wan_state_dict(obj, use_ema: bool = True, lora_alpha: float = None) -> tuple:
    """Normalise any supported layout to (state dict with original Wan names, detected layout).

    Release dicts load `generator_ema` when `use_ema` and present, else `generator`, else `model`
    (a fallback is logged as a warning). A LongLive `generator_lora` is merged (see `merge_lora`).
    Tensors are shared with `obj` except LoRA-merged weights.
    """
    layout = detect_layout(obj)
    if layout in ("self_forcing", "longlive"):
        entry = _pick_release_entry(obj, use_ema)
        sd, _ = _normalise_flat(obj[entry], f"to_wan_state_dict[{entry!r}]")
        if layout == "longlive":
            sd = merge_lora(sd, obj[LORA_KEY], lora_alpha)
        return sd, layout
    return _normalise_flat(obj, "to_wan_state_dict")


def from_wan_state_dict(sd: Mapping, layout: str):
    """Export an original-name state dict to `layout`; the result shares `sd`'s tensors (no copies).

    Release layouts give `{"generator_ema": inner, "generator": inner}` with inner keys prefixed `model.`;
    "longlive" exports as "self_forcing" (its LoRA is already merged).
    """
    if layout == "wan":
        return dict(sd)
    if layout == "comfyui":
        return {COMFYUI_PREFIX + k: v for k, v in sd.items()}
    if layout == "diffusers":
        return {wan_to_diffusers_key(k): v for k, v in sd.items()}
    if layout in ("self_forcing", "longlive"):
        inner = {SF_PREFIX + k: v for k, v in sd.items()}
        return {"generator_ema": inner, "generator": dict(inner)}
    raise LayoutError(f"from_wan_state_dict: layout={layout!r}; expected one of {LAYOUTS}")


# -- LoRA ---------------------------------------------------------------------------------------------
_LORA_FACTOR = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[^.]+))?\.weight$")
_LORA_PREFIXES = ("base_model.model.", "model.", "diffusion_model.")
_LORA_BLOCK = re.compile(r"(?:^|\.)(blocks\.\d+\.)")


def _lora_target(module: str, sd: Mapping) -> str:
    """The original-name weight a LoRA module path adapts (matched from `blocks.` on, else by prefixes)."""
    block = _LORA_BLOCK.search(module)
    if block:
        module = module[block.start(1):]
    while module + ".weight" not in sd:
        prefix = next((p for p in _LORA_PREFIXES if module.startswith(p)), None)
        if prefix is None:
            raise LayoutError(f"merge_lora: LoRA module {module!r} adapts no weight of the model "
                              f"(expected a name like 'blocks.0.self_attn.q'); is it a LoRA for this model?")
        module = module[len(prefix):]
    return module + ".weight"


def lora_factors(lora: Mapping) -> tuple:
    """({module: {"A": (r, in) tensor, "B": (out, r) tensor}}, {module: α}) of a PEFT LoRA state dict (lora_A /
    lora_B or lora_down / lora_up factors, optional `.alpha` tensors or numbers); a LayoutError naming the key for
    any other key, a factor that is no 2-D floating tensor, an α that is no single finite number, or several
    adapters. A module may lack a factor (merge_lora refuses it)."""
    factors, alphas, adapters = {}, {}, set()
    for key, value in lora.items():
        if not isinstance(key, str):
            raise LayoutError(f"merge_lora: LoRA key {key!r} is no string; expected '<module>.lora_A.weight', "
                              f"'<module>.lora_B.weight' or '<module>.alpha'")
        key = strip_wrapper_artefacts(key)
        match = _LORA_FACTOR.match(key)
        if match:
            if not (isinstance(value, torch.Tensor) and value.ndim == 2 and value.is_floating_point()):
                raise LayoutError(f"merge_lora: LoRA factor {key!r} is "
                                  f"{_describe(value)}; expected a 2-D floating tensor")
            adapters.add(match.group("adapter"))
            kind = "A" if match.group("kind") in ("lora_A", "lora_down") else "B"
            factors.setdefault(match.group("module"), {})[kind] = value
        elif key.endswith(".alpha"):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number or (isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex())):
                raise LayoutError(f"merge_lora: LoRA alpha {key!r} is {_describe(value)}; expected one number")
            alphas[key[:-len(".alpha")]] = float(value)
            if not math.isfinite(alphas[key[:-len(".alpha")]]):
                raise LayoutError(f"merge_lora: LoRA alpha {key!r} is {alphas[key[:-len('.alpha')]]}; expected a "
                                  f"finite number")
        else:
            raise LayoutError(f"merge_lora: unexpected LoRA key {key!r}; expected '<module>.lora_A.weight', "
                              f"'<module>.lora_B.weight' or '<module>.alpha'")
    if len(adapters) > 1:
        raise LayoutError(f"merge_lora: the LoRA holds several adapters {sorted(map(str, adapters))}; save one")
    return factors, alphas


def _describe(value) -> str:
    """A short account of a value found where a tensor or number was expected, for error messages."""
    if isinstance(value, torch.Tensor):
        return f"a {value.ndim}-D {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def merge_lora(sd: Mapping, lora: Mapping, alpha: float = None) -> dict:
    """W' = W + (α/r)·B@A for every PEFT LoRA pair (A (r, in), B (out, r)), in float32, cast back.

    α is a per-module `.alpha` tensor if present, else `alpha`, else r (LongLive: r = α = 256).
    Returns a new dict; unadapted tensors are shared with `sd`.
    """
    factors, alphas = lora_factors(lora)
    merged = dict(sd)
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise LayoutError(f"merge_lora: LoRA module {module!r} has only lora_{''.join(pair)}; need both A and B")
        target = _lora_target(module, sd)
        W, A, B = sd[target], pair["A"], pair["B"]
        rank = A.shape[0]
        if W.ndim != 2 or B.shape[1] != rank or (B.shape[0], A.shape[1]) != tuple(W.shape):
            raise LayoutError(f"merge_lora: {module!r}: B {tuple(B.shape)} @ A {tuple(A.shape)} does not fit "
                              f"{target!r} {tuple(W.shape)}")
        scale = alphas.get(module, alpha if alpha is not None else rank) / rank
        # in place on one float32 copy of W (W + scale·B@A as one addmm): beside it only the small factors
        merged[target] = W.to(torch.float32, copy=True).addmm_(B.float(), A.float(), alpha=scale).to(W.dtype)
    log.info("merge_lora: merged %d LoRA modules", len(factors))
    return merged


# -- configs, checks and loading ----------------------------------------------------------------------
def _i2v_keys(sd: Mapping) -> list:
    """Original-name keys that only image-to-video models have."""
    return [k for k in sd if k.startswith("img_emb.") or "_img." in k]


def _no_i2v(sd: Mapping, what: str):
    """Raise the I2V error if the state dict has image-branch weights."""
    i2v = _i2v_keys(sd)
    if i2v:
        raise LayoutError(f"{what}: this is an image-to-video checkpoint ({_preview(i2v, 3)}); I2V checkpoints "
                          f"are not supported yet — use a Wan 2.1 T2V checkpoint")


def infer_config(sd: Mapping, num_heads: int = None) -> WanConfig:
    """A WanConfig from an original-name state dict's shapes; heads = `num_heads` or dim // 128.

    Shapes fix everything but the head count (and eps / text_len / RoPE, which keep Wan's defaults).
    """
    _no_i2v(sd, "infer_config")
    needed = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
              "head.head.weight", "blocks.0.ffn.0.weight")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise LayoutError(f"infer_config: cannot infer the model config, missing {missing}; normalise the "
                          f"checkpoint with to_wan_state_dict first or pick a preset from {sorted(MODEL_PRESETS)}")
    dim, in_dim, *patch = sd["patch_embedding.weight"].shape  # (dim, C, pt, ph, pw)
    blocks = {int(m.group(1)) for m in map(_BLOCK_KEY.match, sd) if m}
    if blocks != set(range(len(blocks))):   # one stray "blocks.4000.*" key would size a 4,001-block model
        first = [i for i in range(len(blocks) + 1) if i not in blocks][:4]    # never a set as large as the index
        raise LayoutError(f"infer_config: the checkpoint's blocks are numbered {min(blocks)}..{max(blocks)} with "
                          f"{max(blocks) + 1 - len(blocks)} missing (first {first}); expected blocks 0..N-1 without "
                          f"gaps. The file is damaged or not one model: check its keys ('blocks.<i>.')")
    if num_heads is None:
        if dim % WAN_HEAD_DIM:
            raise LayoutError(f"infer_config: head count cannot be inferred from shapes and dim={dim} is not a "
                              f"multiple of Wan's head dim {WAN_HEAD_DIM}; pass num_heads")
        num_heads = dim // WAN_HEAD_DIM
    return WanConfig(dim=dim, ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0], num_heads=num_heads,
                     num_layers=max(blocks) + 1, patch_size=tuple(patch), in_dim=in_dim,
                     out_dim=sd["head.head.weight"].shape[0] // (patch[0] * patch[1] * patch[2]),
                     text_dim=sd["text_embedding.0.weight"].shape[1], freq_dim=sd["time_embedding.0.weight"].shape[1])


def match_preset(cfg: WanConfig) -> str:
    """The preset whose weight shapes equal `cfg`'s (head count ignored); None if none does, or if several do (the
    shapes would not tell their head counts apart)."""
    shape_fields = ("dim", "ffn_dim", "num_layers", "patch_size", "in_dim", "out_dim", "text_dim", "freq_dim")
    names = [name for name, preset in MODEL_PRESETS.items()
             if all(getattr(preset, f) == getattr(cfg, f) for f in shape_fields)]
    return names[0] if len(names) == 1 else None


def _expected_shapes(model_or_config) -> tuple:
    """({key: shape}, config) of a WanModel, or of a config's model built on the meta device (no memory)."""
    if isinstance(model_or_config, WanConfig):
        with torch.device("meta"):
            model_or_config = WanModel(model_or_config)
    if not isinstance(model_or_config, WanModel):
        raise LayoutError(f"check_state_dict: model_or_config is a {type(model_or_config).__name__}; "
                          f"expected a WanModel or a WanConfig")
    return {k: tuple(v.shape) for k, v in model_or_config.state_dict().items()}, model_or_config.cfg


def _fit_hint(sd: Mapping, cfg: WanConfig) -> str:
    """What to do when a state dict does not fit `cfg`: the preset the weights look like, if any."""
    try:  # the head count does not change shapes; 1 always divides
        found = infer_config(sd, num_heads=1)
    except (LayoutError, ValueError):
        return "Is this a Wan 2.1 T2V transformer checkpoint?"
    preset = match_preset(found)
    looks = (f"dim={found.dim}, ffn_dim={found.ffn_dim}, num_layers={found.num_layers}, in_dim={found.in_dim}, "
             f"text_dim={found.text_dim}")
    pick = f"pick preset {preset!r}" if preset else "leave the preset unset so the config is inferred from the weights"
    return f"The weights look like {looks}: {pick}."


def check_float_weights(sd: Mapping, where: str = "check_float_weights") -> None:
    """LayoutError naming the tensors of a checkpoint's state dict that are not floating point (int, bool or complex
    where a weight is: nothing Salt computes with). For files: a quantized MODEL another node pack loaded (GGUF)
    holds such tensors by design and is read through ComfyUI's own casts instead."""
    kinds = [f"{k} ({t.dtype})" for k, t in sd.items() if not t.is_floating_point()]
    if kinds:
        raise LayoutError(f"{where}: {len(kinds)} weight(s) are not floating point, e.g. {_preview(kinds)}; expected "
                          f"float32, float16, bfloat16 or fp8 weights (a file quantized otherwise loads with "
                          f"ComfyUI's own or a node pack's loader, then SaltCausalFromModel)")


def check_state_dict(sd: Mapping, model_or_config, layout: str = None):
    """Raise LayoutError naming missing / unexpected keys and shape mismatches against a WanModel or WanConfig.

    `layout` names the file's layout in the message (detected from `sd` when not given).
    """
    expected, cfg = _expected_shapes(model_or_config)
    try:
        names = detect_layout(sd)
    except LayoutError:
        names = "unknown"
    layout = layout or names
    _no_i2v(sd, f"check_state_dict (layout {layout!r})")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {expected[k]}"
              for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    if not (missing or unexpected or shapes):
        return
    parts = [f"check_state_dict: checkpoint (layout {layout!r}) does not fit the model (dim={cfg.dim}, "
             f"num_layers={cfg.num_layers}, preset {match_preset(cfg)!r})"]
    if missing:
        parts.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:3])}")
    if names != "wan":
        parts.append(f"The keys are in the {names!r} layout: normalise with to_wan_state_dict(obj) first.")
    else:
        parts.append(_fit_hint(sd, cfg))
    raise LayoutError(". ".join(parts))


def load_into(model: WanModel, sd: Mapping, layout: str = None):
    """Strictly copy an original-name state dict into `model` (adopts the tensors if `model` is on meta)."""
    if any(p.is_meta for p in model.parameters()):
        return adopt_weights(model, sd, layout)
    check_state_dict(sd, model, layout)
    model.load_state_dict(sd, strict=True)
    return model


def adopt_weights(model: WanModel, sd: Mapping, layout: str = None) -> WanModel:
    """Make `model`'s parameters *be* the tensors of `sd` (no copy when dtype/device match; meta models
    take each tensor as it is). Returns `model`."""
    check_state_dict(sd, model, layout)
    own = model.state_dict()
    sd = {k: v if own[k].is_meta else v.to(dtype=own[k].dtype, device=own[k].device) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model
