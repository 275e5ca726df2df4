"""ComfyUI's model management for Salt's models: devices, free memory, ModelPatchers and loading, fp8 weight
storage, the cast-on-use layers and patched weights of a native MODEL, autograd inside a node.
"""
import contextlib

import torch

import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils


def free_memory(device, patcher=None) -> int:
    """Bytes ComfyUI reports free on `device` (device memory, or RAM for the CPU): through `patcher`'s own query
    where ComfyUI has one (0.16+: it adds what Dynamic VRAM can evict), else the module-level one."""
    query = getattr(patcher, "get_free_memory", None)
    if query is not None:
        return int(query(device))
    return int(comfy.model_management.get_free_memory(device))


def total_memory(device) -> int:
    """Bytes of all of `device`'s memory (RAM for the CPU), as ComfyUI counts them: what no eviction can exceed."""
    return int(comfy.model_management.get_total_memory(device))


# UNETLoader's weight_dtype options → storage dtype of the linear layers' weights (None: the compute dtype).
# "_fast" also multiplies in fp8 where the GPU supports it (comfy.ops.fp8_ops); elsewhere it casts like the rest.
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
                 "fp8_e5m2": torch.float8_e5m2}


def model_offload_device() -> torch.device:
    """Where ComfyUI keeps diffusion models between uses: the CPU (the GPU under --highvram / --gpu-only)."""
    return comfy.model_management.unet_offload_device()


def mmap_disabled() -> bool:
    """Whether ComfyUI runs with --disable-mmap (its loaders then copy each tensor out of the file's mapping)."""
    return bool(getattr(comfy.utils, "DISABLE_MMAP", False))


def store_linear_weights(module: torch.nn.Module, weight_dtype: str, compute_dtype: torch.dtype) -> int:
    """Store every `nn.Linear` weight of `module` in `weight_dtype` (a WEIGHT_DTYPES name), cast to
    `compute_dtype` layer by layer when used, as UNETLoader's models do; returns the number of layers converted.

    The layers become ComfyUI's own cast-on-use ops (`comfy.ops.pick_operations`: manual_cast, or fp8_ops for
    *_fast on GPUs with fp8 matmul; "default" keeps the compute dtype in plain ops that compute as nn.Linear but
    that Dynamic VRAM can stream); biases stay in the compute dtype. Each weight is converted in turn, so memory
    grows by one layer at most.
    """
    storage = WEIGHT_DTYPES[weight_dtype] or compute_dtype
    ops = comfy.ops.pick_operations(storage, compute_dtype, load_device=torch_device(),
                                    fp8_optimizations=weight_dtype.endswith("_fast"))
    linears = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.Linear]
    for parent, name, old in linears:
        new = ops.Linear(old.in_features, old.out_features, bias=old.bias is not None, device="meta")
        new.weight = torch.nn.Parameter(old.weight.detach().to(storage), requires_grad=False)
        new.bias = old.bias
        setattr(parent, name, new)
    return len(linears)


def model_patcher(module: torch.nn.Module):
    """ComfyUI's core ModelPatcher for `module` (weights on the offload device), as UNETLoader's models get: the
    Dynamic VRAM one where ComfyUI installed it (0.16+ on NVIDIA), else the classic one. Model management loads it
    onto the compute device when asked (`load_for_sampling`) and offloads it when another model needs the room."""
    cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return cls(module, load_device=torch_device(), offload_device=model_offload_device())


def is_dynamic(patcher) -> bool:
    """Whether `patcher` loads dynamically (ComfyUI 0.16+ Dynamic VRAM): its weights stay in host memory, each
    cast-on-use layer is streamed to the device and LoRA-patched per cast, never written into the Parameter."""
    query = getattr(patcher, "is_dynamic", None)
    return bool(query()) if query is not None else False


def load_for_sampling(patcher, memory_required: int = 0, complete: bool = True) -> None:
    """Have ComfyUI's model management put a ModelPatcher's module on the compute device, first freeing other
    models for its weights plus `memory_required` bytes (activations, KV cache); None (unmanaged) is left alone.

    `complete`: a classic patcher must load every weight (a module whose plain layers are not cast to the device on
    use, as Salt's own norms and modulation tables are not); a partial load all the same (ComfyUI does one under
    --novram, or when the device is too small) raises RuntimeError naming the cause. A dynamic patcher (Dynamic VRAM)
    is loaded as ComfyUI decides: its plain layers are always put on the device, its cast-on-use layers streamed.
    Otherwise (a native MODEL, all of whose layers ComfyUI casts on use) loaded as ComfyUI's own samplers load it.
    """
    if patcher is None:
        return
    full = complete and not is_dynamic(patcher)
    comfy.model_management.load_models_gpu([patcher], memory_required=memory_required,
                                           **({"force_full_load": True} if full else {}))
    loaded, size = patcher.loaded_size(), patcher.model_size()
    if full and (getattr(patcher.model, "model_lowvram", False) or loaded < size):
        raise RuntimeError(f"ComfyUI loaded only {loaded / 2**20:.0f} of {size / 2**20:.0f} MiB of the model onto "
                           f"{patcher.load_device} (a partial 'lowvram' load: ComfyUI makes one under --novram, or "
                           f"when the device cannot hold the model beside {memory_required / 2**20:.0f} MiB of "
                           f"activations and KV cache); a Salt model loaded from a file computes with every weight "
                           f"on the device. Start ComfyUI without --novram, free the device (fewer loaded models, "
                           f"smaller batch or video), load the file with weight_dtype fp8, or use --cpu")


def cast_weight_bias(module: torch.nn.Module, dtype: torch.dtype, device) -> tuple:
    """(weight, bias) of one of ComfyUI's cast-on-use layers as its own forward would use them: on `device` in
    `dtype`, with the LoRA patches ComfyUI applies per cast (lowvram / Dynamic VRAM) applied. The layer's own
    tensors when they are already that (no copy); a cast is copied (a Dynamic VRAM cast may live in a shared buffer
    the next cast reuses, and these small layers are held for a whole sampling); the cast is released as
    ComfyUI's own ops release it."""
    weight, bias, stream = comfy.ops.cast_bias_weight(module, dtype=dtype, device=device, bias_dtype=dtype,
                                                      offloadable=True)

    def hold(t, own):   # the layer's own tensor (already in place): no copy; a cast: a copy of its own
        return t if t is None or (own is not None and t.data_ptr() == own.data_ptr()) else t.clone()
    held = (hold(weight, module.weight), hold(bias, module.bias))
    comfy.ops.uncast_bias_weight(module, weight, bias, stream)
    return held


def is_quantized(tensor) -> bool:
    """Whether `tensor` is one of ComfyUI's QuantizedTensor weights (its mixed-precision and quantized formats: the
    scales live inside it, so the state dict shows no scale key for it)."""
    return any(c.__name__ == "QuantizedTensor" for c in type(tensor).__mro__)


def patched_weight(patcher, key: str, dtype: torch.dtype, device) -> torch.Tensor:
    """Tensor `key` of `patcher`'s model (e.g. 'diffusion_model.blocks.0.ffn.0.weight') as that MODEL computes with
    it, on `device` in `dtype`: the unpatched original (from the backup clones of one module share, if some clone
    wrote its patches into it) with `patcher`'s own patches applied by ComfyUI's `calculate_weight` in float32.
    Tensors stored in fp8 are returned as stored (fp8); quantized storage (0.33's scaled fp8) and weight patches
    that are functions (hooks, wrappers) are refused, naming the cause and the fix."""
    backup = patcher.backup.get(key)
    original = backup.weight if backup is not None else comfy.utils.get_attr(patcher.model, key)
    if is_quantized(original):   # reports its compute dtype
        raise ValueError(f"the MODEL stores {key!r} quantized ({type(original).__name__}, e.g. a scaled-fp8 file); "
                         f"a LoRA of it would mostly hold rounding noise: load the full-precision (bf16 / fp16) file")
    if patcher.weight_wrapper_patches.get(key) or getattr(patcher, "hook_patches", None):
        raise ValueError(f"the MODEL has hook or weight-wrapper patches on {key!r}, which ComfyUI applies inside its "
                         f"own forward and Salt cannot read per weight; remove them for the extraction, or apply "
                         f"the same LoRAs as plain patches (LoraLoaderModelOnly) instead of hooks")
    if original.dtype.itemsize == 1:
        return original.detach().to(device)
    patches = patcher.patches.get(key)
    if not patches:
        return original.detach().to(device, dtype)
    return comfy.lora.calculate_weight(patches, original.detach().to(device, torch.float32, copy=True), key).to(dtype)


def casts_on_use(module: torch.nn.Module) -> bool:
    """Whether `module` is one of ComfyUI's cast-on-use ops (comfy.ops layers: what partial and dynamic loads
    stream to the device and patch per cast)."""
    return hasattr(module, "comfy_cast_weights")


def native_compute_dtype(patcher, stored: torch.dtype) -> torch.dtype:
    """The dtype a native MODEL computes in: its manual-cast dtype (fp8 or other storage cast per layer), else the
    dtype its weights are stored in."""
    return getattr(getattr(patcher, "model", None), "manual_cast_dtype", None) or stored


def torch_device() -> torch.device:
    """The device ComfyUI computes on (cpu under --cpu)."""
    return comfy.model_management.get_torch_device()


def free_memory_for_training() -> None:
    """Unload the models ComfyUI holds (they reload when next used), so a training job has the device memory."""
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


@contextlib.contextmanager
def training_mode():
    """Autograd on inside a node: ComfyUI runs every node under torch.inference_mode()."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


# Native Wan backbones with the original Wan parameter names: WanModel (comfy/ldm/wan/model.py) and, in
# ComfyUI after PR #13082, the weight-compatible autoregressive CausalWanModel (comfy/ldm/wan/ar_model.py).
NATIVE_WAN_CLASSES = ("WanModel", "CausalWanModel")
NATIVE_PREFIX = "diffusion_model."      # a native backbone's state-dict keys in its MODEL (patches, backups)


def native_wan_module(model_patcher) -> torch.nn.Module:
    """The native Wan backbone (`WanModel` or `CausalWanModel`) of a ComfyUI MODEL, checked, as it is now: its
    LoRA patches are applied only while model management has it loaded (`load_for_sampling`)."""
    inner = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if inner is None:
        raise TypeError(f"model: got a {type(model_patcher).__name__}; expected a ComfyUI MODEL (the output of "
                        f"Load Diffusion Model / UNETLoader or Load Checkpoint)")
    if type(inner).__name__ not in NATIVE_WAN_CLASSES or not type(inner).__module__.startswith("comfy.ldm.wan"):
        raise TypeError(f"model: its diffusion model is {type(inner).__module__}.{type(inner).__name__}; expected "
                        f"comfy.ldm.wan.model.WanModel or comfy.ldm.wan.ar_model.CausalWanModel (a Wan 2.1 T2V "
                        f"checkpoint). Load a Wan 2.1 model, or load a Salt / Self-Forcing file with "
                        f"SaltLoadCausalModel")
    return inner
