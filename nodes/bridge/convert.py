"""Conversions between ComfyUI's types and Salt's: LATENT space, IMAGE to latent, a CLIP as a text encoder,
a sampling function as a SAMPLER.
"""
import torch

import comfy.latent_formats
import comfy.samplers
import comfy.utils


def ksampler(sample_fn, **extra_options):
    """A ComfyUI SAMPLER around a k-diffusion-contract function (works with SamplerCustomAdvanced)."""
    return comfy.samplers.KSAMPLER(sample_fn, extra_options=extra_options)


def latent_to_comfy(x: torch.Tensor, latent_format: str) -> torch.Tensor:
    """Model-space latents (B, C, F, H, W) → ComfyUI's LATENT space (what VAEDecode reads).

    ComfyUI stores Wan latents un-normalised and normalises them inside the model (process_latent_in);
    Salt models work on normalised latents, so Wan latents are de-normalised here. Pixel latents pass.
    """
    if latent_format == "wan21":
        return comfy.latent_formats.Wan21().process_out(x)
    return x


def latent_from_comfy(x: torch.Tensor, latent_format: str) -> torch.Tensor:
    """ComfyUI's LATENT space (B, C, F, H, W) → Salt's model space: the inverse of `latent_to_comfy`."""
    if latent_format == "wan21":
        return comfy.latent_formats.Wan21().process_in(x)
    return x


def resize_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE (B, H', W', C) → (B, height, width, C), scaled and centre-cropped as ComfyUI's image nodes do."""
    if image.shape[1:3] == (height, width):
        return image
    return comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)


def encode_image(vae, image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE (B, H', W', C) in [0, 1], resized first → the VAE's LATENT samples (B, C, 1, height/8, width/8)."""
    return vae.encode(resize_image(image, width, height)[..., :3])


UMT5_TOKENIZERS = ("WanT5Tokenizer",)   # ComfyUI's tokenizer class of Wan's umT5-XXL (comfy/text_encoders/wan.py)


def clip_text_encoder(clip):
    """A ComfyUI CLIP → an encoder for training.prompts: texts → one (L_i, D) tensor per text.

    Each text is encoded as CLIPTextEncode does (`clip.tokenize` then `clip.encode_from_tokens`). ComfyUI's Wan
    umT5 pads to 512 tokens and zeroes the padded positions itself; training.prompts cuts or zero-pads to 512.
    """
    if not (callable(getattr(clip, "tokenize", None)) and callable(getattr(clip, "encode_from_tokens", None))):
        raise TypeError(f"clip: got a {type(clip).__name__}; expected a ComfyUI CLIP (the output of Load CLIP with "
                        f"type 'wan', i.e. umT5-XXL)")
    tokenizer = type(getattr(clip, "tokenizer", None))
    if tokenizer.__name__ not in UMT5_TOKENIZERS:
        raise TypeError(f"clip: a CLIP with the {tokenizer.__name__} tokenizer; Wan needs umT5-XXL (Load CLIP, type "
                        f"'wan', umt5_xxl_*.safetensors): another text encoder of the same width would train on the "
                        f"wrong text features")

    def encode(texts: list) -> list:
        return [clip.encode_from_tokens(clip.tokenize(text))[0].float().cpu() for text in texts]   # (1, L, D)[0]
    return encode
