"""Velocity models behind the k-diffusion denoiser contract `model(x, σ) -> x0`, bare or bound to a KV cache.

- `apply_cfg`: the one classifier-free guidance combination, standard form uncond + g·(cond − uncond)
  (Self Forcing's `guidance_scale` g_SF equals standard g = g_SF + 1);
- `GuidedModel`: a velocity model with CFG, one batch [cond; uncond] per forward (cache-compatible);
- `FlowDenoiser`: (x, σ) → x0 with the text context bound (samplers, bidirectional rollouts);
- `CachedDenoiser`: the same bound to a KV cache at one chunk position (streaming, causal rollouts).
Knows nothing of samplers, schedules of steps or ComfyUI.
"""
import torch

from .schedules import sigma_to_t, x0_from_velocity


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance uncond + g·(cond − uncond) on predictions of one shape, in their dtype."""
    return uncond + scale * (cond - uncond)


def check_guidance(cfg_scale: float, uncond_context) -> None:
    """Guidance other than 1 needs an unconditional context."""
    if cfg_scale != 1.0 and uncond_context is None:
        raise ValueError(f"cfg_scale={cfg_scale} needs uncond_context (the empty / negative prompt embedding)")


class GuidedModel:
    """Classifier-free guidance for a velocity model: one batch [cond; uncond], so a cached forward runs through
    one cache of 2B (`new_cache` allocates it). The doubled context is built once per context tensor and batch,
    so the cache (which keeps cross K/V per context tensor) sees the same tensor across calls.
    """

    def __init__(self, model, uncond_context, cfg_scale: float):
        self.model, self.uncond, self.cfg_scale = model, uncond_context, cfg_scale
        self._pair = None

    @property
    def cfg(self):
        return self.model.cfg

    def new_cache(self, batch, policy, grid_hw, memory_limit=None):
        return self.model.new_cache(2 * batch, policy, grid_hw, memory_limit=memory_limit)

    def __call__(self, x, t, context, **kwargs):
        """Guided velocity (B, C, F, H, W) for x (B, C, F, H, W), t (B,) or (B, F), context and the unconditional
        context (1 or B, Lc, text_dim) each (a batch of 1 serves every sample)."""
        B = x.shape[0]
        if self._pair is None or self._pair[0] is not context or self._pair[1].shape[0] != 2 * B:
            size = (B, *context.shape[1:])
            self._pair = (context, torch.cat([context.expand(size), self.uncond.expand(size)]))
        v_c, v_u = self.model(torch.cat([x, x]), torch.cat([t, t]), self._pair[1], **kwargs).chunk(2)
        return apply_cfg(v_c, v_u, self.cfg_scale)


class FlowDenoiser:
    """Callable (x (B,C,F,H,W), σ (B,) or scalar) → x0, with text context bound at construction.

    `velocity(x, σ)` is the (guided) network output v; `__call__` converts it, x0 = x − σ·v (float64).
    """
    per_frame = False   # timesteps (B,); CachedDenoiser gives the model per-frame (B, F) ones

    def __init__(self, model, context, uncond_context=None, cfg_scale: float = 1.0, **forward_kwargs):
        check_guidance(cfg_scale, uncond_context)
        self.model = model if cfg_scale == 1.0 else GuidedModel(model, uncond_context, cfg_scale)
        self.context, self.forward_kwargs = context, forward_kwargs

    def velocity(self, x, sigma):
        """Velocity (B, C, F, H, W) at noise level σ (a float, or (B,) per sample): t = 1000·σ."""
        return self.model(x, sigma_to_t(sigma, x, self.per_frame), self.context, **self.forward_kwargs)

    def __call__(self, x, sigma, **_):
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        v = self.velocity(x, sigma)
        return x0_from_velocity(x, v, sigma.expand(x.shape[0]).view(-1, 1, 1, 1, 1))


class CachedDenoiser(FlowDenoiser):
    """A causal model on a KV cache at one chunk: x (B, C, n, H, W) are frames [start_frame, start_frame + n);
    `write` stores the chunk's K/V (the cache's last write of a frame wins). The model may be a GuidedModel."""
    per_frame = True

    def __init__(self, model, context, cache, start_frame: int, write: bool = True):
        super().__init__(model, context, cache=cache, start_frame=start_frame, write_cache=write)
