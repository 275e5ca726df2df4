"""SALT_MODEL sources: a checkpoint file in any supported layout, or a native ComfyUI Wan MODEL (zero copies).

File reading goes through training.files; the native path is a view bound to the tensors ComfyUI holds only while
a Salt node computes with it (`salt_in_use`, the one way every node gets a SALT_MODEL's module ready).
"""
import dataclasses
import os
from contextlib import contextmanager

import torch

from ..salt_core.layouts import LayoutError, check_state_dict, infer_config
from ..salt_core.model import WanModel
from ..salt_core.rope import RotaryTable
from ..training.files import load_model
from .bridge import (WEIGHT_DTYPES, diffusion_model_files, diffusion_model_path, io, load_for_sampling,
                     model_offload_device, model_patcher, native_wan_module, store_linear_weights)
from .types import SaltModel, SaltModelType, latent_format_for

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BIDIRECTIONAL_MODES = ("bidirectional",)   # `teacher_mode` metadata values of models not trained causally


def file_teacher_mode(path: str) -> str:
    """The `teacher_mode` our own safetensors files record (None for other files); reads the header only."""
    if not path.lower().endswith(".safetensors"):
        return None
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("teacher_mode")
    except Exception:  # unreadable files are reported by load_model with the full story
        return None


def load_salt_model(name: str, use_ema: bool, dtype: str, weight_dtype: str = "default") -> SaltModel:
    """SaltModel from a file in models/diffusion_models, with a node error naming the file and the fix.

    The weights go to ComfyUI's offload device and are managed like UNETLoader's: loaded onto the compute
    device for sampling, offloaded when another model needs the room; `weight_dtype` fp8 stores the linear
    layers' weights in fp8 and computes in `dtype`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"SaltLoadCausalModel: dtype={dtype!r}; expected one of {list(DTYPES)}")
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"SaltLoadCausalModel: weight_dtype={weight_dtype!r}; expected one of {list(WEIGHT_DTYPES)}")
    path = diffusion_model_path(name)
    try:
        model, layout = load_model(path, use_ema=use_ema, dtype=DTYPES[dtype], device=model_offload_device())
    except (LayoutError, ValueError, KeyError) as e:
        raise ValueError(f"SaltLoadCausalModel: ckpt_name={name!r} cannot be loaded as a Wan 2.1 T2V transformer: "
                         f"{e}. (Full ComfyUI checkpoints and other architectures load with ComfyUI's own "
                         f"loaders.)") from e
    causal = file_teacher_mode(path) not in BIDIRECTIONAL_MODES
    if WEIGHT_DTYPES[weight_dtype] is not None:
        store_linear_weights(model, weight_dtype, DTYPES[dtype])
    model = model.eval()
    return SaltModel(model, latent_format_for(model), f"{os.path.basename(path)} ({layout} layout)", causal,
                     model_patcher(model))


def salt_from_native(native: torch.nn.Module, patcher, name: str = "native MODEL") -> SaltModel:
    """A hollow SaltModel view of a native comfy WanModel, managed by the MODEL's `patcher`: it holds no tensors of
    its own; `salt_in_use` points its parameters at the native module's current ones while it computes.

    ComfyUI replaces a weight's Parameter when it applies or removes a LoRA patch, and moves tensors when it loads
    or offloads, so a view bound once would go stale (or keep unloaded weights alive). ComfyUI keeps
    `patch_embedding` in float32 beside bf16/fp16 blocks; Salt computes in one dtype, so only tensors of another
    dtype than the blocks (that small conv) are cast, which copies them while bound.
    """
    sd = native.state_dict()                                      # original Wan names; shapes and dtypes only
    if "blocks.0.self_attn.q.weight" not in sd:
        raise ValueError(f"SaltCausalFromModel: the model has no 'blocks.0.self_attn.q.weight' ({len(sd)} keys); "
                         f"expected a Wan 2.1 T2V diffusion model")
    dtype = sd["blocks.0.self_attn.q.weight"].dtype
    if dtype not in DTYPES.values():
        raise ValueError(f"SaltCausalFromModel: the model's weights are {dtype}; Salt computes in bf16, fp16 or "
                         f"fp32. Load the diffusion model with weight_dtype 'default' (not fp8)")
    try:
        cfg = infer_config(sd, num_heads=native.num_heads)
        cfg = dataclasses.replace(cfg, eps=native.eps, text_len=native.text_len)
        with torch.device("meta"):
            model = WanModel(cfg).to(dtype).requires_grad_(False)
        check_state_dict(sd, model, "wan")     # every key and shape now, not at the first sampling
    except LayoutError as e:
        raise ValueError(f"SaltCausalFromModel: {e}") from e
    # The RoPE table is a plain attribute, not a parameter: the meta build left it without data.
    model.rope = RotaryTable(cfg.head_dim, cfg.rope_max_len, cfg.rope_theta)
    return SaltModel(model.eval(), latent_format_for(model), name, causal=True, patcher=patcher, native=True)


@contextmanager
def bound_to(model: WanModel, native: torch.nn.Module):
    """`model` (a view built on the meta device) with its parameters *being* `native`'s current Parameter objects
    (no copy, their requires_grad untouched; only tensors of another dtype than `model`'s are cast) for the block,
    and hollow (meta) again after. Nested blocks on one model share the outer binding."""
    depth = getattr(model, "_salt_bound_depth", 0)
    if depth == 0:
        dtype = model.patch_embedding.weight.dtype
        sd = {k: v if v.dtype == dtype else torch.nn.Parameter(v.detach().to(dtype), requires_grad=False)
              for k, v in native.state_dict(keep_vars=True).items()}
        check_state_dict(sd, model, "wan")
        _assign(model, sd)
    model._salt_bound_depth = depth + 1
    try:
        yield model
    finally:
        model._salt_bound_depth = depth
        if depth == 0:
            _assign(model, {k: torch.nn.Parameter(torch.empty(v.shape, dtype=v.dtype, device="meta"),
                                                  requires_grad=False) for k, v in model.named_parameters()})


def _assign(model: torch.nn.Module, params: dict) -> None:
    """Set each named parameter of `model` to the given Parameter object (setattr: no copy, no flag changed)."""
    for name, param in params.items():
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf, param)


@contextmanager
def salt_in_use(salt: SaltModel, memory_required: int = 0):
    """The SaltModel's module ready to compute: ComfyUI's model management loads it (a native view: the MODEL it
    views, LoRA patches applied) completely onto the compute device, first freeing other models for its weights
    plus `memory_required` bytes; a native view is bound to the loaded tensors for the block."""
    load_for_sampling(salt.patcher, memory_required)
    if not salt.native:
        yield salt.model
        return
    with bound_to(salt.model, native_wan_module(salt.patcher)) as model:
        yield model


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
                                       "dtype; fp8 halves bf16 memory (a quarter of fp32), each layer cast to dtype "
                                       "when used; fp8_e4m3fn_fast multiplies in fp8 on GPUs that support it."),
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
                        "loads and offloads the MODEL as for its own samplers; the Salt model holds its tensors "
                        "only while a Salt node computes with it.",
            inputs=[io.Model.Input("model", tooltip="A Wan 2.1 T2V MODEL (Load Diffusion Model, weight_dtype "
                                                    "default / bf16 / fp16).")],
            outputs=[SaltModelType.Output(tooltip="The Salt backbone for SaltStreamingSampler.")],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        return io.NodeOutput(salt_from_native(native_wan_module(model), model))
