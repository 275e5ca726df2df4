"""Tests of the toy world (rendering, trajectories, captions, corruptions) and the toy text encoder."""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_salt.toy import corrupt
from comfyui_salt.toy.text import ToyTextEncoder
from comfyui_salt.toy.world import (DIRECTION_VECTORS, TOY_WORLD_PRESETS, ToyWorldConfig, caption, coverage,
                                              parse_caption, render, sample_batch, sample_params, trajectory,
                                              with_frames)

CFG = TOY_WORLD_PRESETS["default"]


def simulate_bounces(start, velocity, lo, hi, num_frames):
    """Step-by-step reference: move, and mirror position and velocity at a crossed wall (F, 2)."""
    pos, vel = np.array(start, dtype=np.float64), np.array(velocity, dtype=np.float64)
    out = [pos.copy()]
    for _ in range(num_frames - 1):
        pos = pos + vel
        for a in range(2):
            while pos[a] > hi[a] or pos[a] < lo[a]:
                if pos[a] > hi[a]:
                    pos[a], vel[a] = 2 * hi[a] - pos[a], -vel[a]
                else:
                    pos[a], vel[a] = 2 * lo[a] - pos[a], -vel[a]
        out.append(pos.copy())
    return np.stack(out)


def test_videos_use_the_latent_layout_and_stay_in_range():
    videos, captions, params = sample_batch(CFG, 0, 5)
    assert videos.shape == (5, 3, 12, 16, 16) and videos.dtype == torch.float32
    assert videos.min() >= -1 and videos.max() <= 1
    assert len(captions) == len(params) == 5


def test_rendering_is_deterministic_from_a_seed_and_from_params():
    a, ca, pa = sample_batch(CFG, 123, 8)
    b, cb, pb = sample_batch(CFG, np.random.default_rng(123), 8)
    c, _, _ = sample_batch(CFG, 124, 8)
    assert torch.equal(a, b) and ca == cb and pa == pb
    assert torch.equal(render(CFG, pa), a)
    assert not torch.equal(a, c)


def test_captions_describe_the_params_and_parse_back():
    for p in sample_params(CFG, 3, 50):
        text = caption(p)
        assert text == f"a {p.colour} {p.shape} moving {p.direction} on a {p.background} background"
        assert parse_caption(CFG, text) == {"colour": p.colour, "shape": p.shape, "direction": p.direction,
                                            "background": p.background}
    with pytest.raises(ValueError, match="colour word"):
        parse_caption(CFG, "a purple disc moving left on a dark background")


def test_sampling_covers_every_shape_colour_direction_and_background():
    params = sample_params(CFG, 0, 400)
    assert {p.shape for p in params} == set(CFG.shape_names)
    assert {p.colour for p in params} == set(CFG.colour_names)
    assert {p.direction for p in params} == set(CFG.directions)
    assert {p.background for p in params} == set(CFG.background_names)


def test_box_coverage_matches_brute_force_supersampling():
    rng = np.random.default_rng(0)
    centres = torch.tensor(rng.uniform(4, 12, size=(6, 2)), dtype=torch.float32)
    s = 32
    sub = (torch.arange(16 * s, dtype=torch.float32) + 0.5) / s                    # subsample coordinates
    for name, _, hw, hh in [sh for sh in CFG.shapes if sh[1] == "box"]:
        inside = (((sub[None, None, :] - centres[:, 0, None, None]).abs() <= hw)
                  & ((sub[None, :, None] - centres[:, 1, None, None]).abs() <= hh)).float()
        brute = inside.reshape(6, 16, s, 16, s).mean((2, 4))
        assert (coverage(CFG, name, centres) - brute).abs().max() < 2.5 / s, name


def test_disc_coverage_has_the_area_of_its_radius():
    cov = coverage(CFG, "disc", torch.tensor([[8.0, 8.0], [7.3, 9.6]]))
    assert torch.allclose(cov.sum((1, 2)), torch.full((2,), np.pi * 2.6 ** 2), rtol=0.03)  # a ramp, not exact


def test_trajectory_matches_a_step_by_step_bouncing_simulation():
    for cfg in (CFG, TOY_WORLD_PRESETS["fast"], ToyWorldConfig(subpixel_starts=True, speed=1.3)):
        for p in sample_params(cfg, 5, 40):
            (lx, hx), (ly, hy) = cfg.bounds(p.shape)
            ref = simulate_bounces(p.start, p.velocity(), (lx, ly), (hx, hy), 60)
            np.testing.assert_allclose(trajectory(cfg, p, 60), ref, atol=1e-9)


def test_bounces_keep_the_whole_sprite_inside_the_frame():
    cfg = with_frames(CFG, 40)
    videos, _, params = sample_batch(cfg, 11, 24)
    palette, bgs = cfg.palette_tensor(), cfg.background_tensor()
    for b, p in enumerate(params):
        path = trajectory(cfg, p)
        (lx, hx), (ly, hy) = cfg.bounds(p.shape)
        assert path[:, 0].min() >= lx and path[:, 0].max() <= hx and path[:, 1].min() >= ly and path[:, 1].max() <= hy
        motion = np.abs(np.diff(path, axis=0)).sum(1)
        assert np.any(np.diff(np.sign(np.diff(path[:, 0] + path[:, 1]))) != 0), "every 40-frame clip bounces"
        assert np.allclose(motion, p.speed) or p.shape == "disc"   # boxes bounce exactly on the wall
        s = palette[cfg.colour_names.index(p.colour)]
        g = bgs[cfg.background_names.index(p.background)]
        mass = torch.einsum("cfhw,c->f", videos[b] - g[:, None, None, None], s - g) / ((s - g) ** 2).sum()
        centred = path + np.round(8.0 - path)          # same sub-pixel offset, far from every wall
        unclipped = coverage(cfg, p.shape, torch.tensor(centred)).sum((1, 2))
        assert torch.allclose(mass, unclipped, atol=1e-3), "sprite mass is never clipped by the frame"


def test_the_caption_direction_is_the_motion_of_the_first_frames():
    for cfg in (CFG, TOY_WORLD_PRESETS["fast"]):
        k = cfg.clear_frames - 1
        for p in sample_params(cfg, 9, 300):
            travel = trajectory(cfg, p)[k] - trajectory(cfg, p)[0]
            np.testing.assert_allclose(travel, k * cfg.speed * np.array(DIRECTION_VECTORS[p.direction]), atol=1e-9)


def test_the_sanity_preset_is_one_yellow_square_moving_right_on_dark():
    params = sample_params(TOY_WORLD_PRESETS["sanity"], 0, 20)
    assert {(p.shape, p.colour, p.direction, p.background) for p in params} == {("square", "yellow", "right", "dark")}


def test_world_config_rejects_unknown_keys_and_impossible_worlds():
    with pytest.raises(ValueError, match="sped"):
        ToyWorldConfig.from_dict({"sped": 2.0})
    with pytest.raises(ValueError, match="speed"):
        ToyWorldConfig(speed=8.0)
    with pytest.raises(ValueError, match="kind"):
        ToyWorldConfig(shapes=(("blob", "star", 2.0, 2.0),))
    assert ToyWorldConfig.from_dict({"speed": 2.0}) == TOY_WORLD_PRESETS["fast"]


def test_corruptions_keep_shape_and_range_and_are_seeded():
    videos, _, params = sample_batch(CFG, 0, 4)
    outs = [corrupt.blur(videos), corrupt.freeze(videos), corrupt.add_noise(videos, 0.5, seed=1),
            corrupt.recolour(CFG, params), corrupt.background_flicker(CFG, videos, params, seed=1),
            corrupt.collapse(videos), corrupt.jitter(CFG, params, seed=1)]
    for out in outs:
        assert out.shape == videos.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(corrupt.jitter(CFG, params, seed=1), outs[-1])
    assert not torch.equal(corrupt.jitter(CFG, params, seed=2), outs[-1])


def test_text_encoder_is_deterministic_and_zero_padded():
    captions = [caption(p) for p in sample_params(CFG, 0, 6)]
    enc = ToyTextEncoder(text_dim=32, seed=0, max_tokens=8)
    a, b = enc.encode(captions), ToyTextEncoder(text_dim=32, seed=0, max_tokens=8).encode(captions)
    assert a.shape == (6, 8, 32) and torch.equal(a, b)
    assert not torch.equal(a, ToyTextEncoder(seed=1).encode(captions))
    assert (a[:, 4:] == 0).all() and (a[:, :4].abs().sum(-1) > 0).all()
    assert torch.equal(enc.empty(3), torch.zeros(3, 8, 32))
    assert torch.equal(enc.encode([""]), torch.zeros(1, 8, 32))


def test_text_encoder_tells_every_slot_and_word_apart():
    enc = ToyTextEncoder()
    base = "a red disc moving left on a dark background"
    variants = [base.replace("red", "blue"), base.replace("disc", "bar"), base.replace("left", "up"),
                base.replace("dark", "light")]
    e = enc.encode([base] + variants)
    for i, slot in enumerate(range(4), start=1):
        changed = (e[i] - e[0]).abs().sum(-1) > 0
        assert changed.tolist() == [j == slot for j in range(8)]
    assert not torch.equal(enc.encode(["red disc"])[0, 0], enc.encode(["disc red"])[0, 1]), "positions differ"


def test_text_encoder_rejects_unknown_words_listing_the_vocabulary():
    with pytest.raises(ValueError) as err:
        ToyTextEncoder().encode(["a purple disc moving left on a dark background"])
    msg = str(err.value)
    assert "'purple'" in msg and all(w in msg for w in ("red", "disc", "left", "dark"))
    with pytest.raises(ValueError, match="max_tokens"):
        ToyTextEncoder(max_tokens=2).encode(["red disc left"])


def test_toy_and_metrics_modules_import_nothing_above_salt_core():
    root = Path(__file__).resolve().parents[1] / "salt_core"
    allowed = {"torch", "numpy", "einops", "dataclasses", "functools", "math", "typing", "__future__"}
    for path in sorted((root / "toy").glob("*.py")) + sorted((root / "metrics").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level <= 2, f"{path.name} reaches above salt_core: level {node.level} {node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                assert all(n.split(".")[0] in allowed for n in names), f"{path.name} imports {names}"


def test_get_world_is_the_one_lookup_of_a_world_by_name():
    import pathlib
    import re
    from comfyui_salt.toy.lab.world import LabWorld
    from comfyui_salt.toy.world import TOY_WORLD_PRESETS
    from comfyui_salt.toy.worlds import get_world
    sprite, lab = get_world("fast"), get_world("lab:default")
    assert (sprite.kind, sprite.cfg, sprite.height) == ("sprite", TOY_WORLD_PRESETS["fast"], 16)
    assert lab.kind == "lab" and lab.cfg == LabWorld("default").cfg
    assert torch.equal(lab.lab.mode_start, LabWorld("default").mode_start)
    rng = np.random.default_rng(3)
    videos, captions = lab.draw(rng, 4)
    assert videos.shape[0] == 4 and videos.dtype == torch.float32 and len(captions) == 4
    assert lab.eval_captions(5) == [i % lab.cfg.num_captions for i in range(5)]
    for bad, words in (("nope", "unknown toy-world preset"), ("lab:nope", "unknown lab world"), (None, "world=None"),
                       ("lab:", "unknown lab world")):
        with pytest.raises(ValueError, match=words):
            get_world(bad)
    with pytest.raises(ValueError, match="needs a method-lab world"):
        sprite.exact_teacher()
    # nothing else in the package parses a world's name
    root = pathlib.Path(__file__).resolve().parents[1]
    parsing = re.compile(r"startswith\(\s*(LAB_PREFIX|[\"']lab)|len\(LAB_PREFIX\)|world\.split\(\s*[\"']:")
    found = [p.relative_to(root).as_posix() for layer in ("salt_core", "weights", "training", "toy", "nodes", "dev")
             for p in (root / layer).rglob("*.py") if p.name != "worlds.py" and parsing.search(p.read_text())]
    assert found == []
