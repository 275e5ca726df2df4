"""Helpers (not tests): a CPU stand-in for ComfyUI's Dynamic VRAM patcher, `ModelPatcherDynamic` (0.16+).

The real class cannot be built on a machine without CUDA: its constructor hands a CPU load device back to the
classic ModelPatcher, and its load needs comfy-aimdo's virtual-address buffers on a GPU. What Salt must cope with is
its behaviour, read from ComfyUI 0.33's `comfy/model_patcher.py`, and that is what the stand-in reproduces on the
CPU with the classic patcher's own lowvram machinery:

- `is_dynamic()` is True;
- `load()` ignores `full_load` (the real one asserts it is False and `load_models_gpu` never asks for it) and leaves
  every cast-on-use layer (comfy.ops) unloaded: its weight is never written, LoRA patches are attached to the layer
  and applied per cast (`LowVramPatch`); `loaded_size()` stays below `model_size()`;
- the dynamic-only queries model management makes of a dynamic patcher exist (`get_free_memory`, pin state,
  `loaded_ram_size`, `partially_unload_ram`), so ComfyUI 0.33's own `load_models_gpu` accepts it.
"""
import torch


def make_dynamic(patcher):
    """`patcher` (a classic ModelPatcher, e.g. a MODEL from UNETLoader) turned into the Dynamic VRAM stand-in, in
    place; returns it."""
    base = type(patcher)

    class DynamicStandIn(base):
        def is_dynamic(self):
            return True

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False,
                 **kwargs):
            assert not force_patch_weights   # as the real one: patches are applied per cast, never forced in
            # lowvram_model_memory=1 byte: no cast-on-use layer fits, so each stays where it is, patched per cast.
            return base.load(self, device_to, lowvram_model_memory=1, force_patch_weights=False, full_load=False,
                             **kwargs)

        def get_free_memory(self, device):
            import comfy.model_management
            return comfy.model_management.get_free_memory(device) + self.loaded_size()   # evictable weights

        def loaded_ram_size(self):
            return 0

        def partially_unload_ram(self, ram_to_unload, *args, **kwargs):
            return 0

        def set_in_use_by_current_prompt(self, in_use):
            pass

    patcher.__class__ = DynamicStandIn
    device = patcher.load_device
    patcher.model.dynamic_pins = {device: {"active": False, "current_prompt": False, "failed": False,
                                           "hostbufs_initialized": False}}
    return patcher


def lowvram_layers(module: torch.nn.Module) -> list:
    """Names of the cast-on-use layers of `module` that are patched per cast right now (a weight function set)."""
    return [n for n, m in module.named_modules()
            if getattr(m, "comfy_cast_weights", False) and (getattr(m, "weight_function", None)
                                                            or getattr(m, "weight_lowvram_function", None))]
