"""The values that flow on Salt's own wires (SALT_MODEL, SALT_CACHE_OPTIONS) and their ComfyUI io types.

Plain frozen dataclasses: nodes never mutate what they receive (except that a native MODEL's view is bound to
that MODEL's tensors while ComfyUI has it loaded: bridge/view_patcher.py). Knows nothing of sampling.
"""
from dataclasses import dataclass

from ..salt_core.kv_cache import CachePolicy
from ..salt_core.model import WanModel
from .bridge import io

LATENT_FORMATS = ("pixels", "wan21", "raw")
# Pixels per latent pixel (height and width) for each latent format.
SPATIAL_FACTOR = {"pixels": 1, "wan21": 8, "raw": 1}


@dataclass(frozen=True)
class SaltModel:
    """A Salt WanModel on a SALT_MODEL wire, with what its latents are and how it was trained."""
    model: WanModel          # eval-mode Salt backbone (original Wan parameter names)
    latent_format: str       # "pixels": RGB in [-1, 1] (toy world); "wan21": Wan 2.1 VAE latents; "raw": as is
    name: str                # what was loaded, for messages
    causal: bool = True      # trained to generate chunk by chunk on a KV cache (False: bidirectional)
    patcher: object = None   # ComfyUI ModelPatcher that loads / offloads `model` (or the MODEL it views), or None
    native: bool = False     # a view of `patcher`'s native Wan: hollow (meta) unless bound by its patcher
    #                          (bridge/view_patcher.py)

    def __post_init__(self):
        assert self.latent_format in LATENT_FORMATS, self.latent_format


@dataclass(frozen=True)
class CacheOptions:
    """Streaming settings on a SALT_CACHE_OPTIONS wire."""
    chunk_frames: int        # latent frames generated per chunk
    policy: CachePolicy      # which frames the KV cache keeps (full / rolling / sink, RoPE mode)
    context_noise: float     # σ of the clean-context forward that writes each finished chunk to the cache


SaltModelType = io.Custom("SALT_MODEL")
CacheOptionsType = io.Custom("SALT_CACHE_OPTIONS")


def latent_format_for(model: WanModel) -> str:
    """'wan21' for 16-channel models (Wan 2.1 VAE latents), 'pixels' for 3-channel ones (toy world), else 'raw'."""
    return {16: "wan21", 3: "pixels"}.get(model.cfg.in_dim, "raw")
