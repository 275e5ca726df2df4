"""The toy world in ComfyUI: the shipped toy teacher, its text encoder, and pixel latents → IMAGE.

Toy latents are RGB pixels in [-1, 1], (B, 3, F, 16, 16); the toy text encoder stands in for umT5.
Runs on a CPU in seconds, with no download.
"""
import torch

from ..salt_core.config import get_config
from ..salt_core.validate import available_memory, check_choice, check_count, check_memory, quote
from ..toy.shipped import TOY_STUDENT, TOY_TEACHER, load_toy_asset
from ..toy.text import ToyTextEncoder
from .bridge import io
from .bridge.memory import model_offload_device, model_patcher
from .types import SaltModel, SaltModelType

TOY_ASSETS = {"toy_salt_student": TOY_STUDENT, "toy_teacher": TOY_TEACHER}   # first: the default
TOY_MODEL_PRESET = "toy"                          # the toy model's WanConfig preset (text_dim 32, text_len 8)


def load_toy_model(asset: str, path: str = None) -> SaltModel:
    """SaltModel of a shipped toy asset (or of `path`), with a node error saying how to build a missing one."""
    check_choice("asset", asset, TOY_ASSETS, where="SaltToyModel")
    try:
        model, mode, description = load_toy_asset(path or TOY_ASSETS[asset])
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"SaltToyModel: asset={asset!r} is not installed: {e}. Or load any toy-preset checkpoint from "
            f"models/diffusion_models with SaltLoadCausalModel") from e
    model = model.to(model_offload_device())      # model management moves it to the compute device to sample
    return SaltModel(model, "pixels", description, mode != "bidirectional", model_patcher(model))


def toy_conditioning(text: str, where: str = "SaltToyTextEncode: text") -> list:
    """CONDITIONING [[(1, text_len, text_dim) embeddings, {}]] of one toy caption; errors name `where`."""
    if not isinstance(text, str):
        raise ValueError(f"{where}={quote(text)}; expected a caption (a string), e.g. 'a red disc moving left'")
    cfg = get_config(TOY_MODEL_PRESET)
    encoder = ToyTextEncoder(text_dim=cfg.text_dim, max_tokens=cfg.text_len)
    try:
        return [[encoder.encode([text]), {}]]
    except ValueError as e:
        raise ValueError(f"{where}={quote(text)}: {e}") from e


def toy_images(samples: torch.Tensor, upscale: int) -> torch.Tensor:
    """Pixel latents (B, 3, F, H, W) in [-1, 1] → IMAGE (B·F, H·upscale, W·upscale, 3) in [0, 1], nearest."""
    if samples.ndim != 5 or samples.shape[1] != 3:
        raise ValueError(f"SaltToyDecode: samples of shape {tuple(samples.shape)}; expected toy pixel latents "
                         f"(B, 3, F, H, W) from SaltStreamingSampler with a toy model (decode Wan latents with "
                         f"VAEDecode)")
    upscale = check_count("upscale", upscale, where="SaltToyDecode")
    b, _, f, h, w = samples.shape
    # the IMAGE (float32) and the half-upscaled tensor repeat_interleave builds on the way
    need = 4 * 3 * b * f * h * w * upscale * (upscale + 1)
    check_memory(f"IMAGE of {b * f} frames at {h * upscale}×{w * upscale} px", need,
                 available_memory(torch.device("cpu")), where="SaltToyDecode", limit_what="the host's free memory",
                 fix="lower upscale (ComfyUI's image nodes can upscale the decoded frames later)")
    images = ((samples.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).flatten(0, 1)   # (B·F, H, W, 3)
    return images.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2).cpu()


class SaltToyModel(io.ComfyNode):
    """The shipped toy-world model (1.2M parameters, 16×16 RGB, chunk-by-chunk) as a SALT_MODEL."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltToyModel",
            display_name="Salt Toy Model",
            category="Salt/toy",
            description="Loads the toy-world model shipped with the pack: a 4-layer Wan on 16×16 RGB pixel "
                        "latents, trained chunk by chunk (3 frames per chunk, 12-frame clips). Runs on a CPU.",
            inputs=[io.Combo.Input("asset", options=list(TOY_ASSETS), default="toy_salt_student",
                                   tooltip="Which shipped toy model: the Salt student (distilled for 2 and 4 "
                                           "steps, no CFG) or its teacher (40 steps with CFG 3).")],
            outputs=[SaltModelType.Output(tooltip="The toy model for SaltStreamingSampler.")],
        )

    @classmethod
    def execute(cls, asset) -> io.NodeOutput:
        return io.NodeOutput(load_toy_model(asset))


class SaltToyTextEncode(io.ComfyNode):
    """Toy caption → CONDITIONING with the toy text encoder (fixed vocabulary, seeded embeddings)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltToyTextEncode",
            display_name="Salt Toy Text Encode",
            category="Salt/toy",
            description="Encodes a toy-world caption such as 'a red disc moving left on a dark background': "
                        "colours red/green/blue/yellow, shapes square/disc/bar, directions left/right/up/down, "
                        "backgrounds dark/light; filler words are dropped. An empty text gives the unconditional "
                        "embedding (zeros).",
            inputs=[io.String.Input("text", multiline=True, default="a red disc moving left on a dark background",
                                    tooltip="A toy caption: colour, shape, direction, background.")],
            outputs=[io.Conditioning.Output(tooltip="Toy text features (1, 8, 32) for SaltStreamingSampler.")],
        )

    @classmethod
    def execute(cls, text) -> io.NodeOutput:
        return io.NodeOutput(toy_conditioning(text))


class SaltToyDecode(io.ComfyNode):
    """Toy pixel latents → IMAGE frames (no VAE: toy latents are pixels)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltToyDecode",
            display_name="Salt Toy Decode",
            category="Salt/toy",
            description="Turns toy latents (B, 3, F, H, W) in [-1, 1] into B·F IMAGE frames in [0, 1], enlarged by "
                        "nearest neighbour so 16×16 frames are visible. Feed SaveAnimatedWEBP or CreateVideo.",
            inputs=[
                io.Latent.Input("samples", tooltip="Toy latents from SaltStreamingSampler."),
                io.Int.Input("upscale", default=8, min=1, max=64,
                             tooltip="Integer enlargement (nearest neighbour): 8 turns 16×16 into 128×128."),
            ],
            outputs=[io.Image.Output(tooltip="Frames (B·F, H·upscale, W·upscale, 3), video after video.")],
        )

    @classmethod
    def execute(cls, samples, upscale) -> io.NodeOutput:
        return io.NodeOutput(toy_images(samples["samples"], upscale))
