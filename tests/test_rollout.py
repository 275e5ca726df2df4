"""Training rollouts: Self Forcing semantics, the reference rollout's own cache and noise coupling."""
import pytest
import torch

from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.rollout import rollout_bidirectional, rollout_reference, rollout_self_forcing
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
from comfyui_salt.salt_core.streaming import stream_video
from helpers import assert_close, tiny_inputs


@pytest.fixture(scope="module")
def setup():
    model = build_model("tiny", seed=3)
    noise, ctx = tiny_inputs(model.cfg, frames=9)
    return model, noise, ctx


def test_last_step_exit_equals_the_streaming_sampler(setup):
    """With the exit at the last step, a Self Forcing rollout is exactly inference-time streaming."""
    model, noise, ctx = setup
    sig = get_sigmas_fewstep(4)
    roll = rollout_self_forcing(model, noise, ctx, sig, 3, policy=CachePolicy.full(9),
                                generator=torch.Generator().manual_seed(2), grad=False)
    with torch.no_grad():
        ref = stream_video(model, noise, ctx, sig, policy=CachePolicy.full(9), generator=torch.Generator().manual_seed(2))
    assert_close(roll.x0, ref, 1e-5)


def test_gradient_flows_only_through_the_exit_step(setup):
    model, noise, ctx = setup
    roll = rollout_self_forcing(model, noise, ctx, get_sigmas_fewstep(4), 2, policy=CachePolicy.rolling(6),
                                generator=torch.Generator().manual_seed(0))
    assert roll.x0.requires_grad and roll.exit_sigma == pytest.approx(float(get_sigmas_fewstep(4)[2]))
    roll.x0.square().mean().backward()
    assert model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
    assert len(roll.renoise) == 3 * 2   # two re-noise draws per chunk before the exit


def test_on_exit_gets_a_velocity_function_on_the_same_cache_that_leaves_it_unchanged(setup):
    model, noise, ctx = setup
    seen = []

    def on_exit(chunk, x_s, v1, velocity_fn):
        with torch.no_grad():
            a = velocity_fn(x_s, 0.5)
            b = velocity_fn(x_s, 0.5)
        seen.append((chunk, torch.equal(a, b), v1.requires_grad))
    rollout_self_forcing(model, noise, ctx, get_sigmas_fewstep(4), 1, policy=CachePolicy.full(9), on_exit=on_exit,
                         generator=torch.Generator().manual_seed(0))
    assert seen == [(0, True, True), (1, True, True), (2, True, True)]


def test_reference_rollout_on_the_student_grid_with_aligned_noise_reproduces_the_student(setup):
    model, noise, ctx = setup
    sig = get_sigmas_fewstep(4)
    student = rollout_self_forcing(model, noise, ctx, sig, 2, policy=CachePolicy.full(9), grad=False,
                                   generator=torch.Generator().manual_seed(5))
    ref = rollout_reference(model, noise, ctx, sig, 2, sig, student.renoise, policy=CachePolicy.full(9))
    assert_close(ref, student.x0, 1e-5)


def test_reference_rollout_uses_its_own_cache_and_the_denser_grid(setup):
    model, noise, ctx = setup
    sig2, sig4 = get_sigmas_fewstep(2), get_sigmas_fewstep(4)
    student_cache = model.new_cache(2, CachePolicy.full(9), (8, 8))
    student = rollout_self_forcing(model, noise, ctx, sig2, 1, policy=CachePolicy.full(9), grad=False,
                                   generator=torch.Generator().manual_seed(5), cache=student_cache)
    before = (student_cache.k.clone(), student_cache.v.clone(), student_cache.end)
    ref = rollout_reference(model, noise, ctx, sig2, 1, sig4, student.renoise, policy=CachePolicy.full(9))
    assert torch.equal(student_cache.k, before[0]) and torch.equal(student_cache.v, before[1])
    assert student_cache.end == before[2]
    assert ref.shape == student.x0.shape and (ref - student.x0).abs().max() > 1e-4   # a different (denser) path
    with pytest.raises(ValueError, match="does not contain"):
        rollout_reference(model, noise, ctx, sig2, 1, get_sigmas_fewstep(3), student.renoise, policy=CachePolicy.full(9))


def test_bidirectional_backward_simulation_matches_the_few_step_sampler_at_the_last_step(setup):
    from comfyui_salt.salt_core.denoiser import FlowDenoiser
    from comfyui_salt.salt_core.samplers import sample_fewstep_stochastic
    model, noise, ctx = setup
    sig = get_sigmas_fewstep(3)
    g = torch.Generator().manual_seed(1)
    roll = rollout_bidirectional(model, noise, ctx, sig, 2, generator=g, grad=False)
    with torch.no_grad():
        g2 = torch.Generator().manual_seed(1)
        ref = sample_fewstep_stochastic(FlowDenoiser(model, ctx), noise, sig, disable=True,
                                        noise_sampler=lambda *_: torch.randn(noise.shape, generator=g2))
    assert_close(roll.x0, ref, 1e-5)
