"""Few-step samplers: the k-diffusion contract, and equality with diffusers' flow-match scheduler."""
import inspect

import pytest
import torch

from comfyui_salt.salt_core import samplers as SM
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep

SAMPLERS = [SM.sample_fewstep_stochastic, SM.sample_fewstep_deterministic]


class LinearDenoiser:
    """An analytic denoiser x0 = a(σ)·x + b with a non-trivial σ dependence; records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, **extra):
        self.calls.append((sigma.clone(), extra))
        s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (1 - 0.5 * s) * x + 0.1 * s


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_follows_the_k_diffusion_contract(sampler):
    params = list(inspect.signature(sampler).parameters)
    assert params[:6] == ["model", "x", "sigmas", "extra_args", "callback", "disable"]
    model, seen = LinearDenoiser(), []
    sigmas = get_sigmas_fewstep(4).float()
    x = torch.randn(2, 3, 4, 4)
    out = sampler(model, x, sigmas, extra_args={"seed": 3, "cond": "c"}, callback=seen.append, disable=True)
    assert out.shape == x.shape and len(seen) == 4 and len(model.calls) == 4
    assert set(seen[0]) >= {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert [d["i"] for d in seen] == [0, 1, 2, 3]
    assert model.calls[1][0].shape == (2,) and model.calls[1][1]["cond"] == "c"
    # deterministic given the seed
    again = sampler(LinearDenoiser(), x, sigmas, extra_args={"seed": 3, "cond": "c"}, disable=True)
    assert torch.equal(out, again)


def test_stochastic_sampler_equals_diffusers_flow_match_scheduler_with_stochastic_sampling():
    from diffusers import FlowMatchEulerDiscreteScheduler
    sigmas = get_sigmas_fewstep(4).float()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = SM.sample_fewstep_stochastic(LinearDenoiser(), x, sigmas, extra_args={"seed": 7}, disable=True)

    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, stochastic_sampling=True)
    sched.set_timesteps(sigmas=sigmas[:-1].tolist())
    assert torch.allclose(sched.sigmas, sigmas, atol=1e-6)
    gen, sample, model = torch.Generator().manual_seed(7), x.clone(), LinearDenoiser()
    for t in sched.timesteps:
        sigma = t / 1000
        x0 = model(sample, sigma.view(1).expand(2))
        v = (sample - x0) / sigma
        sample = sched.step(v, t, sample, generator=gen, return_dict=False)[0]
    # diffusers returns x_next computed as x0 + ... at the end; its last step yields x0 exactly
    assert torch.allclose(ours, sample, atol=1e-5), (ours - sample).abs().max()


def test_deterministic_sampler_equals_diffusers_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    sigmas = get_sigmas_fewstep(3).float()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = SM.sample_fewstep_deterministic(LinearDenoiser(), x, sigmas, disable=True)
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sched.set_timesteps(sigmas=sigmas[:-1].tolist())
    sample, model = x.clone(), LinearDenoiser()
    for t in sched.timesteps:
        sigma = t / 1000
        v = (sample - model(sample, sigma.view(1).expand(2))) / sigma
        sample = sched.step(v, t, sample, return_dict=False)[0]
    assert torch.allclose(ours, sample, atol=1e-5)


def test_trajectory_recorder_returns_the_teacher_trajectory():
    callback, states = SM.trajectory_recorder()
    sigmas = get_sigmas_fewstep(4).float()
    SM.sample_euler(LinearDenoiser(), torch.randn(1, 2, 2, 2), sigmas, callback=callback, disable=True)
    assert [round(s, 4) for s, _, _ in states] == [round(float(s), 4) for s in sigmas[:-1]]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_split_at_the_last_step_leaves_one_level_and_its_half_returns_the_latent(sampler):
    """ComfyUI's SplitSigmas(step=K) on a K-step schedule gives [σ_0..0] and [0]: the second half has no step, and
    the sampler returns its latent as ComfyUI's own samplers do (it was refused as "at least two levels")."""
    sigmas = get_sigmas_fewstep(4).float()
    high, low = sigmas[:5], sigmas[4:]
    x = torch.randn(2, 3, 4, 4)
    out = sampler(LinearDenoiser(), x, high, extra_args={"seed": 3}, disable=True)
    model = LinearDenoiser()
    assert torch.equal(sampler(model, out, low, extra_args={"seed": 3}, disable=True), out) and not model.calls
    for lone in (sigmas[:0], sigmas[:1]):   # nothing, or a lone level above 0: its noisy input is no sample
        with pytest.raises(ValueError, match="at least two finite noise levels"):
            sampler(LinearDenoiser(), x, lone, disable=True)
