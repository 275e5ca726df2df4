"""The method lab's distillation plumbing: lab presets, lab prompts, the exact teacher as real score, the exact-metric
evaluation, and a smoke of experiments/lab_experiment.py (every arm 2 updates on a tiny random lab teacher)."""
import argparse
import dataclasses
import importlib
import json
import os
import sys

import numpy as np
import pytest
import torch

from comfyui_salt.experiments.lab_arms import EVAL_VERSION, eval_seed
from comfyui_salt.salt_core.metrics.bootstrap import nested_bootstrap
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.toy.jobs import distill_world
from comfyui_salt.toy.lab import LAB_SHIFT, LabWorld
from comfyui_salt.toy.lab.metrics import evaluate_clips
from comfyui_salt.toy.prompts import LabPrompts, lab_eval_captions
from comfyui_salt.training.distill import Distiller, run_distillation
from comfyui_salt.training.distill_config import DISTILL_PRESETS, LAB_FIELDS, get_preset
from comfyui_salt.training.distill_eval import sample_student
from comfyui_salt.training.distill_models import build_models, build_prompts
from comfyui_salt.weights.files import save_model

WORLD = distill_world()
TINY = dict(batch_size=2, critic_ratio=1, eval_every=0, threads=1, checkpoint_every=1, align_start_iter=0,
            ema_start_iter=1)
TINY_ODE = dict(ode_pairs=4, ode_teacher_steps=8)   # the runner's --set takes both: each job the keys it has


def _bench():
    return importlib.import_module("comfyui_salt.experiments.lab_experiment")


def _tables():
    return importlib.import_module("comfyui_salt.experiments.lab_tables")


@pytest.fixture(autouse=True)
def smoke_sized_mechanism(monkeypatch):
    """The runner's SC-mechanism measurement (measure_finished) at a smoke's size: 4 clips and 8 exact-flow steps
    (the lab's: 16 and 32), the same code for a sixteenth of the exact-flow work, which made most of this file's
    time. The measurements read back below name the same sizes (MECHANISM_SIZE)."""
    _smoke_mechanism(monkeypatch)


def _smoke_mechanism(monkeypatch):
    """smoke_sized_mechanism's change (again after a test's monkeypatch.undo())."""
    from comfyui_salt.experiments.lab_arms import MECHANISM
    monkeypatch.setitem(MECHANISM, "clips", 4)
    monkeypatch.setitem(MECHANISM, "flow_steps", 8)


MECHANISM_SIZE = ["--clips", "4", "--flow-steps", "8"]   # lab_sc_mechanism.py's flags for the sizes above


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A tiny random lab teacher: the toy Wan with teacher_mode metadata (what the teacher job records)."""
    path = tmp_path_factory.mktemp("lab_teacher") / "lab_teacher.safetensors"
    save_model(build_model("toy", seed=0), path, extra_metadata={"teacher_mode": "bidirectional"})
    return str(path)


def test_each_lab_preset_is_its_toy_recipe_on_the_lab_world():
    assert LAB_FIELDS["shift"] == LAB_SHIFT and LAB_FIELDS["guidance_scale"] == 1.0
    from comfyui_salt.training.ode_init_config import ODE_INIT_PRESETS
    presets = {**DISTILL_PRESETS, **ODE_INIT_PRESETS}
    names = [n for n in presets if n.startswith("lab-")]
    assert sorted(names) == sorted(["lab-ode-init", "lab-dmd", "lab-sc-dmd", "lab-salt", "lab-salt-sym", "lab-bidir-dmd",
                                    "lab-bidir-sc-dmd"])
    for name in names:
        lab, toy = presets[name], presets["toy-" + name[4:]]
        assert lab.world == "lab:default" and lab.guidance_scale == 1.0 and lab.shift == LAB_SHIFT
        assert dataclasses.replace(lab, **{k: getattr(toy, k) for k in LAB_FIELDS}) == toy
    assert DISTILL_PRESETS["lab-dmd"].step_choices == (4,)
    assert DISTILL_PRESETS["lab-sc-dmd"].step_choices == (8,) and DISTILL_PRESETS["lab-sc-dmd"].sc_weight == 0.2
    salt = DISTILL_PRESETS["lab-salt"]
    assert salt.step_choices == (8, 4, 2) and salt.sc_weight > 0 and salt.align_weight > 0


def test_lab_prompts_are_random_caption_ids_with_empty_prompt_uncond():
    lab = LabWorld("default")
    src = LabPrompts(LabWorld("default"), 32, 8)
    ids, ctx, unc = src.sample(np.random.default_rng(0), 64)
    assert ctx.shape == unc.shape == (64, 8, 32)
    assert torch.equal(lab.decode(ctx), ids)                              # the context names the caption
    assert torch.equal(lab.decode(unc), torch.full((64,), -1))           # the empty prompt
    assert set(ids.tolist()) == set(range(lab.cfg.num_captions))          # all captions drawn
    again, _, _ = src.sample(np.random.default_rng(0), 64)
    assert torch.equal(ids, again)
    cfg = get_preset("lab-dmd", teacher="exact")
    assert isinstance(build_prompts(cfg, build_model("toy", seed=0), "", WORLD), LabPrompts)


def test_the_exact_real_score_is_the_closed_form_posterior_mean(teacher_path):
    """Through the Distiller's real score: at σ = 1 the noisy clip says nothing, so x0 = E[x0 | caption] =
    Σ_k π_k m_k over the caption's modes; at σ → 0 a data clip is returned as itself."""
    cfg = get_preset("lab-dmd", teacher="exact", student_init=teacher_path, critic_init=teacher_path, **TINY)
    teacher, student, critic = build_models(cfg, WORLD)
    assert not list(teacher.parameters())
    job = Distiller(cfg, teacher, student, critic, build_prompts(cfg, teacher, "", WORLD), score_kind="bidirectional")
    lab = teacher.world
    caps = torch.tensor([0, 3])
    ctx = lab.encode(caps, student.cfg.text_len, student.cfg.text_dim)
    x_t = torch.randn(2, 3, cfg.num_frames, cfg.height, cfg.width, generator=torch.Generator().manual_seed(0))
    x0 = job.real.x0(x_t, torch.ones(2), ctx, None)
    mean, _ = lab.basis(range(cfg.num_frames))                            # (K, F, D)
    for b, c in enumerate(caps.tolist()):
        w = torch.where(lab.mode_caption == c, lab.mode_weight, torch.zeros_like(lab.mode_weight))
        expect = lab.to_video((w[:, None, None] * mean).sum(0, keepdim=True)).float()[0]
        torch.testing.assert_close(x0[b], expect, atol=1e-4, rtol=0)
    clip = lab.sample(caps, generator=torch.Generator().manual_seed(1))[0].float()
    torch.testing.assert_close(job.real.x0(clip, torch.full((2,), 1e-4), ctx, None), clip, atol=2e-3, rtol=0)


def test_teachers_and_students_draw_the_same_initial_noise_from_one_seed(teacher_path):
    """The lab's pairing: the exact teacher (no weights) and a student start from identical noise for one seed."""
    from comfyui_salt.toy.lab import ExactTeacher
    from comfyui_salt.training.distill_eval import student_noise
    cfg = get_preset("lab-dmd")
    lab = LabWorld("default")
    student = build_model("toy", seed=0)
    ctx = lab.encode(torch.tensor([0, 1, 2]), student.cfg.text_len, student.cfg.text_dim)
    a, _, _ = student_noise(ExactTeacher(lab), cfg, ctx, cfg.num_frames, 7)
    b, _, _ = student_noise(student, cfg, ctx, cfg.num_frames, 7)
    assert a.shape == (3, 3, cfg.num_frames, cfg.height, cfg.width) and torch.equal(a, b)
    expect = torch.randn(a.shape, generator=torch.Generator().manual_seed(7))   # the seed's first draw
    assert torch.equal(a, expect)


def test_exact_teacher_refuses_copies_and_other_worlds(teacher_path, tmp_path):
    with pytest.raises(ValueError, match="critic_init='teacher' cannot work"):
        build_models(get_preset("lab-dmd", teacher="exact", student_init=teacher_path), WORLD)
    with pytest.raises(ValueError, match="needs a method-lab world"):
        build_models(get_preset("toy-dmd", teacher="exact", student_init=teacher_path, critic_init=teacher_path),
                     WORLD)
    from comfyui_salt.training.ode_init import run_ode_init
    from comfyui_salt.training.ode_init_config import get_ode_init_preset
    ode = get_ode_init_preset("lab-ode-init", teacher="exact", batch_size=2, ode_pairs=4, ode_teacher_steps=8)
    with pytest.raises(ValueError, match="OdeInitConfig.teacher='exact'"):
        run_ode_init(ode, str(tmp_path / "r"), quiet=True, world=WORLD)


def test_the_lab_evaluation_callback_scores_the_students_samples_exactly(teacher_path):
    cfg = get_preset("lab-dmd", teacher=teacher_path, eval_clips=4, eval_nfe=(2,))
    model = build_model("toy", seed=0).eval()
    got = WORLD.evaluate(model, cfg, None, None)
    lab = LabWorld("default")
    caps = lab_eval_captions(lab, 4)
    videos = sample_student(model, cfg, lab.encode(caps, model.cfg.text_len, model.cfg.text_dim), 2)
    expect = evaluate_clips(lab, videos, caps)
    assert list(got) == ["nfe2"] and got["nfe2"].keys() == expect.keys()
    for k, v in expect.items():
        assert got["nfe2"][k] == pytest.approx(v, nan_ok=True)


def test_nested_bootstrap_is_the_mean_with_an_interval_that_widens_with_seed_spread():
    groups = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0]) + 10]

    def stat(draw):
        return sum(float((groups[g] * c).sum() / c.sum()) for g, c in draw) / len(draw)
    iv = nested_bootstrap(stat, [3, 3], 400)
    assert iv.mean == pytest.approx(7.0) and iv.n == 2
    assert iv.lo <= 2.5 and iv.hi >= 11.5                                 # seed-to-seed spread dominates
    one = nested_bootstrap(lambda d: stat([(0, c) for _, c in d]), [3, 3], 400)
    assert one.mean == pytest.approx(2.0) and 1.0 <= one.lo < one.hi <= 3.0


def test_the_experiment_runs_every_arm_evaluates_and_prints_the_table(teacher_path, tmp_path, monkeypatch, capsys):
    import comfyui_salt.training.loop as common
    monkeypatch.setattr(common, "install_stop_handlers", lambda: None)   # in-process: keep pytest's Ctrl-C
    bench = _bench()
    out = tmp_path / "exp"
    argv = ["--teacher", teacher_path, "--out", str(out), "--seeds", "1", "--updates", "2", "--ode-updates", "2",
            "--clips", "8", "--resamples", "20", "--in-process"] + [
            f"--set={k}={v}" for k, v in {**TINY, **TINY_ODE}.items()]
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    for arm in bench.ARMS:
        ev = json.loads((out / arm / "seed0" / "lab_eval.json").read_text())
        assert ev["summary"]["gen_updates"] == 2
        assert set(ev["nfe"]) == {"4", "2"} and len(ev["defect8"]) == 8
        assert (ev["nfe"]["4"]["drift"] is None) == arm.startswith("bidir")
        # switch rates: k of the 3 chunk boundaries of 12 frames; drift: k of the 11 of 36 frames
        for key, n in (("switch", 3), ("drift", 11)):
            rates = ev["nfe"]["2"][key] or []
            assert all(0 <= r <= 1 and abs(r * n - round(r * n)) < 1e-4 for r in rates)
        assert f"| {arm} | 1 | 4 |" in table and f"| {arm} | 1 | 2 |" in table
    for ref in bench.REFERENCES:   # the teachers on the students' captions: 40 Euler steps
        ev = json.loads((out / ref / "lab_eval.json").read_text())
        assert list(ev["nfe"]) == ["40"] and ev["captions"] == json.loads(
            (out / "dmd" / "seed0" / "lab_eval.json").read_text())["captions"]
        assert f"| {ref} (Euler) |  | 40 |" in table
    exact = json.loads((out / "exact" / "lab_eval.json").read_text())["nfe"]["40"]
    assert sum(exact["switch"]) == 0                                      # the exact teacher never switches mode
    claims = table.split("The paper's claims")[1]
    tables = _tables()
    for claim, *_ in tables.CLAIMS:                                        # every claim read, with a verdict
        row = next(line for line in claims.splitlines() if line.startswith(f"| {claim} |"))
        assert row.split(" | ")[-1].rstrip(" |") in ("reproduces", "does not", "opposite", "inconclusive", "mixed")
    # the defect ratio's point estimate is the ratio of the two arms' mean per-clip defects
    results = bench.load_results(str(out))
    iv, seeds, ref = tables.paired_interval(results, "sc-dmd", 4, "dmd", 4, "defect8", LabWorld("default"),
                                            ratio=True, resamples=20)
    d_sc, d_dmd = (np.mean(results[a][0]["defect8"]) for a in ("sc-dmd", "dmd"))
    assert seeds == 1 and ref == pytest.approx(d_dmd) and iv.mean == pytest.approx(d_sc / d_dmd)
    # each training seed is evaluated on its own noise (shared by every arm at that seed): seed 0 on EVAL_SEED's,
    # the same run read as seed 3 on EVAL_SEED + 3's, and other samples; a pair on different noise is refused
    import shutil
    from comfyui_salt.experiments.lab_arms import EVAL_SEED
    ev0 = results["dmd"][0]
    assert ev0["noise_seed"] == eval_seed(0) == EVAL_SEED and results["sc-dmd"][0]["noise_seed"] == EVAL_SEED
    as3 = tmp_path / "as3"
    shutil.copytree(out / "dmd" / "seed0", as3)
    stored = json.loads((as3 / "config.json").read_text())
    (as3 / "config.json").write_text(json.dumps({**stored, "seed": 3}))
    ev3 = bench.evaluate_run(str(as3), 8, force=True)
    assert ev3["noise_seed"] == EVAL_SEED + 3 and ev3["captions"] == ev0["captions"]
    assert ev3["nfe"]["4"]["w"] != ev0["nfe"]["4"]["w"] and ev3["defect8"] != ev0["defect8"]
    with pytest.raises(ValueError, match="different captions or noise"):
        tables.paired_interval({**results, "sc-dmd": {0: ev3}}, "sc-dmd", 4, "dmd", 4, "defect8",
                               LabWorld("default"), ratio=True)
    exact = json.loads((out / "salt-exact" / "seed0" / "config.json").read_text())
    assert exact["teacher"] == "exact" and exact["critic_init"] == teacher_path
    assert json.loads((out / "sc20" / "seed0" / "config.json").read_text())["sc_weight"] == 20.0
    sym = json.loads((out / "sc2-sym" / "seed0" / "config.json").read_text())
    assert sym["sc_weight"] == 2.0 and sym["sc_symmetric"] is True
    low = json.loads((out / "sc20-low" / "seed0" / "config.json").read_text())
    assert low["sc_weight"] == 20.0 and low["sc_exit_sigma_max"] == 0.7 and not low["sc_symmetric"]
    # a rerun finds everything finished and only prints the table
    before = (out / "dmd" / "seed0" / "lab_eval.json").stat().st_mtime_ns
    assert bench.main(argv[:4] + ["--table", "--resamples", "20"]) == 0
    assert (out / "dmd" / "seed0" / "lab_eval.json").stat().st_mtime_ns == before
    assert "| dmd | 1 | 4 |" in capsys.readouterr().out
    # what the repository keeps: gzipped copies that reprint the same table
    kept = tmp_path / "kept"
    assert bench.main(["--out", str(out), "--table", "--resamples", "20", "--export", str(kept)]) == 0
    printed = capsys.readouterr().out
    assert (kept / "salt" / "seed0" / "lab_eval.json.gz").exists() and (kept / "exact" / "lab_eval.json.gz").exists()
    assert bench.main(["--out", str(kept), "--table", "--resamples", "20"]) == 0
    assert capsys.readouterr().out == printed.split("\n", 1)[1]   # the same table, without the export line
    assert bench.main(["--out", str(kept), "--table", "--resamples", "20", "--compact"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith("| arm | seeds | NFE | var_ratio | mean_err | switch |") and "loglik" not in head
    # the SC-triplet diagnosis reads the same runs: every causal 8-step arm measured, a table row each, and the
    # SC-weighted column is the draw-frequency mix of the per-triplet defects it cached
    diag = importlib.import_module("comfyui_salt.experiments.lab_sc_triplets")
    diag.main(["--out", str(out), "--clips", "4"])
    printed = capsys.readouterr().out
    for arm in diag.ARMS:
        assert f"| {arm} | " in printed
    m = json.loads((out / "sc20" / "seed0" / "sc_triplets.json").read_text())
    assert m["sc_weight"] == 20.0 and sum(q for _, q, _ in m["sc"]) == pytest.approx(1.0)
    mixed = sum(q * np.mean(row) for _, q, row in m["sc"])
    runs, _ = diag.load(str(out))
    assert runs["sc20"][0]["SC-weighted"].mean().item() == pytest.approx(mixed, rel=1e-6)
    diag.main(["--out", str(out), "--table", "--export", str(tmp_path / "kept_sc")])   # kept gzipped: same tables
    assert capsys.readouterr().out.split("\n", 1)[1] == printed.split("\n", len(diag.ARMS))[-1]
    diag.main(["--out", str(tmp_path / "kept_sc"), "--table"])
    assert capsys.readouterr().out == printed.split("\n", len(diag.ARMS))[-1]
    # a longer experiment continues the finished runs (the same init, their last checkpoint) and lands where a
    # longer first start lands
    from safetensors.torch import load_file
    longer, fresh = tmp_path / "longer", tmp_path / "fresh"
    assert argv[6:8] == ["--updates", "2"]
    more = argv[:6] + ["--updates", "3"] + argv[8:] + ["--arms", "dmd"]
    # several folders: each run continues from the first that holds it finished (here the second; the first shares
    # the init, as a --remeasure folder does, without the run); one with another init is refused before any job
    same, other = tmp_path / "same_init", tmp_path / "other_init"
    bench._share_starts(str(out), str(same), ["causal"])
    bench._share_starts(str(out), str(other), ["causal"])
    with open(bench.ode_export(str(other), "causal"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(SystemExit, match="ODE init of .*other_init is not"):
        bench.main([*more[:3], str(tmp_path / "refused"), *more[4:], "--extend-from", f"{out},{other}"])
    assert not (tmp_path / "refused" / "dmd").exists()
    assert bench.main([*more[:3], str(longer), *more[4:], "--extend-from", f"{same},{out}"]) == 0
    assert f"continues {out / 'dmd' / 'seed0'}: " in capsys.readouterr().out
    assert bench.main([*more[:3], str(tmp_path / "from_init"), *more[4:], "--extend-from", str(same)]) == 0
    assert "no --extend-from folder holds dmd/seed0 finished with its checkpoint" in capsys.readouterr().out
    bench._share_starts(str(out), str(fresh), ["causal"])
    assert bench.main([*more[:3], str(fresh), *more[4:]]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (longer / "dmd" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((longer / "dmd" / "seed0" / "summary.json").read_text())["gen_updates"] == 3
    steps = [r["gen_step"] for r in rows if "gen_step" in r]
    assert steps == [1, 2, 3]                     # updates 1-2 copied, only update 3 trained (a restart adds 1-3)
    assert [r for r in rows if "gen_step" in r][:2] == [r for r in (json.loads(line) for line in (
        out / "dmd" / "seed0" / "metrics.jsonl").read_text().splitlines()) if "gen_step" in r][:2]
    a, b = (load_file(str(d / "dmd" / "seed0" / "export" / "student.safetensors")) for d in (longer, fresh))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not bench.extend_from(str(out / "dmd" / "seed0"), str(longer / "dmd" / "seed0"), 4)   # finished there
    with pytest.raises(SystemExit, match="already made 2 updates"):
        bench.extend_from(str(out / "dmd" / "seed0"), str(tmp_path / "shorter"), 2)
    # what the extra update changed: the continued arm against itself in the shorter experiment, paired by seed and
    # clip; its two means are each experiment's own
    assert bench.main(["--out", str(longer), "--table", "--resamples", "20", "--arms", "dmd",
                       "--compare-to", str(out)]) == 0
    progress = capsys.readouterr().out.split("What more updates changed")[1]
    row = next(line for line in progress.splitlines() if line.startswith("| dmd | 1 | 4 |"))
    mean_err = _tables().metric_fn("mean_err", 4, LabWorld("default"))
    ones = torch.ones(8, dtype=torch.float64)
    before, after = (mean_err(bench.load_results(str(d), ["dmd"])["dmd"][0], ones) for d in (out, longer))
    assert "[2] → [3]" in row and f"{before:.3f} → {after:.3f} ({after - before:.4f})" in row   # one seed: no interval


def test_the_runner_runs_claim_arms_first_in_parallel_skips_finished_and_counts_failures(tmp_path, monkeypatch):
    bench = _bench()
    order = bench.arm_order(["sc2", "dmd", "salt-exact", "salt"], 2)
    assert order == [("dmd", 0), ("salt", 0), ("dmd", 1), ("salt", 1), ("sc2", 0), ("salt-exact", 0),
                     ("sc2", 1), ("salt-exact", 1)]
    assert bench.arm_order(["sc2", "dmd", "salt"], 2, first=[("sc2", 1), ("sc20", 0)]) == [
        ("sc2", 1), ("dmd", 0), ("salt", 0), ("dmd", 1), ("salt", 1), ("sc2", 0)]   # sc20 is not among the arms
    # a pair named twice (lab_8seeds.sh put seed 2 first, then every seed: salt:2 started again while it trained)
    assert bench.arm_order(["dmd", "salt"], 3, first=[("dmd", 2), ("salt", 2), ("dmd", 0), ("salt", 0), ("dmd", 2),
                                                      ("salt", 2)]) == [
        ("dmd", 2), ("salt", 2), ("dmd", 0), ("salt", 0), ("dmd", 1), ("salt", 1)]
    assert bench.parse_first("sc20:0,sc2:1") == [("sc20", 0), ("sc2", 1)]
    with pytest.raises(SystemExit, match="arm:seed"):
        bench.parse_first("sc9:0")
    live, peak, started = set(), [0], []

    class FakeJob:   # a `distill` subprocess that finishes on its second poll, writing summary.json unless told to fail
        def __init__(self, cmd):
            self.out = cmd[cmd.index("--out") + 1]
            self.polls, self.returncode = 0, None
            started.append(os.path.basename(self.out))
            live.add(self.out)
            peak[0] = max(peak[0], len(live))

        def poll(self):
            self.polls += 1
            if self.polls < 2:
                return None
            live.discard(self.out)
            self.returncode = 1 if self.out.endswith("bad") else 0
            if not self.returncode:
                os.makedirs(self.out, exist_ok=True)
                open(os.path.join(self.out, "summary.json"), "w").close()
            return self.returncode

    monkeypatch.setattr(bench.subprocess, "Popen", FakeJob)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    names = ["a", "done", "b", "bad", "c"]
    jobs = [("lab-dmd", str(tmp_path / n), {}, str(tmp_path / n / "summary.json")) for n in names]
    evaluated, looked = [], []
    failed = bench.run_jobs(jobs, workers=2, after=lambda d: evaluated.append(os.path.basename(d)),
                            during=lambda d: looked.append(os.path.basename(d)))
    assert failed == 1 and peak[0] == 2
    assert started == ["a", "b", "bad", "c"]                              # the finished one is not rerun
    assert sorted(evaluated) == ["a", "b", "c", "done"]                   # every finished run evaluated once
    assert sorted(looked) == ["a", "b", "bad", "c"]                       # each running one looked at while it ran


def test_a_run_that_would_not_end_before_the_deadline_is_deferred_and_the_next_that_fits_runs(tmp_path, monkeypatch,
                                                                                              capsys):
    """--deadline: a machine that goes at the session's end loses a run's hours since its last checkpoint, so a run
    is started only when the updates it has left (from its newest checkpoint), its evaluation and its milestones'
    end before then; the others are deferred, in order, and the runner goes on to the next that fits."""
    bench = _bench()
    from comfyui_salt.training.runs import CheckpointManager
    half = tmp_path / "lab" / "dmd" / "seed1"
    CheckpointManager(str(half / "checkpoints")).save(600, {"student": {"w": torch.zeros(1)}}, {})
    (half / "config.json").write_text(json.dumps({"student_init": "elsewhere.safetensors"}))
    assert bench.job_seconds(str(half), {"gen_steps": 2000}, 3.0, [1000]) == 1400 * 3.0 + 2 * bench.EVAL_S
    assert bench.job_seconds(str(half), {"gen_steps": 2000}, 3.0, [500]) == 1400 * 3.0 + bench.EVAL_S
    assert bench.job_seconds(str(tmp_path / "new"), {"gen_steps": 300}, 2.0) == 600 + bench.EVAL_S
    # the pace a run keeps on this machine (the lower quartile of its metrics' sec_per_step: the updates slowed by
    # tests beside it count less) wins over the flag's; a run restored from the repository was not trained here
    paced = tmp_path / "paced"
    paced.mkdir()
    rows = [{"gen_step": i, "sec_per_step": 8.0 if i % 3 else 3.0} for i in range(120)]   # 40 at 3 s, 80 at 8 s
    (paced / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\nnot json\n{\"eval\": 1}\n")
    assert bench.measured_pace([str(tmp_path / "new"), str(paced)]) == 3.0
    assert bench.job_seconds(str(tmp_path / "new"), {"gen_steps": 300}, 2.0, pace_from=[str(paced)]) == (
        300 * 3.0 + bench.EVAL_S)
    (paced / bench.lab_keep.KEPT_MARK).write_text("{}")
    assert bench.measured_pace([str(paced)]) is None                     # restored: another machine's pace
    (paced / bench.lab_keep.KEPT_MARK).unlink()
    (paced / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows[:19])))
    assert bench.measured_pace([str(paced)]) is None                     # too few to trust
    started = []

    class FakeJob:   # finishes at once, writing summary.json
        def __init__(self, cmd):
            self.out = cmd[cmd.index("--out") + 1]
            started.append(os.path.relpath(self.out, tmp_path / "lab"))
            self.returncode = 0
            os.makedirs(self.out, exist_ok=True)
            open(os.path.join(self.out, "summary.json"), "w").close()

        def poll(self):
            return 0
    monkeypatch.setattr(bench.subprocess, "Popen", FakeJob)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    monkeypatch.setattr(bench, "restore_kept", lambda args: None)
    monkeypatch.setattr(bench, "finish_run", lambda args, d: None)
    monkeypatch.setattr(bench, "evaluate_reference", lambda *a, **k: None)
    monkeypatch.setattr(bench, "evaluate_run", lambda *a, **k: None)
    for kind in ("causal", "bidirectional"):   # the ODE inits, finished
        init = tmp_path / "lab" / bench.ODE_INITS[kind]
        (init / "export").mkdir(parents=True)
        (init / "export" / "student.safetensors").write_bytes(b"")
        (init / "summary.json").write_text("{}")
    args = argparse.Namespace(workers=1, keep="", extend_from=[], remeasure="", arms=["dmd", "salt"], seeds=2,
                              first="dmd:1,salt:1", out=str(tmp_path / "lab"), teacher="t.safetensors", clips=4,
                              ode_updates=0, updates=2000, in_process=False, milestone=[(1000, "x", "")],
                              seconds_per_update=3.0, deadline=bench.time.time() + 1400 * 3.0 + 2 * bench.EVAL_S + 60)
    assert bench.run_stages(args, {}) == 0
    assert started == ["dmd/seed1"]          # 2,000 updates from the start fit no run; dmd seed 1's 1,400 left do
    said = capsys.readouterr().out
    for run in ("salt/seed1", "dmd/seed0", "salt/seed0"):
        assert f"deferred: {tmp_path / 'lab' / run}" in said and "min left before --deadline" in said, said
    args.deadline = 0                        # none: every run in turn
    assert bench.run_stages(args, {}) == 0 and started == ["dmd/seed1", "salt/seed1", "dmd/seed0", "salt/seed0"]


def test_claim_verdicts_follow_the_stated_rules():
    from comfyui_salt.salt_core.metrics.bootstrap import Interval

    def iv(lo, hi):
        return Interval((lo + hi) / 2, lo, hi, 3, 0.95)
    v = _tables().claim_verdict
    assert v("defect", {"defect8": iv(0.5, 0.8)}, {}) == "reproduces"
    assert v("defect", {"defect8": iv(0.7, 0.9)}, {}) == "inconclusive"
    assert v("defect", {"defect8": iv(0.85, 1.1)}, {}) == "does not"
    assert v("defect", {"defect8": iv(1.01, 1.1)}, {}) == "opposite"
    assert v("defect", {"defect8": Interval(0.5, float("nan"), float("nan"), 1, 0.95)}, {}) == "inconclusive"
    assert v("lower-ratio", {"defect8": iv(0.8, 0.99)}, {}) == "reproduces"
    assert v("lower-ratio", {"defect8": iv(0.8, 1.05)}, {}) == "inconclusive"
    assert v("lower-ratio", {"defect8": iv(0.95, 1.05)}, {}) == "does not"
    assert v("lower-ratio", {"defect8": iv(1.02, 1.05)}, {}) == "opposite"
    refs = {"drift": 0.1}
    assert v("drift", {"drift": iv(-0.2, -0.1)}, refs) == "reproduces"
    assert v("drift", {"drift": iv(-0.2, 0.1)}, refs) == "inconclusive"
    assert v("drift", {"drift": iv(-0.005, 0.1)}, refs) == "does not"      # any gain is under 10 % of 0.1
    assert v("drift", {"drift": iv(0.01, 0.1)}, refs) == "opposite"
    refs = {"mean_err": 1.0, "var_gap": 0.5}
    assert v("quality", {"mean_err": iv(-2, -1), "var_gap": iv(-1, 0.04)}, refs) == "reproduces"
    assert v("quality", {"mean_err": iv(-2, -1), "var_gap": iv(-1, 1)}, refs) == "inconclusive"   # may be worse
    assert v("quality", {"mean_err": iv(-2, -1), "var_gap": iv(1, 2)}, refs) == "mixed"
    assert v("quality", {"mean_err": iv(-2, -1), "var_gap": iv(0.01, 0.04)}, refs) == "reproduces"   # under 0.05
    assert v("quality", {"mean_err": iv(-1, 1), "var_gap": iv(1, 2)}, refs) == "opposite"
    assert v("quality", {"mean_err": iv(-1, 1), "var_gap": iv(-1, 2)}, refs) == "inconclusive"
    assert v("quality", {"mean_err": iv(-0.05, 0.2), "var_gap": iv(-0.04, 0.3)}, refs) == "does not"
    assert v("quality", {"mean_err": iv(-0.05, 0.2), "var_gap": iv(-0.06, 0.3)}, refs) == "inconclusive"
    assert v("non-inferior", {"mean_err": iv(-0.1, 0.05), "var_gap": iv(-0.3, 0.04)}, refs) == "reproduces"
    assert v("non-inferior", {"mean_err": iv(-0.1, 0.2), "var_gap": iv(-0.3, 0.04)}, refs) == "inconclusive"
    assert v("non-inferior", {"mean_err": iv(0.01, 0.2), "var_gap": iv(-0.3, 0.04)}, refs) == "inconclusive"
    assert v("non-inferior", {"mean_err": iv(0.11, 0.2), "var_gap": iv(-0.3, 0.04)}, refs) == "opposite"
    assert v("non-inferior", {"mean_err": iv(0.01, 0.05), "var_gap": iv(-0.3, 0.04)}, refs) == "reproduces"
    b = _tables().below_margin                        # a "reproduces" ruled smaller than the margin: ", < 10 %"
    assert b("quality", {"mean_err": iv(-0.05, -0.01), "var_gap": iv(-0.04, 0.3)}, refs)
    assert not b("quality", {"mean_err": iv(-0.11, -0.01), "var_gap": iv(-0.04, 0.3)}, refs)
    assert not b("quality", {"mean_err": iv(-0.05, -0.01), "var_gap": iv(-0.06, 0.3)}, refs)
    assert b("drift", {"drift": iv(-0.009, -0.001)}, {"drift": 0.1})
    assert not b("drift", {"drift": iv(-0.011, -0.001)}, {"drift": 0.1})
    assert b("lower-ratio", {"defect8": iv(0.95, 0.99)}, {}) and not b("lower-ratio", {"defect8": iv(0.89, 0.99)}, {})
    assert not b("defect", {"defect8": iv(0.95, 0.99)}, {})
    # on the margin itself an effect of 10 % is not ruled out: not small
    assert not b("lower-ratio", {"defect8": iv(0.9, 0.99)}, {})
    assert not b("quality", {"mean_err": iv(-0.1 * abs(refs["mean_err"]), -0.01), "var_gap": iv(-0.04, 0.3)}, refs)
    row = dict(test="drift", ivs={"drift": iv(-0.009, -0.001)}, refs={"drift": 0.1}, verdict="reproduces")
    assert _tables().verdict_text(row) == "reproduces, < 10 %"
    assert _tables().verdict_text({**row, "refs": {"drift": 0.0}}) == "reproduces"
    zero = {"mean_err": 0.0, "var_gap": 0.0}                               # no margin: "does not" is out of reach
    assert v("quality", {"mean_err": iv(-1e-9, 1e-9), "var_gap": iv(-1e-9, 1e-9)}, zero) == "inconclusive"
    assert v("non-inferior", {"mean_err": iv(-2e-9, -1e-9), "var_gap": iv(-2e-9, -1e-9)}, zero) == "reproduces"


def test_the_symmetric_salt_preset_is_released_salt_with_the_symmetric_sc_only():
    sym, salt = DISTILL_PRESETS["toy-salt-sym"], DISTILL_PRESETS["toy-salt"]
    assert sym.sc_symmetric and not salt.sc_symmetric
    assert dataclasses.replace(sym, sc_symmetric=False) == salt
    bench = _bench()
    assert bench.ARMS["salt-sym"] == ("lab-salt-sym", {})
    assert sys.modules["comfyui_salt.experiments.lab_arms"].REFERENCE_OF["salt-sym"] == "salt"
    # and at λ_SC 2: that preset with the SC weight alone changed, against released Salt too
    assert bench.ARMS["salt-sym2"] == ("lab-salt-sym", {"sc_weight": 2.0})
    assert sys.modules["comfyui_salt.experiments.lab_arms"].REFERENCE_OF["salt-sym2"] == "salt"


def test_tables_read_one_evaluation_version_and_name_the_older_ones_left_out(tmp_path, capsys):
    """A folder half re-evaluated (version 2's shared noise beside the current per-seed noise) is read at the newest
    version only; a folder of version 2 alone (the kept 3-seed exports) is read as it is."""
    bench = _bench()
    for arm, seed, version in (("dmd", 0, EVAL_VERSION), ("dmd", 1, 2), ("salt", 0, 2)):
        (tmp_path / arm / f"seed{seed}").mkdir(parents=True)
        (tmp_path / arm / f"seed{seed}" / "lab_eval.json").write_text(json.dumps({"version": version}))
    assert bench.load_results(str(tmp_path)) == {"dmd": {0: {"version": EVAL_VERSION}}}
    assert "left out 2 evaluation(s) of an older version (dmd/seed1, salt/seed0)" in capsys.readouterr().err
    (tmp_path / "dmd" / "seed0" / "lab_eval.json").write_text(json.dumps({"version": 1}))   # unreadable: absent
    assert bench.load_results(str(tmp_path)) == {"dmd": {1: {"version": 2}}, "salt": {0: {"version": 2}}}


def test_an_export_removes_copies_of_another_evaluation_version(tmp_path):
    import gzip
    bench = _bench()
    out, dest = tmp_path / "runs", tmp_path / "kept"
    (out / "dmd" / "seed0").mkdir(parents=True)
    (out / "dmd" / "seed0" / "lab_eval.json").write_text(json.dumps({"version": EVAL_VERSION}))
    for seed, version in ((0, 2), (1, 2), (2, EVAL_VERSION)):
        (dest / "dmd" / f"seed{seed}").mkdir(parents=True)
        with gzip.open(dest / "dmd" / f"seed{seed}" / "lab_eval.json.gz", "wt") as f:
            json.dump({"version": version}, f)
    assert bench.export_evals(str(out), str(dest)) == 1
    assert sorted(p.parent.name for p in dest.rglob("lab_eval.json.gz")) == ["seed0", "seed2"]


def test_runs_kept_in_the_repository_come_back_on_a_fresh_machine_and_are_not_rerun(teacher_path, tmp_path,
                                                                                     monkeypatch, capsys):
    """--keep: each run that finishes is measured (triplets, mechanism) and its small files kept at once; with the
    run folders gone (a new machine), the same command restores them, reruns nothing and prints the same table."""
    import comfyui_salt.training.loop as common
    monkeypatch.setattr(common, "install_stop_handlers", lambda: None)
    bench = _bench()
    out, kept = tmp_path / "exp", tmp_path / "kept"
    argv = ["--teacher", teacher_path, "--out", str(out), "--seeds", "1", "--updates", "2", "--ode-updates", "2",
            "--clips", "4", "--resamples", "20", "--in-process", "--arms", "dmd,sc2", "--keep", str(kept)] + [
            f"--set={k}={v}" for k, v in {**TINY, **TINY_ODE}.items()]
    assert bench.main(argv) == 0
    first = capsys.readouterr().out
    sc2 = kept / "sc2" / "seed0"
    assert sorted(p.name for p in sc2.iterdir()) == ["config.json.gz", "lab_eval.json.gz", "metrics.jsonl.gz",
                                                     "sc_mechanism.json.gz", "sc_triplets.json.gz",
                                                     "summary.json.gz"]
    assert not (kept / "dmd" / "seed0" / "metrics.jsonl.gz").exists()          # dmd's probes are not tabulated
    assert (kept / "ode-causal" / "student.safetensors").read_bytes() == (
        out / "ode-causal" / "export" / "student.safetensors").read_bytes()
    assert (kept / "teacher" / "lab_eval.json.gz").exists() and (kept / "ode-causal" / "sc_mechanism.json.gz").exists()
    kept_bytes = {p: p.read_bytes() for p in kept.rglob("*") if p.is_file()}
    import shutil
    shutil.rmtree(out)                                                           # a new machine
    ran = []
    import comfyui_salt.__main__ as cli
    monkeypatch.setattr(cli, "main", lambda a: ran.append(a))
    assert bench.main(argv) == 0
    again = capsys.readouterr().out
    assert ran == []                                                             # nothing trained again
    assert "restored from" in again and again.split("| arm |", 1)[1] == first.split("| arm |", 1)[1]
    assert (out / "sc2" / "seed0" / "kept.json").exists()
    assert json.loads((out / "sc2" / "seed0" / "sc_triplets.json").read_text())["gen_updates"] == 2
    assert {p: p.read_bytes() for p in kept.rglob("*") if p.is_file()} == kept_bytes   # kept files untouched
    # the measurement scripts read the restored runs as finished ones
    diag = importlib.import_module("comfyui_salt.experiments.lab_sc_triplets")
    diag.main(["--out", str(out), "--table"])
    assert "| sc2 | " in capsys.readouterr().out
    # an ODE init kept without its student (the kept 8-seed evaluations) is made again; a run folder that exists is
    # left as it is
    (kept / "ode-causal" / "student.safetensors").unlink()
    shutil.rmtree(out)
    (out / "dmd" / "seed0").mkdir(parents=True)
    restored = importlib.import_module("comfyui_salt.experiments.lab_keep").restore_runs(str(kept), str(out))
    assert str(out / "dmd" / "seed0") not in restored and str(out / "sc2" / "seed0") in restored
    assert not (out / "dmd" / "seed0" / "kept.json").exists()
    shutil.rmtree(out)
    assert bench.main(argv) == 0 and ran == []            # every run kept: the init is not needed, not made again
    assert (out / "ode-causal" / "kept.json").exists() and (out / "ode-causal" / "lab_eval.json").exists()
    shutil.rmtree(out)
    shutil.rmtree(kept / "dmd" / "seed0")                 # a run still to do, and sc2 kept from the lost init
    with pytest.raises(SystemExit, match="kept without its student, and runs started from it are kept .sc2/seed0"):
        bench.main(argv)
    shutil.rmtree(out)
    shutil.rmtree(kept / "sc2" / "seed0")                 # nothing kept from it: the init is made again first
    monkeypatch.undo()
    _smoke_mechanism(monkeypatch)
    monkeypatch.setattr(common, "install_stop_handlers", lambda: None)
    assert bench.main(argv) == 0
    assert (out / "ode-causal" / "export" / "student.safetensors").exists()
    assert not (out / "ode-causal" / "kept.json").exists()
    # a run kept with its evaluation only (the 8-seed runs before keeping): the tables read it, the measurements
    # that need its student skip it and say so
    (kept / "sc2" / "seed1").mkdir()
    shutil.copy(kept / "sc2" / "seed0" / "lab_eval.json.gz", kept / "sc2" / "seed1" / "lab_eval.json.gz")
    assert not list(out.rglob(".restoring-*"))
    lab_keep = importlib.import_module("comfyui_salt.experiments.lab_keep")
    assert lab_keep.restore_runs(str(kept), str(out)) == [str(out / "sc2" / "seed1")]
    mech = importlib.import_module("comfyui_salt.experiments.lab_sc_mechanism")
    capsys.readouterr()
    assert mech.main(["--runs", str(out / "sc2" / "seed0"), str(out / "sc2" / "seed1"), *MECHANISM_SIZE]) == 0
    printed = capsys.readouterr()
    assert "seed1: kept without a current sc_mechanism.json" in printed.err and "| sc2 | 1 |" in printed.out
    probes = importlib.import_module("comfyui_salt.experiments.lab_grad_probes").table(str(out), ["sc2"])
    assert "without their metrics, left out: sc2/seed1" in probes and "Unfinished" not in probes


def test_a_longer_runs_milestone_is_the_shorter_budgets_result(teacher_path, tmp_path, monkeypatch, capsys):
    """--milestone: a 3-update run's student after 2 updates (its EMA weights), evaluated into the 2-update
    experiment, equals the evaluation of a run of 2 updates (summary included); that experiment then runs nothing
    for it, and it is kept. A milestone the runs would not keep is refused before training; an evaluation
    interrupted halfway leaves nothing that reads as done."""
    import comfyui_salt.training.loop as common
    monkeypatch.setattr(common, "install_stop_handlers", lambda: None)
    bench = _bench()
    short, longer, fresh, kept = (tmp_path / n for n in ("short", "longer", "fresh", "kept"))
    base = ["--teacher", teacher_path, "--seeds", "1", "--ode-updates", "2", "--clips", "4", "--resamples", "20",
            "--in-process", "--arms", "salt"] + [f"--set={k}={v}" for k, v in {**TINY, **TINY_ODE,
                                                                                 "critic_ratio": 2}.items()]
    for bad, words in ((["--updates", "2", "--set=checkpoint_keep_every=2"], "fewer updates than --updates=2"),
                       (["--updates", "3"], "add --set checkpoint_keep_every=2")):
        with pytest.raises(SystemExit, match=words):
            bench.main(base + ["--out", str(longer), *bad, "--milestone", f"2:{short}:{kept}"])
    assert not longer.exists()
    real = bench.evaluate_run

    def interrupted(*a, **k):
        if k.get("at"):
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(bench, "evaluate_run", interrupted)
    assert bench.main(base + ["--out", str(longer), "--updates", "3", "--set=checkpoint_keep_every=1",
                              "--milestone", f"2:{short}:{kept}"]) == 130        # stopped (as by Ctrl-C)
    assert not (short / "salt" / "seed0").exists()                    # nothing reads as done
    monkeypatch.setattr(bench, "evaluate_run", real)
    assert bench.main(base + ["--out", str(longer), "--updates", "3", "--set=checkpoint_keep_every=1",
                              "--milestone", f"2:{short}:{kept}"]) == 0   # the finished run's after() again
    assert (longer / "salt" / "seed0" / "checkpoints" / "step_00000002" / "ema.safetensors").exists()
    bench._share_starts(str(longer), str(fresh), ["causal"])
    assert bench.main(base + ["--out", str(fresh), "--updates", "2"]) == 0
    got = json.loads((short / "salt" / "seed0" / "lab_eval.json").read_text())
    want = json.loads((fresh / "salt" / "seed0" / "lab_eval.json").read_text())
    assert got["summary"]["gen_updates"] == 2 and got["summary"] == want["summary"]
    assert got["nfe"] == want["nfe"] and got["defect8"] == want["defect8"]
    assert json.loads((short / "salt" / "seed0" / "milestone.json").read_text())["at"] == 2
    assert sorted(p.name for p in (kept / "salt" / "seed0").iterdir()) == ["lab_eval.json.gz", "milestone.json.gz"]
    # while a run still trains (no summary, no export yet), the milestone it has reached is evaluated at once, to
    # the same result; one it has not reached, or one evaluated already, is left alone
    import shutil
    training = tmp_path / "training"
    shutil.copytree(longer / "salt" / "seed0", training / "salt" / "seed0")
    shutil.rmtree(training / "salt" / "seed0" / "export")
    (training / "salt" / "seed0" / "summary.json").unlink()
    early, early_kept = tmp_path / "early", tmp_path / "early-kept"
    bench.evaluate_reached_milestones([(2, str(early), str(early_kept)), (7, str(tmp_path / "never"), "")],
                                      str(training), str(training / "salt" / "seed0"), 4)
    now = json.loads((early / "salt" / "seed0" / "lab_eval.json").read_text())
    assert now["summary"] == got["summary"] and now["nfe"] == got["nfe"] and now["defect8"] == got["defect8"]
    assert (early_kept / "salt" / "seed0" / "lab_eval.json.gz").exists() and not (tmp_path / "never").exists()
    monkeypatch.setattr(bench, "evaluate_run", lambda *a, **k: pytest.fail("evaluated twice"))
    bench.evaluate_reached_milestones([(2, str(early), str(early_kept))], str(training),
                                      str(training / "salt" / "seed0"), 4)
    monkeypatch.setattr(bench, "evaluate_run", real)
    ran = []
    import comfyui_salt.__main__ as cli
    monkeypatch.setattr(cli, "main", lambda a: ran.append(a))
    bench._share_starts(str(longer), str(short), ["causal"])
    assert bench.main(base + ["--out", str(short), "--updates", "2"]) == 0
    assert ran == []                                                  # the milestone is that arm × seed's result
    with pytest.raises(SystemExit, match="UPDATES:FOLDER"):
        bench.parse_milestone("x:runs/a")


def test_runs_kept_without_measurements_are_trained_again_apart_for_them(teacher_path, tmp_path, monkeypatch,
                                                                          capsys):
    """--remeasure: of an experiment whose runs came back from the repository, only those kept with their
    evaluation alone are trained again (same ODE init, seed and updates) in another folder, measured and kept
    there; that run's evaluation repeats the kept one, and the triplet, probe and mechanism tables read its
    measurements in place of the missing ones. On a new machine both come back without training anything."""
    import shutil
    import comfyui_salt.training.loop as common
    monkeypatch.setattr(common, "install_stop_handlers", lambda: None)
    bench = _bench()
    out, kept, again, kept_again = (tmp_path / n for n in ("exp", "kept", "again", "kept-again"))
    common_args = ["--teacher", teacher_path, "--seeds", "3", "--ode-updates", "2", "--clips", "4", "--resamples",
                   "20", "--in-process", "--arms", "sc2"] + [f"--set={k}={v}" for k, v in {**TINY, **TINY_ODE}.items()]
    first = common_args + ["--out", str(out), "--keep", str(kept), "--updates", "2"]
    assert bench.main(first) == 0
    want = json.loads((out / "sc2" / "seed1" / "lab_eval.json").read_text())
    for p in [*(kept / "sc2" / "seed1").iterdir(), *(kept / "sc2" / "seed2").iterdir()]:
        if p.name != "lab_eval.json.gz":                   # kept before measurements were: the evaluation only
            p.unlink()
    shutil.rmtree(out)
    assert bench.main(first) == 0                          # a new machine: restored, nothing trained
    assert bench.unmeasured(str(out / "sc2" / "seed1"), "sc2") == ["sc_triplets.json", "sc_mechanism.json",
                                                                   "metrics.jsonl"]
    assert bench.unmeasured(str(out / "sc2" / "seed0"), "sc2") == []
    # another --ode-updates: an init made here instead of shared from the experiment would change every evaluation
    remeasure = [("1" if a == "2" and common_args[i - 1] == "--ode-updates" else a) for i, a in enumerate(
        common_args)] + ["--out", str(again), "--keep", str(kept_again), "--remeasure", str(out)]
    for bad, words in ((["--updates", "3"], "made 2 updates, not --updates=3"),
                       (["--updates", "2", "--extend-from", str(out)], "pass one"),
                       (["--updates", "2", "--milestone", f"1:{tmp_path / 'm'}"], "drop --milestone"),
                       (["--updates", "2", "--out", str(out)], "the same folder as --out")):
        with pytest.raises(SystemExit, match=words):
            bench.main(remeasure + bad)
    assert bench.main(remeasure + ["--updates", "2"]) == 0
    assert not (again / "sc2" / "seed0").exists()          # measured where it ran: not trained again
    got = json.loads((again / "sc2" / "seed1" / "lab_eval.json").read_text())
    assert got["nfe"] == want["nfe"] and got["defect8"] == want["defect8"]   # the same run
    assert sorted(p.name for p in (kept_again / "sc2" / "seed1").iterdir()) == [
        "config.json.gz", "lab_eval.json.gz", "metrics.jsonl.gz", "sc_mechanism.json.gz", "sc_triplets.json.gz",
        "summary.json.gz"]
    assert not (kept_again / "ode-causal" / "student.safetensors").exists()   # the init is the experiment's
    trip = importlib.import_module("comfyui_salt.experiments.lab_sc_triplets")
    assert "| sc2 | 2 | 1 |" in trip.table(str(out)) and "| sc2 | 2 | 3 |" in trip.table(str(out), [str(again)])
    assert "| sc2 | 2 | 3 |" in trip.table(str(kept), [str(kept_again)])   # from the kept .gz files alone
    probes = importlib.import_module("comfyui_salt.experiments.lab_grad_probes")
    alone, both = probes.table(str(out), ["sc2"]), probes.table(str(out), ["sc2"], also=[str(again)])
    # (2 updates: a seed may log no probe, so the seed counts are not compared)
    assert "left out: sc2/seed1, sc2/seed2" in alone and "left out: sc2" not in both
    assert probes._run([str(out), str(again)], "sc2", "seed1") == str(again / "sc2" / "seed1")
    assert probes._run([str(out), str(again)], "sc2", "seed0") == str(out / "sc2" / "seed0")
    mech = importlib.import_module("comfyui_salt.experiments.lab_sc_mechanism")
    capsys.readouterr()
    runs = [str(out / "sc2" / "seed0"), str(out / "sc2" / "seed1"), str(again / "sc2" / "seed1"),
            str(again / "sc2" / "seed1")]
    assert mech.main(["--runs", *runs, *MECHANISM_SIZE]) == 0
    assert "| sc2 | 2 |" in capsys.readouterr().out       # seed 1 counted once
    shutil.rmtree(out)
    shutil.rmtree(again)                                    # a new machine again: both come back, nothing trains
    ran = []
    import comfyui_salt.__main__ as cli
    monkeypatch.setattr(cli, "main", lambda a: ran.append(a))
    assert bench.main(first) == 0 and bench.main(remeasure + ["--updates", "2"]) == 0
    assert ran == [] and (again / "sc2" / "seed1" / "kept.json").exists()
    assert "| sc2 | 2 | 3 |" in trip.table(str(out), [str(again)])
    # a new machine with one of them still to do: the init kept here without its student is shared again from the
    # experiment (not refused as a lost init beside runs kept from it), and only that run trains
    monkeypatch.undo()
    _smoke_mechanism(monkeypatch)
    monkeypatch.setattr(common, "install_stop_handlers", lambda: None)
    shutil.rmtree(out)
    shutil.rmtree(again)
    shutil.rmtree(kept_again / "sc2" / "seed2")
    assert bench.main(first) == 0 and bench.main(remeasure + ["--updates", "2"]) == 0
    assert (again / "sc2" / "seed1" / "kept.json").exists() and (again / "sc2" / "seed2" / "summary.json").exists()
    assert (again / "ode-causal" / "export" / "student.safetensors").read_bytes() == (
        out / "ode-causal" / "export" / "student.safetensors").read_bytes()
    assert (kept_again / "sc2" / "seed2" / "sc_triplets.json.gz").exists()
    # an init kept here is shared again only if it is the one the extended experiment has (same evaluation)
    ode = again / "ode-causal" / "lab_eval.json"
    assert bench._same_init(str(again / "ode-causal"), str(out / "ode-causal"))
    ode.write_text(json.dumps({**json.loads(ode.read_text()), "defect8": [0.0] * 8}))
    assert not bench._same_init(str(again / "ode-causal"), str(out / "ode-causal"))
