"""Adapt a velocity-predicting WanModel to the k-diffusion denoiser contract `model(x, σ) -> x0`.

Optional classifier-free guidance in the standard form x0_u + g·(x0_c - x0_u) (Self Forcing's
`guidance_scale` g_SF equals standard g = g_SF + 1). Knows nothing of samplers or ComfyUI.
"""
import torch

from .schedules import x0_from_velocity


class FlowDenoiser:
    """Callable (x (B,C,F,H,W), σ (B,) or scalar) → x0, with text context bound at construction."""

    def __init__(self, model, context, uncond_context=None, cfg_scale: float = 1.0, **forward_kwargs):
        if cfg_scale != 1.0 and uncond_context is None:
            raise ValueError(f"cfg_scale={cfg_scale} needs uncond_context (the empty / negative prompt embedding)")
        self.model, self.context, self.uncond, self.cfg_scale = model, context, uncond_context, cfg_scale
        self.forward_kwargs = forward_kwargs

    def velocity(self, x, sigma):
        """Guided velocity at noise level σ (B,) — t = 1000·σ per sample."""
        t = 1000.0 * sigma.to(torch.float64).expand(x.shape[0])
        if self.cfg_scale == 1.0:
            return self.model(x, t, self.context, **self.forward_kwargs)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.context, self.uncond]),
                          **self.forward_kwargs)
        v_c, v_u = both.chunk(2)
        return v_u + self.cfg_scale * (v_c - v_u)

    def __call__(self, x, sigma, **_):
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1)
        v = self.velocity(x, sigma)
        return x0_from_velocity(x, v, sigma.to(torch.float64).expand(x.shape[0]).view(-1, 1, 1, 1, 1))
