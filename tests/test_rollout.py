"""Training rollouts against brute-force rollouts without a cache: Self Forcing semantics, the reference
rollout's own cache and noise coupling, bidirectional backward simulation."""
import pytest
import torch

from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.rollout import rollout_bidirectional, rollout_reference, rollout_self_forcing
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
from helpers import assert_close, brute_force_rollout, tiny_inputs


@pytest.fixture(scope="module")
def setup():
    model = build_model("tiny", seed=3)
    noise, ctx = tiny_inputs(model.cfg, frames=9)
    return model, noise, ctx


def recording(generator, draws):
    """step_noise for brute_force_rollout: fresh draws from `generator`, kept as {(chunk, i + 1): ε}."""
    def step_noise(c, i, x):
        draws[(c, i + 1)] = eps = torch.randn(x.shape, generator=generator)
        return eps
    return step_noise


@pytest.mark.parametrize("exit_index", [0, 2, 3])
def test_self_forcing_rollout_equals_a_brute_force_rollout_without_cache(setup, exit_index):
    """Each chunk: fresh re-noising up to the exit step, whose x0 is the output and the next chunks' clean context."""
    model, noise, ctx = setup
    sig = get_sigmas_fewstep(4)
    roll = rollout_self_forcing(model, noise, ctx, sig, exit_index, policy=CachePolicy.full(9),
                                generator=torch.Generator().manual_seed(2), grad=False)
    draws = {}
    with torch.no_grad():
        ref = brute_force_rollout(model, noise, ctx, sig, 3, exit_index=exit_index,
                                  step_noise=recording(torch.Generator().manual_seed(2), draws))
    assert_close(roll.x0, ref, 1e-5)
    assert roll.exit_sigma == float(sig[exit_index])
    assert roll.renoise.keys() == draws.keys() and all(torch.equal(roll.renoise[k], draws[k]) for k in draws)


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


def test_noise_aligned_reference_rollout_equals_a_brute_force_euler_and_shared_noise_rollout(setup):
    """Dense grid (8 steps) down to the student's exit level: the student's own draw at its grid points, Euler
    steps between them (docs/method.md §3), on its own history of dense-rollout outputs."""
    model, noise, ctx = setup
    sig4, sig8 = get_sigmas_fewstep(4), get_sigmas_fewstep(8)
    student = rollout_self_forcing(model, noise, ctx, sig4, 2, policy=CachePolicy.full(9), grad=False,
                                   generator=torch.Generator().manual_seed(5))
    ref = rollout_reference(model, noise, ctx, sig4, 2, sig8, student.renoise, policy=CachePolicy.full(9))

    def student_noise(c, i, x):   # dense index i+1 = 2k is the student's grid point k
        return student.renoise[(c, (i + 1) // 2)] if (i + 1) % 2 == 0 else None
    with torch.no_grad():
        brute = brute_force_rollout(model, noise, ctx, sig8, 3, exit_index=4, step_noise=student_noise)
    assert_close(ref, brute, 1e-5)
    assert float(sig8[4]) == pytest.approx(float(sig4[2]))


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


@pytest.mark.parametrize("exit_index", [0, 2])
def test_bidirectional_backward_simulation_equals_a_brute_force_one_chunk_rollout(setup, exit_index):
    """The whole clip as one chunk with no history: fresh re-noising up to the exit step, its x0 out."""
    model, noise, ctx = setup
    sig = get_sigmas_fewstep(3)
    roll = rollout_bidirectional(model, noise, ctx, sig, exit_index, generator=torch.Generator().manual_seed(1),
                                 grad=False)
    draws = {}
    with torch.no_grad():
        ref = brute_force_rollout(model, noise, ctx, sig, noise.shape[2], exit_index=exit_index,
                                  step_noise=recording(torch.Generator().manual_seed(1), draws))
    assert_close(roll.x0, ref, 1e-5)
    assert roll.renoise.keys() == draws.keys()
