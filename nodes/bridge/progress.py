"""Interruption (Cancel), the progress bar and latent previews through the user's previewer.
"""
import torch
from PIL import Image

import comfy.cli_args
import comfy.latent_formats
import comfy.model_management
import comfy.utils
import latent_preview

from .memory import torch_device


PREVIEW_PIXELS = 128   # previews of tiny pixel latents are upscaled to about this size


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (call between steps)."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def interrupt_requested() -> bool:
    """Whether the user pressed Cancel (the flag stays set; `raise_interrupted` clears it)."""
    return comfy.model_management.processing_interrupted()


def is_interrupt(error: BaseException) -> bool:
    """Whether `error` is ComfyUI's interrupt exception (Cancel), which a handler of other errors must let through."""
    return isinstance(error, comfy.model_management.InterruptProcessingException)


def raise_interrupted():
    """Raise ComfyUI's interrupt exception and clear the Cancel flag, as a cancelled sampler does."""
    comfy.model_management.interrupt_current_processing(False)
    raise comfy.model_management.InterruptProcessingException()


class PixelPreviewer(latent_preview.LatentPreviewer):
    """Previews of the toy world's latents, which are RGB pixels in [-1, 1]: shown as they are, enlarged by
    nearest neighbour to about PREVIEW_PIXELS (ComfyUI has no latent format for them)."""

    def decode_latent_to_preview(self, x0):
        rgb = x0[0, :, 0].float().movedim(0, -1)                        # (H, W, 3)
        scale = max(1, PREVIEW_PIXELS // max(rgb.shape[0], rgb.shape[1]))
        return latent_preview.preview_to_image(rgb.repeat_interleave(scale, 0).repeat_interleave(scale, 1))


def get_previewer(latent_format: str):
    """The previewer the user chose for ComfyUI (--preview-method: none / auto / latent2rgb / taesd, TAESD meaning
    the Wan 2.1 tiny decoder lighttaew2_1 in models/vae_approx where installed), or None for no previews or latents
    it cannot show. Salt's Wan latents are model-space, as ComfyUI's own samplers hand them to the previewer."""
    if comfy.cli_args.args.preview_method == comfy.cli_args.LatentPreviewMethod.NoPreviews:
        return None
    if latent_format == "wan21":
        return latent_preview.get_previewer(torch_device(), comfy.latent_formats.Wan21())
    if latent_format == "pixels":
        return PixelPreviewer()
    return None


def _frames_preview(previewer, frames: torch.Tensor):
    """ComfyUI preview tuple of frames (1, C, n, H, W), decoded one by one and shown side by side."""
    images = [previewer.decode_latent_to_preview(frames[:, :, i:i + 1]) for i in range(frames.shape[2])]
    strip = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
    x = 0
    for im in images:
        strip.paste(im, (x, 0))
        x += im.width
    return "JPEG", strip, latent_preview.MAX_PREVIEW_RESOLUTION


class Progress:
    """ComfyUI's progress bar for `total` steps, with previews through the user's previewer (`get_previewer`)."""

    MAX_CHUNK_FRAMES = 8    # frames of a finished chunk shown side by side

    def __init__(self, total: int, latent_format: str):
        self.bar, self.latent_format = comfy.utils.ProgressBar(total), latent_format
        self.previewer = get_previewer(latent_format)

    def _previewable(self, x0) -> bool:
        channels = {"wan21": 16, "pixels": 3}.get(self.latent_format)
        return self.previewer is not None and x0 is not None and x0.ndim == 5 and x0.shape[1] == channels

    def update(self, step: int, x0: torch.Tensor = None):
        """Report `step` of total; x0 (B, C, F, H, W) the current prediction: its last frame of sample 0 is shown."""
        preview = None
        if self._previewable(x0):
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0[:1, :, -1:].float())
        self.bar.update_absolute(step, preview=preview)

    def show_chunk(self, step: int, chunk: torch.Tensor):
        """Report `step` with a preview of a finished chunk (B, C, n, H, W): its frames of sample 0 side by side."""
        preview = None
        if self._previewable(chunk):
            preview = _frames_preview(self.previewer, chunk[:1, :, -self.MAX_CHUNK_FRAMES:].float())
        self.bar.update_absolute(step, preview=preview)
