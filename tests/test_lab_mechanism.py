"""experiments/lab_sc_mechanism.py: the exact flow map it compares against, its per-hop measures (closed-form
cases), and a smoke of the whole measurement on a tiny causal student of the lab world."""
import json
import os

import pytest
import torch

from comfyui_salt.experiments.lab_sc_mechanism import (arm_of, exact_flow, format_summary, format_table, GROUPS,
                                                      hop_measures, measure_student, milestone_student,
                                                      MissingMilestone, parse_updates)
from comfyui_salt.salt_core.losses.semigroup import sc_triplet_distribution
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
from comfyui_salt.toy.lab import ExactTeacher, LabTextEncoder, LabWorld
from comfyui_salt.training.distill_config import get_preset


@pytest.fixture(scope="module")
def lab():
    world = LabWorld("default")
    return world, ExactTeacher(world)


def test_the_exact_flow_converges_and_its_prefix_conditions_the_chunk(lab):
    world, teacher = lab
    cfg = get_preset("lab-dmd")
    ctx = LabTextEncoder(world, 32, 8).encode(torch.tensor([0, 1]))
    clean, _ = world.sample(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))[:2]
    clean = clean.double()
    prefix, chunk = clean[:, :, :3], clean[:, :, 3:6]
    x = 0.1 * chunk + 0.9 * torch.randn(chunk.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coarse, fine = (exact_flow(teacher, prefix, x, 0.9, 0.4, ctx, steps) for steps in (32, 64))
    step = (fine - x).norm()
    assert (coarse - fine).norm() < 1e-3 * step                   # second order: 4× closer at twice the steps
    alone = exact_flow(teacher, prefix[:, :, :0], x, 0.9, 0.4, ctx, 64)
    assert (alone - fine).norm() > 1e-2 * step                    # the clean frames before it matter
    assert cfg.chunk_frames == 3
    with pytest.raises(ValueError, match="sigma_from"):
        exact_flow(teacher, prefix, x, 0.4, 0.9, ctx)


def test_hop_measures_in_closed_form():
    g = torch.Generator().manual_seed(0)
    x_s, v, w = (torch.randn(3, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ss, sm, se = 0.9, 0.6, 0.3
    exact = x_s - (ss - se) * v                                   # the one hop is exact, the target off by (sm-se)·w
    m = hop_measures(x_s, v, v + w, exact, ss, sm, se)
    step = (exact - x_s).flatten(1).norm(dim=1)
    assert torch.allclose(m["e1"], torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(m["e2"], (sm - se) * w.flatten(1).norm(dim=1) / step)
    target = x_s - (ss - sm) * v - (sm - se) * (v + w)
    m = hop_measures(x_s, v, v + w, target, ss, sm, se)           # the target is exact: SC pulls straight to it
    assert torch.allclose(m["pull_truth"], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(m["e2"], torch.zeros(3, dtype=torch.float64), atol=1e-12)
    m = hop_measures(x_s, v, v + w, 2 * (x_s - (ss - se) * v) - target, ss, sm, se)   # the truth is opposite
    assert torch.allclose(m["pull_truth"], -torch.ones(3, dtype=torch.float64))


def test_the_measurement_covers_every_triplet_sc_trains(lab):
    world, teacher = lab
    cfg = get_preset("lab-salt", num_frames=6, sc_steps=4)
    student = build_model("toy", seed=3).eval()
    ctx = LabTextEncoder(world, student.cfg.text_dim, student.cfg.text_len).encode(torch.tensor([0, 1]))
    rows = measure_student(student, teacher, cfg, ctx, seed=0, flow_steps=4)
    sigmas = get_sigmas_fewstep(4, cfg.shift)
    want = {(t.sigma_s, t.sigma_m, t.sigma_e) for i in range(4) for t, _ in sc_triplet_distribution(i, sigmas)}
    assert set(rows) == want and want
    for cols in rows.values():
        assert set(cols) == {"e1", "e2", "pull_truth", "along"}
        assert all(v.shape == (2,) and torch.isfinite(v).all() for v in cols.values())
    measured = {"triplets": [[list(t), {k: v.tolist() for k, v in c.items()}] for t, c in sorted(rows.items(),
                                                                                                reverse=True)]}
    table = format_table({("runs/x/sc2/seed0", None): measured})
    assert table.count("\n") == len(want) + 1 and "| sc2 | 1 |" in table and table.endswith("clips |")
    table = format_table({("runs/x/sc2/seed0", 100): measured, ("runs/x/sc2/seed1", 100): measured,
                          ("runs/x/sc2/seed0", None): measured})
    assert table.count("| sc2 @100 | 2 |") == len(want) and table.count("| sc2 | 1 |") == len(want)


def test_the_summary_pairs_each_arms_hop_error_with_the_reference_by_seed():
    """format_summary's groups split SC's triplets (every one in exactly one), and its ratio cell is the t interval
    of per-seed ratios of group means, computed here by hand: seeds 0-2, arm = reference × (1.1, 1.2, 1.3)."""
    triplets = [(1.0, 0.9, 0.75), (0.9, 0.75, 0.5), (0.75, 0.5, 0.0), (0.5, 0.3, 0.0)]
    assert all(sum(member(t) for _, member in GROUPS) == 1 for t in triplets)

    def run(seed, scale, updates):
        cols = lambda k: {"e1": [0.1 * scale * (k + 1 + seed), 0.1 * scale * (k + 1 + seed)],   # noqa: E731
                          "e2": [0.2, 0.2], "pull_truth": [0.5, -0.5], "along": [0.0, 0.0]}
        return {"seed": seed, "gen_updates": updates, "triplets": [[list(t), cols(k)] for k, t in
                                                                   enumerate(triplets)]}
    measured = {(f"r/sc0/seed{s}", None): run(s, 1.0, 300) for s in (2, 0, 1)}   # found in another order
    measured.update({(f"r/sc20/seed{s}", None): run(s, 1.1 + 0.1 * s, 300) for s in range(3)})
    measured[("r/ode-causal", None)] = run(0, 1.0, -1)
    lines = format_summary(measured).splitlines()
    assert len(lines) == 2 + len(GROUPS) * 3 and lines[2].startswith("| ode-causal | 0 | 1 | from σ 1 | 0.1000 |")
    long_hops = next(line for line in lines if line.startswith("| sc20 | 300 | 3 | to 0"))
    from comfyui_salt.salt_core.metrics.bootstrap import seed_t_interval
    i = seed_t_interval(torch.tensor([1.1, 1.2, 1.3], dtype=torch.float64))
    assert f"| {i.mean:.3f} [{i.lo:.3f}, {i.hi:.3f}] (3) |" in long_hops
    e1 = [0.1 * (1.1 + 0.1 * s) * (3.5 + s) for s in range(3)]   # the group's two triplets, k = 2 and 3
    assert long_hops.split(" | ")[4].startswith(f"{sum(e1) / 3:.4f} [")
    assert "| +0.000 [" not in long_hops and long_hops.endswith("| +0.000 |")   # pull: tied seeds, no interval
    # a ratio pairs only the same seed at the same update count: sc20 after 100 updates has no sc0 partner (sc0 was
    # measured at 300 only), and sc20's seed 5 none at 300
    measured[("r/sc20/seed0", 100)] = run(0, 2.0, 100)
    measured[("r/sc20/seed5", None)] = run(5, 9.0, 300)
    lines = format_summary(measured).splitlines()
    early = next(line for line in lines if line.startswith("| sc20 | 100 | 1 | to 0"))
    assert early.split(" | ")[5] == ""
    four = next(line for line in lines if line.startswith("| sc20 | 300 | 4 | to 0"))
    assert four.split(" | ")[5] == long_hops.split(" | ")[5]   # the same ratio, over the three paired seeds
    # against another arm (--versus sc20): sc0 over sc20 is the reciprocal of each seed's ratio, sc20 has no cell
    lines = format_summary(measured, "sc20").splitlines()
    back = next(line for line in lines if line.startswith("| sc0 | 300 | 3 | to 0"))
    i = seed_t_interval(torch.tensor([1 / 1.1, 1 / 1.2, 1 / 1.3], dtype=torch.float64))
    assert f"| {i.mean:.3f} [{i.lo:.3f}, {i.hi:.3f}] (3) |" in back and "e1 / sc20 [95 %]" in lines[0]
    assert next(line for line in lines if line.startswith("| sc20 | 300 | 4 | to 0")).split(" | ")[5] == ""


def test_a_run_belongs_to_its_arm():
    assert arm_of("runs/lab-exp8/sc20/seed3") == "sc20" and arm_of("runs/lab-exp8/ode-causal/") == "ode-causal"


def test_a_milestone_student_has_the_checkpoints_ema_weights_once_ema_started(tmp_path):
    from comfyui_salt.training.runs import CheckpointManager
    from comfyui_salt.weights.files import save_model
    exported = build_model("toy", seed=1)
    (tmp_path / "export").mkdir()
    save_model(exported, str(tmp_path / "export" / "student.safetensors"))
    student, ema = (build_model("toy", seed=s).state_dict() for s in (2, 3))
    ckpts = CheckpointManager(str(tmp_path / "checkpoints"), keep=5)
    ckpts.save(100, {"student": student, "critic": student}, {"gen_step": 100})     # as Distiller.state() writes:
    ckpts.save(200, {"student": student, "critic": student, "ema": ema}, {"gen_step": 200})   # ema once started
    for at, want in ((100, student), (200, ema)):
        model = milestone_student(str(tmp_path), at)
        assert not model.training
        assert all(torch.equal(p, want[n]) for n, p in model.named_parameters())
    with pytest.raises(MissingMilestone, match=r"no checkpoint at update 150 \(it has \[100, 200\]\).*keep_every"):
        milestone_student(str(tmp_path), 150)


def test_runs_without_milestones_are_measured_at_their_end_only(monkeypatch, capsys, tmp_path):
    import comfyui_salt.experiments.lab_sc_mechanism as mech
    monkeypatch.chdir(tmp_path)
    for run in ("r/ode-causal", "r/sc2/seed0", "r/sc-dmd/seed0", "r/sc20/seed0"):   # r/sc2/seed1: not run yet
        os.makedirs(run)
    for run in ("r/sc2/seed0", "r/sc-dmd/seed0"):   # finished (r/sc20/seed0 is still training: left out)
        with open(os.path.join(run, "summary.json"), "w") as f:
            json.dump({"gen_updates": 300}, f)
    t = [1.0, 0.5, 0.0]
    fake = {"triplets": [[t, {k: [0.1, 0.2] for k in ("e1", "e2", "pull_truth", "along")}]]}
    calls = []

    def measure_run(run, clips, flow_steps, at=None):
        calls.append((run, at))
        if at is not None and "sc-dmd" in run:
            raise MissingMilestone(f"{run} has no checkpoint at update {at}")
        return fake
    monkeypatch.setattr(mech, "measure_run", measure_run)
    assert mech.main(["--runs", "r/ode-causal", "r/sc2/seed0", "r/sc2/seed1", "r/sc-dmd/seed0", "r/sc20/seed0",
                      "--at-updates", "100"]) == 0
    out, err = capsys.readouterr()
    assert calls == [("r/sc2/seed0", 100), ("r/sc-dmd/seed0", 100), ("r/ode-causal", None), ("r/sc2/seed0", None),
                     ("r/sc-dmd/seed0", None)]
    assert "| sc2 @100 | 1 |" in out and "sc-dmd @100" not in out and "| sc-dmd | 1 |" in out
    assert "skipped: r/sc-dmd/seed0 has no checkpoint at update 100" in err
    assert "skipped: r/sc20/seed0 has not finished" in err and "sc20" not in out


def test_update_counts_are_checked():
    assert parse_updates("100, 200") == [100, 200] and parse_updates("") == []
    for bad in ("1oo", "0", "-100", "100;200"):
        with pytest.raises(SystemExit, match="--at-updates .*expected positive update counts"):
            parse_updates(bad)
