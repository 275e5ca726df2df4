"""Tests of the toy world's oracle metrics: real clips score perfectly, each corruption is caught."""
import time

import numpy as np
import pytest
import torch

from comfyui_salt.toy.metrics import (clip_features, drift_curves, evaluate, fit_bounce_path, fit_sprites,
                                      format_table, frechet_distance, reference_features, score_table, toy_score)
from comfyui_salt.toy import corrupt
from comfyui_salt.toy.world import TOY_WORLD_PRESETS, reflect, sample_batch, trajectory, with_frames

CFG = TOY_WORLD_PRESETS["default"]
NUM = 48


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Run this module on one intra-op thread: the tensors are tiny, and on a shared busy machine
    extra threads only wait for cores (measured 4x slower), which would make the timing test flaky."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real():
    """(videos (48, 3, 12, 16, 16), captions, params) of real clips."""
    return sample_batch(CFG, 0, NUM)


@pytest.fixture(scope="module")
def ref_features():
    """Features of an independent batch of real clips (the Fréchet reference)."""
    return reference_features(CFG, 256, seed=1)


@pytest.fixture(scope="module")
def rows(real, ref_features):
    """score_table rows for real clips and each corruption, computed once."""
    videos, captions, params = real
    cases = {
        "real": (videos, captions),
        "blur": (corrupt.blur(videos, 1.0), captions),
        "frozen": (corrupt.freeze(videos), captions),
        "wrong_colour": (corrupt.recolour(CFG, params), captions),
        "noise": (corrupt.add_noise(videos, 0.5, seed=3), captions),
        "pure_noise": (corrupt.pure_noise(tuple(videos.shape), seed=4), captions),
        "flicker": (corrupt.background_flicker(CFG, videos, params, 0.15, seed=5), captions),
        "collapsed": (corrupt.collapse(videos), [captions[0]] * NUM),
        "jitter": (corrupt.jitter(CFG, params, 1.0, seed=6), captions),
    }
    return {k: score_table(v, c, CFG, ref_features) for k, v, c in ((k, *vc) for k, vc in cases.items())}


def test_the_fit_recovers_the_true_sprite_of_real_clips(real):
    videos, _, params = real
    fit = fit_sprites(videos, CFG)
    truth = np.stack([trajectory(CFG, p) for p in params])
    assert np.abs(fit.centre.numpy() - truth).max() < 0.05
    for name, index, names in (("shape", fit.shape_index, CFG.shape_names),
                               ("colour", fit.colour_index, CFG.colour_names),
                               ("background", fit.background_index, CFG.background_names)):
        want = torch.tensor([names.index(getattr(p, name)) for p in params])
        assert torch.equal(index, want[:, None].expand_as(index)), name
    assert fit.present.all()


def test_real_clips_score_near_perfect(rows):
    r = rows["real"]
    assert r["sharpness_error"] < 0.003
    assert r["adherence"] == 1.0
    assert r["smoothness_px"] < 0.02
    assert abs(r["dynamic_px"] - CFG.speed) < 0.03
    assert r["flicker"] < 1e-4
    assert r["frechet"] < 0.5
    assert r["toy_score"] > 97


def test_blurred_clips_lose_sharpness(rows):
    assert rows["blur"]["sharpness_error"] > 0.02 > 10 * rows["real"]["sharpness_error"]
    assert rows["blur"]["toy_score"] < rows["real"]["toy_score"] - 8


def test_frozen_clips_have_no_dynamic_degree(rows):
    assert rows["frozen"]["dynamic_px"] < 0.01 and rows["real"]["dynamic_px"] > 0.95
    assert rows["frozen"]["smoothness_px"] < 0.02, "standing still is smooth; only dynamic degree catches it"


def test_wrong_colour_clips_lose_adherence_and_nothing_else(rows):
    r, w = rows["real"], rows["wrong_colour"]
    assert w["colour_ok"] == 0.0 and w["adherence"] == pytest.approx(0.75)
    for k in ("sharpness_error", "smoothness_px", "dynamic_px", "flicker"):
        assert abs(w[k] - r[k]) < 1e-3, k


def test_noisy_clips_lose_sharpness_and_toy_score(rows):
    assert rows["noise"]["sharpness_error"] > 0.2
    assert rows["noise"]["toy_score"] < rows["real"]["toy_score"] - 30
    assert rows["pure_noise"]["sharpness_error"] > 0.4
    assert rows["pure_noise"]["toy_score"] < 20


def test_flickering_backgrounds_raise_flicker_but_not_sharpness_or_motion_errors(rows):
    r, f = rows["real"], rows["flicker"]
    assert f["flicker"] > 0.05 and r["flicker"] < 1e-4
    assert f["sharpness_error"] < 0.005 and f["smoothness_px"] < 0.02 and f["adherence"] == 1.0


def test_a_collapsed_batch_has_a_much_larger_frechet_distance(rows):
    assert rows["collapsed"]["frechet"] > max(3.0, 10 * rows["real"]["frechet"])
    assert rows["collapsed"]["sharpness_error"] < 0.003, "each collapsed clip is still a perfect clip"


def test_jittered_trajectories_lose_smoothness(rows):
    assert rows["jitter"]["smoothness_px"] > 0.7 > 30 * rows["real"]["smoothness_px"]
    assert rows["jitter"]["sharpness_error"] < 0.005, "a jittered sprite is still sharp"


def test_metrics_accept_long_rollouts_and_three_frame_clips():
    for num_frames in (36, 3):
        cfg = with_frames(CFG, num_frames)
        videos, captions, _ = sample_batch(cfg, 2, 8)
        m = evaluate(videos, captions, CFG)
        assert all(v.shape == (8,) for v in m.values())
        assert m["adherence"].min() == 1.0 and m["smoothness_px"].max() < 0.03 and m["sharpness_error"].max() < 0.005
        curves = drift_curves(videos, captions, CFG)
        assert all(c.shape == (8, num_frames) for c in curves.values())
    with pytest.raises(ValueError, match="videos"):
        evaluate(torch.zeros(2, 3, 2, 16, 16), ["a red disc moving left on a dark background"] * 2, CFG)
    with pytest.raises(ValueError, match="captions"):
        evaluate(videos, captions[:3], CFG)


def test_drift_curves_show_where_a_long_rollout_degrades():
    cfg = with_frames(CFG, 36)
    videos, captions, _ = sample_batch(cfg, 3, 8)
    degraded = videos.clone()
    degraded[:, :, 18:] = corrupt.blur(videos[:, :, 18:], 1.0)
    clean_curve = drift_curves(videos, captions, CFG)["sharpness_error"].mean(0)
    curve = drift_curves(degraded, captions, CFG)["sharpness_error"].mean(0)
    assert curve[:18].max() < 0.003 and clean_curve.max() < 0.003
    assert curve[18:].min() > 0.015


def test_bounce_path_fit_recovers_paths_with_several_bounces():
    rng = np.random.default_rng(0)
    lo, hi = rng.uniform(1.5, 3.6, 50), rng.uniform(12.4, 14.5, 50)
    p0, v = rng.uniform(lo, hi), rng.uniform(-2.0, 2.0, 50)
    t = np.arange(36)
    pos = reflect(p0[:, None] + v[:, None] * t, lo[:, None], hi[:, None])
    path, p0_fit, v_fit = fit_bounce_path(pos, lo, hi)
    assert np.abs(path - pos).max() < 1e-6
    np.testing.assert_allclose(np.abs(v_fit), np.abs(v), atol=1e-6)


def test_frechet_distance_matches_a_nonsymmetric_eigenvalue_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 0.5
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_sqrt = np.sqrt(np.linalg.eigvals(ca @ cb).real.clip(0)).sum()   # tr sqrtm(A B) from the eigenvalues of A B
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-8)
    assert frechet_distance(a, a) < 1e-8
    with pytest.raises(ValueError, match="clip_features"):
        frechet_distance(a, b[:, :4])


def test_frechet_distance_between_real_batches_is_small(real, ref_features):
    videos, _, _ = real
    other = reference_features(CFG, NUM, seed=7)
    assert frechet_distance(clip_features(videos, CFG), ref_features) < 0.5
    assert frechet_distance(other, ref_features) < 0.5


def test_toy_score_is_100_for_perfect_metrics_and_0_for_hopeless_ones():
    perfect = {"sharpness_error": np.zeros(2), "adherence": np.ones(2), "smoothness_px": np.zeros(2),
               "dynamic_px": np.full(2, CFG.speed), "flicker": np.zeros(2)}
    hopeless = {"sharpness_error": np.full(2, 10.0), "adherence": np.zeros(2), "smoothness_px": np.full(2, 100.0),
                "dynamic_px": np.zeros(2), "flicker": np.full(2, 10.0)}
    np.testing.assert_allclose(toy_score(perfect, CFG), 100.0)
    np.testing.assert_allclose(toy_score(perfect, CFG, frechet=0.0), 100.0)
    assert toy_score(hopeless, CFG, frechet=1e3).max() < 1.0
    with pytest.raises(ValueError, match="evaluate"):
        toy_score({"adherence": np.ones(2)}, CFG)


def test_format_table_prints_a_markdown_row_per_label():
    text = format_table({"real": {"a": 1.0, "b": 2}, "blur": {"a": 0.5}})
    lines = text.splitlines()
    assert lines[0] == "| | a | b |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| real | 1.000 | 2 |" and lines[3] == "| blur | 0.500 |  |"


def test_a_full_metrics_pass_over_64_clips_is_fast():
    videos, captions, _ = sample_batch(CFG, 5, 64)
    ref = reference_features(CFG, 64, seed=8)
    score_table(videos, captions, CFG, ref)                                     # warm-up
    start = time.perf_counter()
    score_table(videos, captions, CFG, ref)
    assert time.perf_counter() - start < 2.0


def test_first_frame_agreement_is_perfect_for_the_clips_own_frame_and_low_for_another_clips(real):
    from comfyui_salt.toy.metrics.oracle import first_frame_agreement
    videos, _, params = real
    own = first_frame_agreement(videos[:, :, 1:], videos[:, :, :1], CFG)
    for key in ("colour_ok", "shape_ok", "background_ok"):
        assert own[key].min() == 1.0, key
    assert np.allclose(own["start_px"], CFG.speed, atol=0.05)          # one step of the world's motion
    other = first_frame_agreement(videos[:, :, 1:], videos.roll(1, 0)[:, :, :1], CFG)
    expected_colour = np.mean([a.colour != b.colour for a, b in zip(params, params[-1:] + params[:-1])])
    assert other["colour_ok"].mean() == pytest.approx(1 - expected_colour, abs=1e-9)
    assert np.median(other["start_px"]) > 3 * CFG.speed
