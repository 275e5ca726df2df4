"""Rectified-flow noise levels: shift, warped few-step lists, x0/velocity conversions (float64).

Notation (docs/method.md §0): x_t = (1-σ)·x0 + σ·ε, t = 1000·σ, velocity v = ε - x0, x0 = x_t - σ·v.
Step lists are given in raw units and *warped*: t_w = 1000·shift(t/1000), shift(σ) = sσ/(1+(s-1)σ).
SIGMAS follow the k-diffusion convention: a 1-D float tensor of noise levels ending with 0.
Knows nothing of models.
"""
import torch

from .validate import check_count, check_number, quote

MAX_NFE = 8


def shift_sigma(sigma, shift: float):
    """Timestep shift σ' = s·σ / (1 + (s-1)·σ) (Wan / SD3 flow shift); works on floats and tensors."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def raw_step_list(nfe: int) -> list:
    """Uniform raw denoising list for `nfe` steps: 4 → [1000, 750, 500, 250], 8 → [1000, 875, ..., 125]."""
    if not isinstance(nfe, int) or not 1 <= nfe <= MAX_NFE:
        raise ValueError(f"nfe={nfe!r}: expected an integer number of steps in 1..{MAX_NFE}")
    return [1000.0 * (1 - k / nfe) for k in range(nfe)]


def warp_timesteps(raw_steps, shift: float) -> torch.Tensor:
    """Warped timesteps (float64, no trailing 0) for a raw list, as Self Forcing's `warp_denoising_step`."""
    check_number("shift", shift, where="warp_timesteps", low=0, low_open=True, fix="Wan 2.1 uses 5.0, the toy world 3")
    raw = torch.as_tensor(raw_steps, dtype=torch.float64)
    if raw.ndim != 1 or raw.numel() == 0 or not torch.isfinite(raw).all() or (raw <= 0).any() or (raw > 1000).any():
        raise ValueError(f"raw step list {quote(raw.tolist())}: expected values in (0, 1000] (do not include 0)")
    if (raw[1:] >= raw[:-1]).any():
        raise ValueError(f"raw step list {quote(raw.tolist())}: expected strictly decreasing values")
    return 1000.0 * shift_sigma(raw / 1000.0, shift)


def get_sigmas_warped(raw_steps, shift: float = 5.0) -> torch.Tensor:
    """SIGMAS (K+1,) float64: warped σ for a raw step list, then 0. [1000,750,500,250] @5 → [1, .9375, .8333, .625, 0]."""
    return torch.cat([warp_timesteps(raw_steps, shift) / 1000.0, torch.zeros(1, dtype=torch.float64)])


def get_sigmas_fewstep(nfe: int, shift: float = 5.0) -> torch.Tensor:
    """SIGMAS for `nfe` uniform raw steps warped by `shift` (the Self Forcing / Salt grids)."""
    return get_sigmas_warped(raw_step_list(nfe), shift)


def get_sigmas_uniform(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """Many-step SIGMAS (num_steps+1,): σ = shift(linspace(1, 0)), for teacher sampling."""
    check_count("num_steps", num_steps, where="get_sigmas_uniform")
    check_number("shift", shift, where="get_sigmas_uniform", low=0, low_open=True)
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


TRAINING_GRID_RAW = raw_step_list(8)     # docs/method.md §0: the 8-step training grid (raw units)
INFERENCE_GRID_RAW = raw_step_list(4)    # every other 8-grid point


def sigma_to_t(sigma, like: torch.Tensor = None, per_frame: bool = False) -> torch.Tensor:
    """Model timesteps t = 1000·σ in float64 (the one σ → t conversion). σ: a float or a tensor of levels.

    Without `like`: t has σ's shape (on σ's device). With latents `like` (B, C, F, H, W): a scalar or (B,) σ
    becomes t (B,), or per frame (B, F) with `per_frame`, on like's device.
    """
    device = like.device if like is not None else (sigma.device if isinstance(sigma, torch.Tensor) else None)
    t = 1000.0 * torch.as_tensor(sigma, dtype=torch.float64, device=device)
    if like is None:
        return t
    if per_frame:
        return t.reshape(-1, 1).expand(like.shape[0], like.shape[2]).contiguous()   # (B, F)
    return t.reshape(-1).expand(like.shape[0]).contiguous()                          # (B,)


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """x0 = x_t - σ·v in float64, returned in x_t's dtype. σ scalar or broadcastable (e.g. (B,1,1,1,1))."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x_t.device)
    return (x_t.double() - s * v.double()).to(x_t.dtype)


def velocity_from_x0(x_t: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
    """v = (x_t - x0)/σ in float64 (σ > 0)."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x_t.device)
    return ((x_t.double() - x0.double()) / s).to(x_t.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """x_t = (1-σ)·x0 + σ·ε in float64, returned in x0's dtype; σ scalar or broadcastable to x0 (e.g. (B,1,1,1,1)).
    In place on two float64 copies: the fewest buffers for the same operations."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x0.device)
    scaled_noise = noise.to(torch.float64, copy=True).mul_(s)
    return x0.to(torch.float64, copy=True).mul_(1 - s).add_(scaled_noise).to(x0.dtype)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise shaped like x, drawn on the generator's device (CPU by default) then moved to x's:
    the same seed gives the same noise on any accelerator."""
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
