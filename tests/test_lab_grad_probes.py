"""experiments/lab_grad_probes.py: per-seed means of the logged SC/DMD gradient probes, by training window and by
exit level, with Student's t intervals over seeds (checked against the closed form with t(0.975, 2) = 4.302653)."""
import json
import math

import pytest

from comfyui_salt.experiments.lab_grad_probes import read_probes, summarise, table
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep

T_975_2 = 4.302652729911275   # Student's t quantile, 2 degrees of freedom


def write_run(path, rows, finished=True):
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    if finished:                                                     # the job writes summary.json when it ends
        (path / "summary.json").write_text(json.dumps({"gen_updates": len(rows)}))


def probe_row(step, exit_index, cos, ratio, K=8):
    sigma_s = float(get_sigmas_fewstep(K, 3.0)[exit_index])
    return {"gen_step": step, "K": K, "exit": exit_index, "sc_sigma_s": sigma_s, "sc_dmd_grad_cos": cos,
            "sc_dmd_grad_ratio": ratio}


@pytest.fixture
def lab_out(tmp_path):
    """Three seeds of one arm: six updates each, two per window; exit 0 (σ_s = 1, weight 0) logs zeros."""
    for seed, shift in enumerate((0.0, 0.1, 0.3)):
        rows = [{"gen_step": 8, "K": 4, "exit": 1, "dmd_loss": 0.1}]                   # no SC: no probes
        rows += [probe_row(step, 2 + step % 2, 0.1 * step + shift, 0.01 * step) for step in range(1, 7)]
        rows.append(probe_row(7, 0, 0.0, 0.0))                                        # σ_s = 1: left out
        write_run(tmp_path / "sc2" / f"seed{seed}", rows)
    return tmp_path


def closed_form(values):
    n, mean = len(values), sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975_2 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def test_windows_and_exit_levels_are_seed_means_with_t_intervals(lab_out):
    runs = [read_probes(str(lab_out / "sc2" / f"seed{s}")) for s in range(3)]
    assert [len(r) for r in runs] == [6, 6, 6]                       # the σ_s = 1 and the no-SC rows are out
    s = summarise(runs, windows=3, shift=3.0)
    assert list(s["window"]) == [(1, 2), (3, 4), (5, 6)]
    # window 1–2: per seed the mean of cos at steps 1 and 2 = 0.15 + shift
    iv = s["window"][(1, 2)]["sc_dmd_grad_cos"]
    mean, lo, hi = closed_form([0.15, 0.25, 0.45])
    assert (iv.mean, iv.lo, iv.hi, iv.n) == pytest.approx((mean, lo, hi, 3))
    # exit level of index 3 (odd steps 1, 3, 5): ratio mean 0.03 in every seed: seeds that tie read no spread
    sigma3 = round(float(get_sigmas_fewstep(8, 3.0)[3]), 4)
    iv = s["exit"][sigma3]["sc_dmd_grad_ratio"]
    assert iv.mean == pytest.approx(0.03) and iv.n == 3 and math.isnan(iv.lo) and math.isnan(iv.hi)
    assert 1.0 not in s["exit"]


def test_an_update_redone_after_a_resume_counts_once_as_its_last_record(tmp_path):
    # the run logged steps 1-3, was killed, resumed from its checkpoint at step 1 and logged steps 2-3 again (on CPU
    # a redo repeats its draws; here the records differ, to show which one counts): each update counts once, as its
    # last record, so step 2 (no SC on the redo) drops out and step 3 is the redo's
    rows = [probe_row(1, 2, 0.1, 0.01), probe_row(2, 3, 0.9, 0.9), probe_row(3, 2, 0.9, 0.9),
            {"gen_step": 2, "K": 4, "exit": 1, "dmd_loss": 0.1}, probe_row(3, 3, 0.3, 0.03),
            {"gen_step": 3, "eval": {"nfe4": {}}}]
    write_run(tmp_path / "run", rows)
    got = read_probes(str(tmp_path / "run"))
    assert [(step, exit_index, p["sc_dmd_grad_cos"]) for step, _, exit_index, p in got] == [(1, 2, 0.1), (3, 3, 0.3)]


def test_the_table_prints_each_arm_and_names_those_without_probes(lab_out):
    text = table(str(lab_out), ["sc2", "sc20"], windows=3)
    mean, lo, hi = closed_form([0.15, 0.25, 0.45])
    assert f"| 1–2 | {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] (n=3) |" in text
    assert "### sc2 (3 seeds)" in text and "No probes yet: sc20." in text


def test_a_run_still_training_is_left_out_and_named(lab_out):
    write_run(lab_out / "sc2" / "seed3", [probe_row(1, 2, 5.0, 5.0)], finished=False)
    text = table(str(lab_out), ["sc2"], windows=3)
    mean, lo, hi = closed_form([0.15, 0.25, 0.45])
    assert f"| 1–2 | {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] (n=3) |" in text      # seed3's 5.0 is not in it
    assert "### sc2 (3 seeds)" in text and "Unfinished, left out: sc2/seed3." in text
