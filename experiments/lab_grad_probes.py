"""Issue 27, the mechanism of the λ response over training: how strongly and in which direction the SC term pulls
against DMD, per update, from the gradient probes every SC run logs (training/diagnostics.py: `sc_dmd_grad_ratio`
= ‖∇(λ·L_SC)‖ / ‖∇L_DMD‖ and `sc_dmd_grad_cos` = cos(∇L_SC, ∇L_DMD), both at the exit step's velocity, in
metrics.jsonl).

    .venv/bin/python experiments/lab_grad_probes.py --out runs/lab-exp8 --arms sc-dmd,sc2,sc20,sc2-sym,salt
    # runs kept without their metrics, read from their runs trained again (lab_experiment.py --remeasure)
    .venv/bin/python experiments/lab_grad_probes.py --out runs/lab-exp8 --also runs/lab-exp8-m

Per arm, two tables of seed means with Student's t intervals over seeds (salt_core.metrics.bootstrap.
seed_t_interval; each seed's value is the mean over its updates in the cell): over training (the run's updates cut
into `--windows` equal spans) and by the exit level σ_s of the update (where on the K = 8 grid the SC triplet
starts). Updates whose triplet starts at σ_s = 1 are left out: L_SC's weight 1 − σ_s (docs/method.md §2) is 0
there, so the term has no gradient (the probes log 0). Reads only metrics.jsonl: no model runs, seconds of CPU.
"""
import argparse
import json
import math
import os

from comfyui_salt.experiments.lab_arms import PROBE_ARMS
from comfyui_salt.experiments.lab_keep import is_restored
from comfyui_salt.salt_core.metrics.bootstrap import seed_t_interval
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep

PROBES = ("sc_dmd_grad_cos", "sc_dmd_grad_ratio")


def read_probes(run_dir: str) -> list:
    """[(gen_step, K, exit index, {probe: value})] of the updates of one run whose SC term acted (probes logged)
    with a non-zero weight (its triplet starts below σ = 1), in update order. A run resumed from a checkpoint
    redoes the updates after it and logs them again (on CPU with the same values): each update counts once, as its
    last training record."""
    kept = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "K" in r and "gen_step" in r:                     # a training record (evaluations have no K)
                kept[int(r["gen_step"])] = r
    return [(step, int(r["K"]), int(r["exit"]), {p: float(r[p]) for p in PROBES}) for step, r in sorted(kept.items())
            if all(r.get(p) is not None for p in PROBES) and r.get("sc_sigma_s", 0.0) < 1.0]


def _cells(rows: list, key) -> dict:
    """{cell: {probe: mean over the run's updates in that cell}} for cell = key(row)."""
    acc = {}
    for row in rows:
        cell = acc.setdefault(key(row), {p: [] for p in PROBES})
        for p in PROBES:
            cell[p].append(row[3][p])
    return {c: {p: sum(v) / len(v) for p, v in d.items()} for c, d in acc.items()}


def summarise(runs: list, windows: int, shift: float) -> dict:
    """{"window": {(lo, hi): {probe: Interval}}, "exit": {σ_s: {probe: Interval}}} over the seed runs `runs`
    (lists of read_probes rows): one value per seed and cell, then t intervals over the seeds that have the cell."""
    last = max((r[0] for rows in runs for r in rows), default=0)
    span = max(1, math.ceil(last / windows))

    def window(row):
        lo = (row[0] - 1) // span * span + 1
        return lo, min(lo + span - 1, last)

    def exit_sigma(row):
        return round(float(get_sigmas_fewstep(row[1], shift)[row[2]]), 4)

    out = {}
    for name, key in (("window", window), ("exit", exit_sigma)):
        per_seed = [_cells(rows, key) for rows in runs]
        cells = sorted({c for d in per_seed for c in d})
        out[name] = {c: {p: seed_t_interval([d[c][p] for d in per_seed if c in d]) for p in PROBES} for c in cells}
    return out


def _fmt(iv) -> str:
    if math.isnan(iv.lo):
        return f"{iv.mean:+.4f} (n={iv.n})"
    return f"{iv.mean:+.4f} [{iv.lo:+.4f}, {iv.hi:+.4f}] (n={iv.n})"


def _run(folders, arm: str, seed: str):
    """The run folder of `arm`/`seed` whose probes to read: the first of `folders` where it finished (summary.json)
    and is not a copy kept without its metrics; None if there is none."""
    for folder in folders:
        run = os.path.join(folder, arm, seed)
        if os.path.exists(os.path.join(run, "summary.json")) and not (
                is_restored(run) and not os.path.exists(os.path.join(run, "metrics.jsonl"))):
            return run
    return None


def table(out: str, arms: list, windows: int = 3, shift: float = 3.0, also=()) -> str:
    """Markdown: per arm, the probes over training and by exit level, from its finished runs (summary.json written:
    a run still training would leave its later windows short); arms without probes and unfinished runs are listed.
    A run of `out` kept without its metrics is read from the first folder of `also` where it finished (the same run
    trained again for its measurements: lab_experiment.py --remeasure)."""
    lines, missing, unfinished, lost = [], [], [], []
    for arm in arms:
        root = os.path.join(out, arm)
        seeds = sorted(d for d in os.listdir(root) if d.startswith("seed")) if os.path.isdir(root) else []
        found = {s: _run((out, *also), arm, s) for s in seeds}
        gone = [s for s in seeds if not found[s] and is_restored(os.path.join(root, s))]
        lost += [f"{arm}/{s}" for s in gone]
        done = [s for s in seeds if found[s]]
        unfinished += [f"{arm}/{s}" for s in seeds if s not in done and s not in gone]
        runs = [read_probes(found[s]) for s in done]
        runs = [r for r in runs if r]
        if not runs:
            missing.append(arm)
            continue
        s = summarise(runs, windows, shift)
        lines += [f"### {arm} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", "",
                  "| updates | cos(∇L_SC, ∇L_DMD) | ‖∇λL_SC‖ / ‖∇L_DMD‖ |", "|---|---|---|"]
        lines += [f"| {lo}–{hi} | {_fmt(v['sc_dmd_grad_cos'])} | {_fmt(v['sc_dmd_grad_ratio'])} |"
                  for (lo, hi), v in s["window"].items()]
        lines += ["", "| exit σ_s | cos | ratio |", "|---|---|---|"]
        lines += [f"| {sig:.4f} | {_fmt(v['sc_dmd_grad_cos'])} | {_fmt(v['sc_dmd_grad_ratio'])} |"
                  for sig, v in sorted(s["exit"].items(), reverse=True)]
        lines.append("")
    head = ["Seed means over each cell's updates; Student's t 95 % interval over seeds (seed_t_interval; n = seeds "
            "with updates in the cell; one seed: no interval). Updates whose SC triplet starts at σ_s = 1 are left "
            "out (weight 1 − σ_s = 0: no SC gradient).", ""]
    tail = [f"No probes yet: {', '.join(missing)}."] if missing else []
    tail += [f"Unfinished, left out: {', '.join(unfinished)}."] if unfinished else []
    tail += [f"Kept from an earlier machine without their metrics, left out: {', '.join(lost)}."] if lost else []
    return "\n".join(head + lines + tail)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the lab runner's --out (arm/seedN run folders)")
    p.add_argument("--arms", default=",".join(PROBE_ARMS), help="comma-separated arms with an SC term")
    p.add_argument("--windows", type=int, default=3, help="equal spans of updates over training")
    p.add_argument("--shift", type=float, default=3.0, help="the runs' grid shift (the lab's: 3)")
    p.add_argument("--also", action="append", default=[], metavar="DIR", help="an experiment folder whose runs "
                   "stand in for --out's runs kept without their metrics (lab_experiment.py --remeasure)")
    args = p.parse_args(argv)
    if args.windows < 1:
        raise SystemExit(f"--windows {args.windows}: expected a count >= 1")
    print(table(args.out, [a for a in args.arms.split(",") if a], args.windows, args.shift, args.also))


if __name__ == "__main__":
    main()
