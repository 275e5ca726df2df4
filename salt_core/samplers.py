"""Bidirectional samplers with the k-diffusion contract (a ComfyUI SAMPLER is one KSAMPLER line).

`sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **opts)`:
`model(x, σ·s_in, **extra_args)` returns the denoised x0; `x` arrives noised at sigmas[0];
SIGMAS end with 0. Knows nothing of ComfyUI or caches (the AR rollout lives in streaming.py).
"""
import torch

from .validate import check_finite_tensor, check_sigmas

try:
    from tqdm.auto import trange
except ImportError:  # tqdm is optional: progress bars only
    def trange(n, disable=None, **_):
        return range(n)


def default_noise_sampler(x: torch.Tensor, seed=None):
    """Fresh Gaussian noise like x; seeded (k-diffusion convention: extra_args['seed']) or global RNG."""
    gen = None
    if seed is not None:
        gen = torch.Generator(device=x.device).manual_seed(int(seed))

    def sample(*_):
        return torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return sample


def _check_inputs(x, sigmas, where: str):
    """A finite x and valid SIGMAS (a split schedule may stop above 0): errors name the sampler."""
    check_sigmas(sigmas, where=where, end_at_zero=False)
    check_finite_tensor("x", x, where=where, fix="check the noise and the latent it was added to")


def _report(callback, x, i, sigma, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


@torch.no_grad()
def sample_fewstep_stochastic(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Self Forcing sampler: predict x0, re-noise to the next level with *fresh* noise; last x0 is the sample.

    x (B, ...) noised at sigmas[0]; sigmas (K+1,) ending at 0 → sample like x.
    """
    _check_inputs(x, sigmas, "sample_fewstep_stochastic")
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x, extra_args.get("seed"))
    s_in = x.new_ones(x.shape[0])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        nxt = float(sigmas[i + 1])
        if nxt == 0:
            x = denoised
        else:  # (1-σ')·x0 + σ'·ε in float64, in place: the same operations as add_noise, fewer buffers
            noise = noise_sampler(sigmas[i], sigmas[i + 1]).to(torch.float64, copy=True).mul_(nxt)
            x = denoised.to(torch.float64, copy=True).mul_(1 - nxt).add_(noise).to(x.dtype)
    return x


@torch.no_grad()
def sample_fewstep_deterministic(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Deterministic few-step sampler (LightX2V style): re-use the predicted noise, i.e. an Euler step
    x ← x0 + σ_next·(x - x0)/σ. With many steps this is the plain Euler ODE sampler."""
    _check_inputs(x, sigmas, "sample_fewstep_deterministic")
    extra_args = extra_args or {}
    s_in = x.new_ones(x.shape[0])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        x = denoised if nxt == 0 else (denoised.double() + (nxt / sigma) * (x.double() - denoised.double())).to(x.dtype)
    return x


sample_euler = sample_fewstep_deterministic  # the same update; the name many-step users look for


def trajectory_recorder():
    """A callback and the list it fills with (σ, x_t, x0_pred) per step — the teacher's ODE trajectory."""
    states = []

    def callback(d):
        states.append((float(d["sigma"]), d["x"].detach().clone(), d["denoised"].detach().clone()))
    return callback, states
