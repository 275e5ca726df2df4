"""SALT_MODEL sources: a checkpoint file in any supported layout, or a native ComfyUI Wan MODEL (zero copies).

File reading goes through weights.files; the native path is a view bound to the MODEL's own layers while ComfyUI
has the MODEL loaded (its ModelPatcher: nodes/bridge/view_patcher.py). `salt_in_use` is the one way every node gets
a SALT_MODEL's module ready.
"""
import dataclasses
import os
from collections.abc import Mapping
from contextlib import contextmanager

import torch

from ..salt_core.layouts import LayoutError, check_state_dict, infer_config
from ..salt_core.validate import check_choice, quote
from ..weights.files import HostMemoryError, file_metadata, load_model
from .bridge import io
from .bridge.memory import (NATIVE_PREFIX, WEIGHT_DTYPES, is_quantized, load_for_sampling, mmap_disabled,
                            model_offload_device, model_patcher, native_compute_dtype, native_wan_module,
                            patched_weight, store_linear_weights)
from .bridge.view_patcher import hollow_view, view_patcher
from .bridge.paths import diffusion_model_files, diffusion_model_path
from .types import SaltModel, SaltModelType, latent_format_for

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BIDIRECTIONAL_MODES = ("bidirectional",)   # `teacher_mode` metadata values of models not trained causally


def file_teacher_mode(path: str) -> str:
    """The `teacher_mode` our own files record (a safetensors header's, a release .pt's metadata entry; None for
    other files): no tensor data is read."""
    return file_metadata(path).get("teacher_mode")


def stored_weight_dtype(model: torch.nn.Module) -> str:
    """The WEIGHT_DTYPES name of the fp8 storage of `model`'s linear weights as loaded, else "default"."""
    stored = {m.weight.dtype for m in model.modules() if type(m) is torch.nn.Linear}
    return next((name for name, d in WEIGHT_DTYPES.items() if d in stored and not name.endswith("_fast")), "default")


def load_salt_model(name: str, use_ema: bool, dtype: str, weight_dtype: str = "default") -> SaltModel:
    """SaltModel from a file in models/diffusion_models, with a node error naming the file and the fix.

    The weights go to ComfyUI's offload device and are managed like UNETLoader's: loaded onto the compute
    device for sampling (or streamed layer by layer under Dynamic VRAM), offloaded when another model needs the
    room; the linear layers are ComfyUI's cast-on-use ops, and `weight_dtype` fp8 stores their weights in fp8 and
    computes in `dtype`.
    """
    check_choice("dtype", dtype, DTYPES, where="SaltLoadCausalModel")
    check_choice("weight_dtype", weight_dtype, WEIGHT_DTYPES, where="SaltLoadCausalModel")
    path = diffusion_model_path(name)
    try:
        model, layout = load_model(path, use_ema=use_ema, dtype=DTYPES[dtype], device=model_offload_device(),
                                   keep_fp8=weight_dtype == "default", copy=mmap_disabled())
    except (LayoutError, ValueError, KeyError) as e:
        raise ValueError(f"SaltLoadCausalModel: ckpt_name={quote(name)} cannot be loaded as a Wan 2.1 T2V transformer: "
                         f"{e}. (Full ComfyUI checkpoints and other architectures load with ComfyUI's own "
                         f"loaders.)") from e
    except HostMemoryError as e:   # refused before the file is read (load_host_bytes): ComfyUI's server stays up
        smaller = "dtype=bf16, or " if dtype == "fp32" else ""    # bf16 (the default) and fp16: already half
        raise HostMemoryError(f"SaltLoadCausalModel: ckpt_name={quote(name)}: {e} (here: {smaller}an unscaled fp8 "
                              f"file of the model with weight_dtype=default)") from None
    cfg = model.cfg
    if cfg.in_dim != cfg.out_dim or cfg.in_dim == WAN22_CHANNELS:   # other families (tiny test models: any n → n)
        raise ValueError(f"SaltLoadCausalModel: ckpt_name={quote(name)}: {other_family(cfg)}")
    causal = file_teacher_mode(path) not in BIDIRECTIONAL_MODES
    if weight_dtype == "default":         # as UNETLoader: "default" keeps an fp8 file's storage, cast per layer
        weight_dtype = stored_weight_dtype(model)
    store_linear_weights(model, weight_dtype, DTYPES[dtype])
    model = model.eval()
    return SaltModel(model, latent_format_for(model), f"{os.path.basename(path)} ({layout} layout)", causal,
                     model_patcher(model))


WAN21_CHANNELS = 16     # the Wan 2.1 VAE's latent channels: what a native MODEL must take and make
WAN22_CHANNELS = 48     # the Wan 2.2 VAE's (the 5B TI2V model's)
# state-dict key endings of a native MODEL whose layers scale their weights in their own forward: scaled fp8
# (scale_weight / scale_input: SaltLoadCausalModel dequantizes the file) and ComfyUI's quantized formats
# (weight_scale, input_scale, comfy_quant, or QuantizedTensor weights: Salt reads none of them)
SCALED_NATIVE_KEYS = (".scale_weight", ".scale_input", "scaled_fp8")
QUANTIZED_NATIVE_KEYS = (".weight_scale", ".input_scale", ".comfy_quant")


def other_family(cfg) -> str:
    """Why a model of `cfg`'s channels is not a Wan 2.1 T2V one (the message both loaders give)."""
    return (f"the model takes {cfg.in_dim}-channel latents and makes {cfg.out_dim}; expected a Wan 2.1 T2V model "
            f"({WAN21_CHANNELS} in, {WAN21_CHANNELS} out: Wan 2.1 1.3B / 14B T2V and their distilled students). Wan "
            f"2.2 5B ({WAN22_CHANNELS} channels) and I2V / Fun / inpaint variants (36 in) run with ComfyUI's own "
            f"samplers")


def salt_from_native(native: torch.nn.Module, patcher, name: str = "native MODEL") -> SaltModel:
    """A hollow SaltModel view of a native comfy WanModel (checked once, here), managed by a clone of the MODEL's
    `patcher` that binds the view to the native module's layers while ComfyUI has the MODEL loaded
    (nodes/bridge/view_patcher.py); it holds no tensors of its own otherwise.

    The view computes in the MODEL's compute dtype (bf16 / fp16 / fp32; fp8-stored weights are cast per layer, as
    ComfyUI's own Wan does).
    """
    sd = native.state_dict()                                      # original Wan names; shapes and dtypes only
    if "blocks.0.self_attn.q.weight" not in sd:
        raise ValueError(f"SaltCausalFromModel: the model has no 'blocks.0.self_attn.q.weight' ({len(sd)} keys); "
                         f"expected a Wan 2.1 T2V diffusion model")
    # ComfyUI applies these scales in its layers' own forward, which Salt's view of the layers does not call
    quantized = sorted(k for k, v in sd.items() if k.endswith(QUANTIZED_NATIVE_KEYS) or is_quantized(v))
    if quantized:
        raise ValueError(f"SaltCausalFromModel: the model's weights are in one of ComfyUI's quantized formats "
                         f"({len(quantized)} tensors, e.g. {quantized[0]!r}), which Salt does not read; load a bf16, "
                         f"fp16 or unscaled fp8 file of the model (or a *_fp8_scaled one with SaltLoadCausalModel)")
    scaled = sorted(k for k in sd if k.endswith(SCALED_NATIVE_KEYS))
    if scaled:
        raise ValueError(f"SaltCausalFromModel: the model's weights are scaled fp8 ({len(scaled)} scale tensors, e.g. "
                         f"{scaled[0]!r}: a *_fp8_scaled file); Salt's view of a native MODEL reads plain weights. "
                         f"Load the file with Salt Load Causal Model (SaltLoadCausalModel), which dequantizes scaled "
                         f"fp8 exactly, or use a bf16 / unscaled fp8 file")
    dtype = native_compute_dtype(patcher, sd["blocks.0.self_attn.q.weight"].dtype)
    if dtype not in DTYPES.values():
        raise ValueError(f"SaltCausalFromModel: the model computes in {dtype}; Salt computes in bf16, fp16 or "
                         f"fp32. Load the diffusion model with weight_dtype 'default', or an fp8 one (cast per layer)")
    try:
        cfg = infer_config(sd, num_heads=native.num_heads)
        cfg = dataclasses.replace(cfg, eps=native.eps, text_len=native.text_len)
        if (cfg.in_dim, cfg.out_dim) != (WAN21_CHANNELS, WAN21_CHANNELS):
            raise LayoutError(other_family(cfg))
        model = hollow_view(cfg, dtype)
        check_state_dict(sd, model, "wan")     # every key and shape now, not at the first sampling
    except LayoutError as e:
        raise ValueError(f"SaltCausalFromModel: {e}") from e
    return SaltModel(model, latent_format_for(model), name, causal=True, patcher=view_patcher(patcher, model),
                     native=True)


class LazyWeights(Mapping):
    """A state dict whose tensors are made when read, `read(name)`: one layer in memory at a time."""

    def __init__(self, names: list, read):
        self.names, self.read = list(names), read

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(name)
        return self.read(name)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def compute_device(salt: SaltModel) -> torch.device:
    """The device a SaltModel computes on inside `salt_in_use`: its patcher's load device (unmanaged: where its
    weights are)."""
    return salt.patcher.load_device if salt.patcher is not None else salt.model.patch_embedding.weight.device


@contextmanager
def salt_in_use(salt: SaltModel, memory_required: int = 0):
    """The SaltModel's module ready to compute: ComfyUI's model management loads it (a native view: the MODEL it
    views, as ComfyUI's own samplers load it, which binds the view) onto the compute device, first freeing other
    models for its weights plus `memory_required` bytes. A native view stays bound for the block even if ComfyUI
    detaches the MODEL meanwhile (view_patcher.SaltViewPatcher.view_in_use)."""
    load_for_sampling(salt.patcher, memory_required, complete=not salt.native)
    if not salt.native:
        yield salt.model
        return
    with salt.patcher.view_in_use() as model:
        yield model


@contextmanager
def weights_in_use(salt: SaltModel):
    """The SaltModel's state dict (original Wan names, a `LazyWeights`) on its compute device, each tensor as the
    model computes with it, for reading (LoRA extraction). A native view reads each weight from its MODEL: the
    unpatched original with that MODEL's own LoRA patches applied by ComfyUI (whether written into the weights,
    applied per cast, or held by another clone of the same module), so two views of one module read apart. A file
    model is loaded as for sampling and each tensor moved to the device when read (Dynamic VRAM streams it)."""
    device = compute_device(salt)
    names = list(salt.model.state_dict(keep_vars=True))
    if salt.native:
        dtype = salt.model.patch_embedding.weight.dtype
        yield LazyWeights(names, lambda k: patched_weight(salt.patcher, NATIVE_PREFIX + k, dtype, device))
        return
    with salt_in_use(salt) as model:
        sd = model.state_dict()
        yield LazyWeights(names, lambda k: sd[k].to(device))


class SaltLoadCausalModel(io.ComfyNode):
    """Load a Salt / Self-Forcing / CausVid / LongLive / Wan checkpoint (any layout) as a SALT_MODEL."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltLoadCausalModel",
            display_name="Salt Load Causal Model",
            category="Salt/loaders",
            description="Loads a Wan 2.1 T2V transformer from models/diffusion_models in any supported layout "
                        "(original Wan, ComfyUI, diffusers, Self-Forcing / CausVid / LongLive / Salt releases; "
                        "LongLive LoRAs are merged) for chunk-by-chunk streaming with SaltStreamingSampler.",
            inputs=[
                io.Combo.Input("ckpt_name", options=diffusion_model_files(),
                               tooltip="A .safetensors or weights-only .pt/.pth file in models/diffusion_models."),
                io.Boolean.Input("use_ema", default=True,
                                 tooltip="For release files holding both: load 'generator_ema' (on) or 'generator' "
                                         "(off). Ignored for plain state dicts."),
                io.Combo.Input("dtype", options=list(DTYPES), default="bf16",
                               tooltip="Compute dtype of the loaded weights (bf16 for Wan on a GPU; fp32 on a CPU)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", optional=True,
                               tooltip="Storage of the linear layers' weights, as in Load Diffusion Model: default = "
                                       "as the file stores them (dtype, or fp8 for an fp8 file); fp8 halves bf16 "
                                       "memory (a quarter of fp32), each layer cast to dtype when used; "
                                       "fp8_e4m3fn_fast multiplies in fp8 on GPUs that support it."),
            ],
            outputs=[SaltModelType.Output(tooltip="The Salt backbone for SaltStreamingSampler.")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name) -> bool | str:
        """Reject a file that is not there when the prompt is queued (ComfyUI 0.3.75 checks no V3 combo value)."""
        try:
            ckpt_name is None or diffusion_model_path(ckpt_name)
        except FileNotFoundError as e:
            return f"SaltLoadCausalModel: ckpt_name: {e}"
        return True

    @classmethod
    def execute(cls, ckpt_name, use_ema, dtype, weight_dtype="default") -> io.NodeOutput:
        return io.NodeOutput(load_salt_model(ckpt_name, use_ema, dtype, weight_dtype))


class SaltCausalFromModel(io.ComfyNode):
    """Wrap a native ComfyUI Wan MODEL as a SALT_MODEL that shares its weights (no second copy in memory)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltCausalFromModel",
            display_name="Salt Causal From Model",
            category="Salt/loaders",
            description="Uses a Wan 2.1 T2V MODEL loaded by ComfyUI (e.g. a Self-Forcing / Salt student saved in "
                        "ComfyUI layout, with LoRAs applied; also the native autoregressive CausalWanModel of newer "
                        "ComfyUI) for Salt's KV-cached streaming. The Salt model's "
                        "parameters are the MODEL's tensors, so no weights are copied. ComfyUI's model management "
                        "loads and offloads the MODEL as for its own samplers (through a clone of its patcher); the "
                        "Salt model holds the MODEL's tensors only while ComfyUI has that clone loaded.",
            inputs=[io.Model.Input("model", tooltip="A Wan 2.1 T2V MODEL (Load Diffusion Model, any weight_dtype: "
                                                    "fp8 layers are cast per use).")],
            outputs=[SaltModelType.Output(tooltip="The Salt backbone for SaltStreamingSampler.")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        return io.NodeOutput(salt_from_native(native_wan_module(model), model))
