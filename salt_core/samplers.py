"""Bidirectional samplers with the k-diffusion contract (a ComfyUI SAMPLER is one KSAMPLER line).

`sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **opts)`:
`model(x, σ·s_in, **extra_args)` returns the denoised x0; `x` arrives noised at sigmas[0];
SIGMAS end with 0. `fewstep_update` is the one denoising update; streaming and the training rollouts
call it on a cache-bound denoiser. Knows nothing of ComfyUI or caches (the AR rollout lives in streaming.py).
"""
import torch
from tqdm.auto import trange

from .schedules import add_noise
from .validate import check_finite_tensor, check_sigmas


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


def fewstep_update(x, denoised, sigma, sigma_next, noise_sampler=None):
    """The one few-step update, x at σ → x at σ' given the denoiser's x0 (every sampler, stream and rollout).

    σ' = 0: the sample x0. With `noise_sampler(σ, σ')` (drawn only here): the Self Forcing re-noise
    (1−σ')·x0 + σ'·ε with fresh ε. Without: the deterministic Euler step x0 + (σ'/σ)·(x − x0) in float64.
    x, denoised (B, ...) of one shape → like x.
    """
    nxt = float(sigma_next)
    if nxt == 0:
        return denoised
    if noise_sampler is not None:
        return add_noise(denoised, noise_sampler(sigma, sigma_next), nxt)
    return (denoised.double() + (nxt / float(sigma)) * (x.double() - denoised.double())).to(x.dtype)


def _sample_fewstep(model, x, sigmas, extra_args, callback, disable, stochastic: bool, noise_sampler, where: str):
    """The few-step loop: denoise, report, update (stochastic: fresh noise, seeded by extra_args['seed'])."""
    _check_inputs(x, sigmas, where)
    extra_args = extra_args or {}
    if stochastic:
        noise_sampler = noise_sampler or default_noise_sampler(x, extra_args.get("seed"))
    s_in = x.new_ones(x.shape[0])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        x = fewstep_update(x, denoised, sigmas[i], sigmas[i + 1], noise_sampler)
    return x


@torch.no_grad()
def sample_fewstep_stochastic(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Self Forcing sampler: predict x0, re-noise to the next level with *fresh* noise; last x0 is the sample.

    x (B, ...) noised at sigmas[0]; sigmas (K+1,) ending at 0 → sample like x.
    """
    return _sample_fewstep(model, x, sigmas, extra_args, callback, disable, True, noise_sampler,
                           "sample_fewstep_stochastic")


@torch.no_grad()
def sample_fewstep_deterministic(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Deterministic few-step sampler (LightX2V style): re-use the predicted noise, i.e. an Euler step
    x ← x0 + σ_next·(x - x0)/σ. With many steps this is the plain Euler ODE sampler."""
    return _sample_fewstep(model, x, sigmas, extra_args, callback, disable, False, None,
                           "sample_fewstep_deterministic")


sample_euler = sample_fewstep_deterministic  # the same update; the name many-step users look for


def trajectory_recorder():
    """A callback and the list it fills with (σ, x_t, x0_pred) per step — the teacher's ODE trajectory."""
    states = []

    def callback(d):
        states.append((float(d["sigma"]), d["x"].detach().clone(), d["denoised"].detach().clone()))
    return callback, states
