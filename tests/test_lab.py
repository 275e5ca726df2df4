"""The method lab's exact checks: closed-form posterior against dense algebra and Monte Carlo, the
exact teacher on our samplers, rollouts and score nets, and the exact metrics (small worlds, CPU)."""
import math

import pytest
import torch

from comfyui_salt.salt_core.denoiser import FlowDenoiser
from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.toy.lab import ExactTeacher, LabWorld, posterior
from comfyui_salt.toy.lab.metrics import (assign_modes, chunk_modes, coverage_error,
                                                evaluate_clips, mode_switches, semigroup_hook, whitened_coordinates,
                                                within_mode_variance)
from comfyui_salt.salt_core.metrics.bootstrap import nested_bootstrap
from comfyui_salt.salt_core.metrics.semigroup import semigroup_defect
from comfyui_salt.salt_core.model import BlockCausal
from comfyui_salt.salt_core.rollout import rollout_reference, rollout_self_forcing
from comfyui_salt.salt_core.samplers import sample_euler, sample_fewstep_stochastic, trajectory_recorder
from comfyui_salt.salt_core.schedules import add_noise, get_sigmas_fewstep, get_sigmas_uniform
from comfyui_salt.salt_core.scorenet import ScoreNet
from comfyui_salt.salt_core.streaming import stream_video
from helpers import assert_close


@pytest.fixture(scope="module")
def tiny():
    world = LabWorld("tiny")
    return world, ExactTeacher(world)


def _noised(world, caption, sigma, seed):
    """Data clips (B, 3, F, H, W), their frames y noised at per-frame sigma (B, F) and the clean frames."""
    g = torch.Generator().manual_seed(seed)
    video, _ = world.sample(caption, generator=g)
    x0 = world.to_frames(video)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s = sigma.unsqueeze(-1)
    return (1 - s) * x0 + s * eps, x0


def _dense_posterior(world, y, sigma, log_prior):
    """Reference: per mode the full (nD × nD) Gaussian, solved densely; returns x0 (n·D,), log p(y)."""
    n, D = y.shape
    mean, U = world.basis(range(n))
    a = (1 - sigma).repeat_interleave(D)
    s = sigma.repeat_interleave(D)
    joints, x0s = [], []
    for k in range(world.num_modes):
        if not math.isfinite(log_prior[k]):
            continue
        Uk = U[k].reshape(n * D, -1)
        cov = Uk @ Uk.T + world.cfg.tau ** 2 * torch.eye(n * D, dtype=torch.float64)
        obs = a[:, None] * cov * a[None, :] + torch.diag(s ** 2)
        r = y.reshape(-1) - a * mean[k].reshape(-1)
        sol = torch.linalg.solve(obs, r)
        joints.append(log_prior[k] - 0.5 * (r @ sol + torch.linalg.slogdet(obs)[1] + n * D * math.log(2 * math.pi)))
        x0s.append(mean[k].reshape(-1) + cov @ (a * sol))
    joints = torch.stack(joints)
    return (torch.softmax(joints, 0)[:, None] * torch.stack(x0s)).sum(0), torch.logsumexp(joints, 0)


def test_woodbury_posterior_equals_dense_gaussian_algebra_at_mixed_per_frame_levels(tiny):
    world, _ = tiny
    caption = torch.tensor([0, -1])
    sigma = torch.tensor([[0.0, 0.0, 0.5, 0.7, 1.0, 1.0], [1.0, 0.95, 0.9, 0.6, 0.2, 0.05]], dtype=torch.float64)
    y, _ = _noised(world, caption, sigma, seed=1)
    post = posterior(world, y, sigma, range(6), world.log_prior(caption))
    for b in range(2):
        x0, evidence = _dense_posterior(world, y[b], sigma[b], world.log_prior(caption)[b])
        assert_close(post.x0[b].reshape(-1), x0, 1e-9, f"x0 of clip {b}")
        assert abs(post.log_evidence[b].item() - evidence.item()) < 1e-6 * abs(evidence.item())


@pytest.fixture(scope="module")
def data_pool(tiny):
    """8000 clips of caption 0 from the tiny world, (N, n·D) float64."""
    world, _ = tiny
    pool, _ = world.sample(torch.zeros(8000, dtype=torch.long), generator=torch.Generator().manual_seed(3))
    return world.to_frames(pool).flatten(1)


@pytest.mark.parametrize("level", [0.8, 0.9])
def test_closed_form_denoiser_matches_a_monte_carlo_posterior_over_data_samples(tiny, data_pool, level):
    world, _ = tiny
    caption = torch.zeros(3, dtype=torch.long)
    sigma = torch.full((3, 6), level, dtype=torch.float64)
    y, _ = _noised(world, caption, sigma, seed=2)
    exact = posterior(world, y, sigma, range(6), world.log_prior(caption)).x0.flatten(1)
    prior_mean = data_pool.mean(0)
    for b in range(3):
        # importance weights of the data samples under the observation y = (1-σ)x0 + σε
        w = torch.softmax(-((y[b].reshape(1, -1) - (1 - level) * data_pool) ** 2).sum(1) / (2 * level ** 2), 0)
        assert 1.0 / (w ** 2).sum() > 500, "too few effective samples for a Monte-Carlo check"
        mc = w @ data_pool
        se = ((w[:, None] ** 2) * (data_pool - mc) ** 2).sum(0).mean().sqrt()   # RMS standard error
        tol = 3 * se + 2e-3
        err = (mc - exact[b]).pow(2).mean().sqrt()
        assert err <= tol, f"MC vs exact RMS {err:.4f} > {tol:.4f} at sigma={level}"
        # the check can fail: the posterior is far from the prior mean, relative to the tolerance
        assert (exact[b] - prior_mean).pow(2).mean().sqrt() > 2 * tol


def test_causal_cache_conditional_equals_the_joint_denoiser_with_clean_past_and_unseen_future(tiny):
    world, teacher = tiny
    caption = torch.tensor([0, 1])
    ctx = world.encode(caption)
    video, _ = world.sample(caption, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(5)
    chunk = add_noise(video[:, :, 3:6].float(), torch.randn(2, 3, 3, 8, 8, generator=g), 0.6)
    cache = teacher.new_cache(2, CachePolicy.full(6), (8, 8))
    teacher(video[:, :, :3].float(), torch.zeros(2, 3), ctx, cache=cache, start_frame=0)   # clean past written
    v = teacher(chunk, torch.full((2,), 600.0), ctx, cache=cache, start_frame=3, write_cache=False)
    x0_cache = chunk.double() - 0.6 * v.double()
    # the joint denoiser over all frames: past at sigma 0, the chunk at 0.6 (here the whole clip)
    joint_in = torch.cat([video[:, :, :3].float(), chunk], 2)
    t = torch.tensor([[0.0] * 3 + [600.0] * 3] * 2)
    v_joint = teacher(joint_in, t, ctx)
    assert_close(x0_cache, (joint_in.double() - t.view(2, 1, 6, 1, 1) / 1000 * v_joint.double())[:, :, 3:], 1e-6,
                 "cache conditional vs joint")
    # and frames beyond the chunk at sigma 1 carry no information: a 2-chunk joint with an unseen 3rd
    junk = torch.randn(2, 3, 3, 8, 8, generator=g)
    t3 = torch.tensor([[0.0] * 3 + [600.0] * 3 + [1000.0] * 3] * 2)
    v3 = teacher(torch.cat([joint_in, junk], 2), t3, ctx)
    assert_close(joint_in[:, :, 3:].double() - 0.6 * v3[:, :, 3:6].double(), x0_cache, 1e-6, "unseen future")


def test_teacher_forcing_score_net_equals_the_cache_conditional_chunk_by_chunk(tiny):
    world, teacher = tiny
    caption = torch.tensor([1, 0])
    ctx = world.encode(caption)
    clean, _ = world.sample(caption, generator=torch.Generator().manual_seed(6))
    clean = clean.float()
    noisy = add_noise(clean, torch.randn(clean.shape, generator=torch.Generator().manual_seed(7)), 0.8)
    sigma = torch.full((2,), 0.8, dtype=torch.float64)
    x0_tf = ScoreNet(teacher, "teacher_forcing").x0(noisy, sigma, ctx, clean=clean)
    cache = teacher.new_cache(2, CachePolicy.full(6), (8, 8))
    for f0 in (0, 3):
        v = teacher(noisy[:, :, f0:f0 + 3], torch.full((2,), 800.0), ctx, cache=cache, start_frame=f0, write_cache=False)
        assert_close(x0_tf[:, :, f0:f0 + 3], noisy[:, :, f0:f0 + 3].double() - 0.8 * v.double(), 1e-5, f"chunk {f0}")
        teacher(clean[:, :, f0:f0 + 3], torch.zeros(2), ctx, cache=cache, start_frame=f0)
    # block-causal over the whole noisy clip: chunk 1 sees the *noisy* chunk 0, not the clean one
    v_bc = teacher(noisy, torch.full((2,), 800.0), ctx, block_causal=BlockCausal(3))
    v_bi = teacher(noisy, torch.full((2,), 800.0), ctx)
    assert_close(v_bc[:, :, 3:], v_bi[:, :, 3:], 1e-6, "last chunk sees everything")
    assert (v_bc[:, :, :3] - v_bi[:, :, :3]).abs().max() > 1e-3


def test_cfg_scale_zero_is_the_unconditional_mixture_and_one_the_conditional(tiny):
    world, teacher = tiny
    caption = torch.tensor([0, 1])
    ctx, empty = world.encode(caption), world.encode(torch.tensor([-1, -1]))
    x = torch.randn(2, 3, 6, 8, 8, generator=torch.Generator().manual_seed(8))
    sigma = torch.tensor(0.7)
    cond = FlowDenoiser(teacher, ctx)(x, sigma)
    assert_close(FlowDenoiser(teacher, ctx, empty, cfg_scale=1.0)(x, sigma), cond, 1e-6, "cfg 1")
    uncond = FlowDenoiser(teacher, ctx, empty, cfg_scale=0.0)(x, sigma)
    # independent: p(c | y) from each caption's evidence, then the per-caption denoisers mixed
    y, s = world.to_frames(x), torch.full((2, 6), 0.7, dtype=torch.float64)
    per = [posterior(world, y, s, range(6), world.log_prior(torch.full((2,), c))) for c in (0, 1)]
    wc = torch.softmax(torch.stack([p.log_evidence for p in per], 1), 1)      # uniform caption prior
    mix = wc[:, 0, None, None] * per[0].x0 + wc[:, 1, None, None] * per[1].x0
    assert_close(world.to_frames(uncond), mix, 1e-5, "unconditional")
    assert (uncond - cond).abs().max() > 1e-2


def test_context_round_trips_and_foreign_contexts_are_refused(tiny):
    world, _ = tiny
    caption = torch.tensor([1, -1, 0])
    assert world.decode(world.encode(caption)).tolist() == [1, -1, 0]
    with pytest.raises(ValueError, match="LabWorld.encode"):
        world.decode(torch.randn(1, 8, 32))


def test_exact_teacher_runs_our_rollouts_streams_and_semigroup_metric_unchanged(tiny):
    world, teacher = tiny
    caption = torch.tensor([0, 1])
    ctx = world.encode(caption)
    noise = torch.randn(2, 3, 6, 8, 8, generator=torch.Generator().manual_seed(9))
    sig = get_sigmas_fewstep(4, 3.0)
    out = rollout_self_forcing(teacher, noise, ctx, sig, exit_index=3, policy=CachePolicy.full(6), grad=False,
                               generator=torch.Generator().manual_seed(1))
    assert out.x0.shape == noise.shape and torch.isfinite(out.x0).all()
    ref = rollout_reference(teacher, noise, ctx, sig, 3, sig, out.renoise, policy=CachePolicy.full(6))
    assert_close(ref, out.x0, 1e-5, "reference rollout on the student grid reproduces the student")
    long = stream_video(teacher, torch.randn(2, 3, 12, 8, 8), ctx, get_sigmas_uniform(4, 3.0),
                        policy=CachePolicy.rolling(6), cfg_scale=2.0, uncond_context=world.encode(torch.tensor([-1, -1])))
    assert long.shape[2] == 12 and torch.isfinite(long).all()
    cb, states = trajectory_recorder()
    sample_euler(FlowDenoiser(teacher, ctx), noise, sig, callback=cb, disable=True)
    d = semigroup_defect(semigroup_hook(teacher, ctx), [(s, x) for s, x, _ in states], sig)
    assert 0 < d < 1


def test_many_euler_steps_reproduce_the_data_metrics_and_one_step_loses_them(tiny):
    world, teacher = tiny
    caption = torch.arange(64) % 2
    ctx = world.encode(caption)
    noise = torch.randn(64, 3, 6, 8, 8, generator=torch.Generator().manual_seed(10))
    data, _ = world.sample(caption, generator=torch.Generator().manual_seed(11))
    m_data = evaluate_clips(world, data, caption)
    ode = sample_euler(FlowDenoiser(teacher, ctx), noise, get_sigmas_uniform(100, 1.0), disable=True)
    m_ode = evaluate_clips(world, ode, caption)
    # sampling error of var_ratio ~ sqrt(2 / (r (n - modes))) ≈ 0.04; Euler's own bias at 100 steps ≈ -0.05
    for m in (m_data, m_ode):
        assert 0.85 < m["var_ratio"] < 1.15, m
        assert m["coverage"] < 0.15 and m["mean_err"] < 0.04 and m["switch_clips"] == 0, m
    assert abs(m_ode["loglik_per_dim"] - m_data["loglik_per_dim"]) < 0.1
    one = sample_fewstep_stochastic(FlowDenoiser(teacher, ctx), noise, get_sigmas_uniform(1, 3.0), disable=True)
    assert evaluate_clips(world, one, caption)["var_ratio"] < 0.3


def test_metrics_are_two_sided_and_count_switches(tiny):
    world, _ = tiny
    caption = torch.zeros(40, dtype=torch.long)
    data, mode = world.sample(caption, generator=torch.Generator().manual_seed(12))
    found, _, log_ev = assign_modes(world, data, caption)
    assert (found == mode).all()
    mean, _ = world.basis(range(6))
    smooth = world.to_video(mean[mode])                              # every clip at its mode mean
    noisy = data + 0.3 * torch.randn(data.shape, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    w_data = whitened_coordinates(world, data, mode)
    assert within_mode_variance(whitened_coordinates(world, smooth, mode), mode) < 1e-6
    assert within_mode_variance(whitened_coordinates(world, noisy, mode), mode) > 1.5
    # pairs of different clips: a clip repeated (a bootstrap draw) does not shrink the variance
    assert abs(within_mode_variance(w_data, mode, torch.full((40,), 3)) - within_mode_variance(w_data, mode)) < 1e-9
    # the likelihood rewards the over-smoothed clips: never read it alone
    assert assign_modes(world, smooth, caption)[2].mean() > log_ev.mean()
    assert coverage_error(world, torch.full_like(mode, int(mode[0])), caption) > 0.5
    # a clip whose second chunk comes from another mode switches once
    other = (mode + 1) % 4
    spliced = torch.cat([data[:, :, :3], world.to_video(mean[other])[:, :, 3:]], 2)
    assert mode_switches(chunk_modes(world, spliced, caption)).tolist() == [1] * 40
    assert mode_switches(chunk_modes(world, data, caption)).sum() == 0
    full = within_mode_variance(w_data, mode)
    ci = nested_bootstrap(lambda draw: within_mode_variance(w_data, mode, draw[0][1]), [40], 100)
    assert ci.lo < full < ci.hi and ci.mean == full and 0.6 < full < 1.4


def test_a_lab_run_that_evaluates_needs_clips_of_whole_mode_chunks_and_one_that_does_not_takes_any_length():
    """The lab's metrics read a mode per chunk of its law (3 frames): a 7-frame bidirectional run is refused by
    the world check naming num_frames and eval_every (it used to fail at its first evaluation); without
    evaluations it is accepted."""
    from comfyui_salt.toy.jobs import check_distill_config
    from comfyui_salt.training.distill_config import get_preset
    kw = dict(teacher="exact", student_kind="bidirectional", num_frames=7)
    with pytest.raises(ValueError, match=r"DistillConfig.num_frames=7; the world 'lab:default' measures its modes in "
                                         r"chunks of 3 frames .*eval_every=50\): set num_frames=6 or 9, or eval_every=0"):
        check_distill_config(get_preset("lab-bidir-dmd", **kw))
    check_distill_config(get_preset("lab-bidir-dmd", eval_every=0, **kw))
