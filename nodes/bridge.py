"""The one module of the pack that imports ComfyUI: the V3 node API and the few internals the nodes use.

Everything else in `nodes/` imports `io` / `ComfyExtension` and these helpers from here, so a change of
ComfyUI internals is fixed in one place. Knows nothing of Salt models beyond tensors and modules.
"""
import contextlib

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
import latent_preview
from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401  (re-exported: nodes import them from here)

DIFFUSION_MODELS = "diffusion_models"   # ComfyUI's folder for bare transformer weights (models/diffusion_models)
LORAS = "loras"                          # ComfyUI's LoRA folder (models/loras), read by LoraLoaderModelOnly
PREVIEW_PIXELS = 128                     # previews of tiny pixel latents are upscaled to about this size


# -- files ----------------------------------------------------------------------------------------------
def diffusion_model_files() -> list:
    """Checkpoint names (relative paths) in ComfyUI's diffusion_models folders."""
    return folder_paths.get_filename_list(DIFFUSION_MODELS)


def diffusion_model_path(name: str) -> str:
    """Absolute path of a file in the diffusion_models folders; FileNotFoundError naming the folders if absent."""
    path = folder_paths.get_full_path(DIFFUSION_MODELS, name)
    if path is None:
        folders = folder_paths.get_folder_paths(DIFFUSION_MODELS)
        raise FileNotFoundError(f"no file {name!r} in the diffusion_models folders {folders}; put the checkpoint "
                                f"there and refresh the node (R), or pick one of {diffusion_model_files()[:8]}")
    return path


def diffusion_models_directory() -> str:
    """The first (writable) diffusion_models folder, where trained students are published."""
    return folder_paths.get_folder_paths(DIFFUSION_MODELS)[0]


def loras_directory() -> str:
    """The first (writable) loras folder, where extracted LoRAs are written."""
    return folder_paths.get_folder_paths(LORAS)[0]


def output_directory() -> str:
    """ComfyUI's output folder (--output-directory, default <base>/output)."""
    return folder_paths.get_output_directory()


# -- devices, interruption, progress --------------------------------------------------------------------
def torch_device() -> torch.device:
    """The device ComfyUI computes on (cpu under --cpu)."""
    return comfy.model_management.get_torch_device()


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (call between steps)."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def interrupt_requested() -> bool:
    """Whether the user pressed Cancel (the flag stays set; `raise_interrupted` clears it)."""
    return comfy.model_management.processing_interrupted()


def raise_interrupted():
    """Raise ComfyUI's interrupt exception and clear the Cancel flag, as a cancelled sampler does."""
    comfy.model_management.interrupt_current_processing(False)
    raise comfy.model_management.InterruptProcessingException()


def free_memory_for_training() -> None:
    """Unload the models ComfyUI holds (they reload when next used), so a training job has the device memory."""
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


@contextlib.contextmanager
def training_mode():
    """Autograd on inside a node: ComfyUI runs every node under torch.inference_mode()."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def ksampler(sample_fn, **extra_options):
    """A ComfyUI SAMPLER around a k-diffusion-contract function (works with SamplerCustomAdvanced)."""
    return comfy.samplers.KSAMPLER(sample_fn, extra_options=extra_options)


def _preview_image(x0: torch.Tensor, latent_format: str):
    """ComfyUI preview tuple of the last frame of sample 0 of x0 (B, C, F, H, W); None if not previewable."""
    frame = x0[:1, :, -1:].float()                                  # (1, C, 1, H, W)
    if latent_format == "wan21" and frame.shape[1] == 16:
        fmt = comfy.latent_formats.Wan21()
        previewer = latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)
        return previewer.decode_latent_to_preview_image("JPEG", frame)
    if latent_format != "pixels" or frame.shape[1] != 3:
        return None
    rgb = frame[0, :, 0].movedim(0, -1)                             # (H, W, 3) in [-1, 1]
    scale = max(1, PREVIEW_PIXELS // max(rgb.shape[0], rgb.shape[1]))
    rgb = rgb.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return ("JPEG", latent_preview.preview_to_image(rgb), latent_preview.MAX_PREVIEW_RESOLUTION)


class Progress:
    """ComfyUI's progress bar for `total` steps, with a latent preview per update."""

    def __init__(self, total: int, latent_format: str):
        self.bar, self.latent_format = comfy.utils.ProgressBar(total), latent_format

    def update(self, step: int, x0: torch.Tensor = None):
        """Report `step` of total; x0 (B, C, F, H, W) the current prediction, previewed if possible."""
        preview = None if x0 is None else _preview_image(x0, self.latent_format)
        self.bar.update_absolute(step, preview=preview)


# -- latents and native models --------------------------------------------------------------------------
def latent_to_comfy(x: torch.Tensor, latent_format: str) -> torch.Tensor:
    """Model-space latents (B, C, F, H, W) → ComfyUI's LATENT space (what VAEDecode reads).

    ComfyUI stores Wan latents un-normalised and normalises them inside the model (process_latent_in);
    Salt models work on normalised latents, so Wan latents are de-normalised here. Pixel latents pass.
    """
    if latent_format == "wan21":
        return comfy.latent_formats.Wan21().process_out(x)
    return x


# Native Wan backbones with the original Wan parameter names: WanModel (comfy/ldm/wan/model.py) and, in
# ComfyUI after PR #13082, the weight-compatible autoregressive CausalWanModel (comfy/ldm/wan/ar_model.py).
NATIVE_WAN_CLASSES = ("WanModel", "CausalWanModel")


def native_wan_module(model_patcher) -> torch.nn.Module:
    """The loaded native Wan backbone (`WanModel` or `CausalWanModel`) of a ComfyUI MODEL, patches (LoRAs) applied.

    Loads the model the way a sampler would, so the weights read afterwards are the ones it would use.
    """
    inner = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if inner is None:
        raise TypeError(f"model: got a {type(model_patcher).__name__}; expected a ComfyUI MODEL (the output of "
                        f"Load Diffusion Model / UNETLoader or Load Checkpoint)")
    if type(inner).__name__ not in NATIVE_WAN_CLASSES or not type(inner).__module__.startswith("comfy.ldm.wan"):
        raise TypeError(f"model: its diffusion model is {type(inner).__module__}.{type(inner).__name__}; expected "
                        f"comfy.ldm.wan.model.WanModel or comfy.ldm.wan.ar_model.CausalWanModel (a Wan 2.1 T2V "
                        f"checkpoint). Load a Wan 2.1 model, or load a Salt / Self-Forcing file with "
                        f"SaltLoadCausalModel")
    comfy.model_management.load_models_gpu([model_patcher])
    return inner
