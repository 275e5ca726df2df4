"""Which semigroup defect does SC lower? The lab's students measured on the triplets L_SC trains and on the
consecutive triplets the lab's `defect8` reads (issue 13: the defect did not fall from λ_SC 2 to 20).

L_SC trains, at exit step s_i of an 8-step rollout, a triplet (s_i, s_m, s_e) whose end is on the 4-step grid ∪ {0}
(`salt_core.losses.sc_triplet`). `defect8` averages the consecutive triplets (s_k, s_k+1, s_k+2) of the 8-step grid:
those with even k end on the 4-step grid and are trained; those with odd k never are. For each finished run this
measures, on the same captions, noise and rollout states as the experiment's evaluation:
- `consecutive`: the mean over all consecutive triplets (the experiment's defect8),
- `trained consecutive` / `untrained consecutive`: even k / odd k,
- `SC-weighted`: every triplet SC can draw, weighted by how often a generator step that carries SC draws it
  (`training.distill_eval.sc_defect_samples`);
- `loss-weighted`: the same triplets also weighted by L_SC's factor 1 − σ_s (0 at the first exit, σ_s = 1), the
  exit levels L_SC weights most (its squared gap also scales with (σ_m − σ_e)², not weighted here);
- per exit level σ_s, the SC-weighted defect of that exit's triplets.
Means over seeds with 95 % Student-t intervals over the per-seed values (the lab's interval method,
`lab_tables.INTERVAL_METHOD`; the 3-seed file kept as `experiments/results/lab_sc_triplets.md` was made with the
earlier two-level bootstrap, which under-covers at 3 seeds), and each arm's paired ratios (per seed, the ratio of
the two runs' means on the same clips, noise and rollout states; t over seeds) to the claims' reference (`dmd`, or
`bidir-dmd` for the bidirectional arms) and, for the causal arms, to λ_SC = 0 (`sc0`).

```bash
.venv/bin/python experiments/lab_sc_triplets.py --out runs/lab-exp           # measure what is missing, print
.venv/bin/python experiments/lab_sc_triplets.py --out runs/lab-exp --arms sc20,sc2   # only these arms' runs
.venv/bin/python experiments/lab_sc_triplets.py --out runs/lab-exp --table   # print from the cached measurements
# the measurements kept in the repository (beside the experiment's evaluations): reprint without any run
.venv/bin/python experiments/lab_sc_triplets.py --out experiments/results/lab-exp --table
```
Per run the measurement is cached in `<run>/sc_triplets.json` (redone when missing, or when the clip count, the
run's update count or its evaluation noise changed: each seed on its own, lab_arms.eval_seed; the kept 3-seed
file was measured with one noise for every seed).
"""
import argparse
import json
import os

import torch

from comfyui_salt.experiments import lab_arms   # the experiment's reference arms, noise seed and defect grid
from comfyui_salt.experiments.lab_eval import round6
from comfyui_salt.experiments.lab_arms import TRIPLET_ARMS as ARMS   # the arms measured
from comfyui_salt.experiments.lab_keep import is_restored, measured_in, read_json, write_gzip_json

BASE = "sc0"   # λ_SC = 0: K = 8 alone (causal); the claims' reference (dmd, bidir-dmd) is the other baseline
COLUMNS = ("consecutive", "trained consecutive", "untrained consecutive", "SC-weighted", "loss-weighted")


def _gen_updates(run_dir: str):
    """The generator updates a finished run made (its summary.json), or None."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("gen_updates")


@torch.no_grad()
def measure(run_dir: str, clips: int) -> dict:
    """Per-clip defects of one finished run on its seed's evaluation noise (lab_arms.eval_seed), cached in
    `<run>/sc_triplets.json` (redone when the clip count, the run's update count or the noise seed differs):
    {"consecutive": [[(σ_s, σ_m, σ_e), [B]], ...], "sc": [[triplet, p, [B]], ...]}."""
    from comfyui_salt.toy.lab.world import LabTextEncoder
    from comfyui_salt.toy.prompts import lab_eval_captions
    from comfyui_salt.toy.worlds import get_world
    from comfyui_salt.training.job_configs import as_distill_config, read_run_config
    from comfyui_salt.training.distill_eval import defect_samples, sc_defect_samples
    from comfyui_salt.weights.files import load_model
    path = os.path.join(run_dir, "sc_triplets.json")
    if os.path.exists(path):
        with open(path) as f:
            done = json.load(f)
        if done.get("clips") == clips and done.get("gen_updates") == _gen_updates(run_dir) and done.get(
                "noise_seed") == lab_arms.eval_seed(done.get("seed", 0)):
            return done
    cfg = as_distill_config(read_run_config(run_dir))   # an ODE initialisation's: how its student samples
    model = load_model(os.path.join(run_dir, "export", "student.safetensors"))[0].eval()
    lab = get_world(cfg.world).lab
    caps = lab_eval_captions(lab, clips)
    ctx = LabTextEncoder(lab, model.cfg.text_dim, model.cfg.text_len).encode(caps)
    cons, dc = defect_samples(model, cfg, ctx, grid_steps=lab_arms.DEFECT_GRID, seed=lab_arms.eval_seed(cfg.seed))
    trip, p, ds = sc_defect_samples(model, cfg, ctx, seed=lab_arms.eval_seed(cfg.seed))
    out = {"sc_weight": cfg.sc_weight, "seed": cfg.seed, "noise_seed": lab_arms.eval_seed(cfg.seed), "clips": clips,
           "gen_updates": _gen_updates(run_dir),
           "consecutive": [[list(t), round6(row)] for t, row in zip(cons, dc)],
           "sc": [[list(t), float(q), round6(row)] for t, q, row in zip(trip, p.tolist(), ds)]}
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(path + ".tmp", path)
    return out


def _key(triplet) -> tuple:
    """A triplet of σ as a hashable key, robust to float formatting."""
    return tuple(round(float(x), 9) for x in triplet)


def per_clip(m: dict) -> dict:
    """{column: (B,) float64} of one run's measurement: the COLUMNS (a consecutive triplet is "trained" when SC can
    draw it), and per exit level "σ_s=<level>" the SC-weighted defect of that exit's triplets."""
    cons = [(t, torch.tensor(row, dtype=torch.float64)) for t, row in m["consecutive"]]
    sc = [(t, q, torch.tensor(row, dtype=torch.float64)) for t, q, row in m["sc"]]
    drawn = {_key(t) for t, _, _ in sc}
    trained = [row for t, row in cons if _key(t) in drawn]
    untrained = [row for t, row in cons if _key(t) not in drawn]
    loss_w = [(1.0 - t[0]) * q for t, q, _ in sc]                    # L_SC's (1 − σ_s) weight × draw frequency
    nan = torch.full_like(cons[0][1], float("nan"))
    out = {"consecutive": torch.stack([r for _, r in cons]).mean(0),
           "trained consecutive": torch.stack(trained).mean(0) if trained else nan,
           "untrained consecutive": torch.stack(untrained).mean(0) if untrained else nan,
           "SC-weighted": sum(q * r for _, q, r in sc),
           "loss-weighted": sum(w * r for w, (_, _, r) in zip(loss_w, sc)) / sum(loss_w) if sum(loss_w) else nan}
    for level in sorted({t[0] for t, _, _ in sc}, reverse=True):
        rows = [(q, r) for t, q, r in sc if t[0] == level]
        out[f"σ_s={level:.3f}"] = sum(q * r for q, r in rows) / sum(q for q, _ in rows)
    return out


def _fmt(iv) -> str:
    from comfyui_salt.experiments.lab_tables import fmt_interval
    return fmt_interval(iv, 4)


def _mean(vals: list):
    """The mean over seeds of per-clip values [(B,), ...] (one tensor per seed) with its t interval over the seeds'
    means."""
    from comfyui_salt.salt_core.metrics.bootstrap import seed_t_interval
    return seed_t_interval([v.mean().item() for v in vals])


def _ratio(a: list, b: list):
    """mean(a) / mean(b) per seed (the same clips in both: paired), with the t interval over the seeds' ratios."""
    from comfyui_salt.salt_core.metrics.bootstrap import seed_t_interval
    return seed_t_interval([(x.mean() / y.mean()).item() for x, y in zip(a, b)])


def _seeds(folders, arm: str) -> list:
    """The seed folder names of `arm` in any of `folders`, in seed order."""
    names = {n for f in folders if os.path.isdir(os.path.join(f, arm))
             for n in os.listdir(os.path.join(f, arm)) if n.startswith("seed") and n[4:].isdigit()}
    return sorted(names, key=lambda n: int(n[4:]))


def load(out: str, also=()) -> tuple:
    """({arm: {seed: per_clip columns}}, {arm: λ_SC}) of every measured run under `out`; a run measured there
    neither (kept with its evaluation only) is read from the first of `also` that has it (the same run trained
    again for its measurements: lab_experiment.py --remeasure)."""
    runs, weights = {}, {}
    for arm in ARMS:
        for name in _seeds((out, *also), arm):
            path = measured_in((out, *also), os.path.join(arm, name), "sc_triplets.json")
            m = read_json(path) if path else None
            if m is not None:
                runs.setdefault(arm, {})[int(name[4:])] = per_clip(m)
                weights[arm] = m["sc_weight"]
    return runs, weights


def export(out: str, dest: str) -> int:
    """Copy every measurement under `out` to `dest` in the same layout, gzipped (`--out dest --table` reprints the
    tables); returns how many were written."""
    n = 0
    for arm in ARMS:
        d = os.path.join(out, arm)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            m = read_json(os.path.join(d, name, "sc_triplets.json")) if name.startswith("seed") else None
            if m is not None:
                os.makedirs(os.path.join(dest, arm, name), exist_ok=True)
                write_gzip_json(os.path.join(dest, arm, name, "sc_triplets.json.gz"), m)
                n += 1
    return n


def table(out: str, also=(), versus: str = "") -> str:
    """Markdown: per arm, each column's mean over seeds [95 % t interval] and its paired ratios (seeds paired in
    brackets) to the claims' reference of its student kind and, for causal arms, to BASE; then the SC-weighted
    defect per exit level σ_s, with L_SC's weight 1 − σ_s there, and for causal arms its paired ratio to BASE's
    (and, given `versus`, to that arm's too: consecutive defect and each level). Runs measured only in a folder of
    `also` are read from there (load)."""
    runs, weights = load(out, also)
    if not runs:
        return "no measured runs yet"
    ratios = [(col, base) for base in ("ref", BASE) for col in ("consecutive", "loss-weighted")]
    head = (["arm", "λ_SC", "seeds"] + list(COLUMNS)
            + [f"{col} / {'dmd or bidir-dmd' if base == 'ref' else base}" for col, base in ratios])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, by_seed in runs.items():
        seeds = sorted(by_seed)
        cells = [arm, f"{weights[arm]:g}", str(len(seeds))]
        cells += [_fmt(_mean([by_seed[s][col] for s in seeds])) for col in COLUMNS]
        for col, base in ratios:
            kind = lab_arms.student_kind(arm)
            ref = lab_arms.REFERENCE[kind] if base == "ref" else BASE if kind == "causal" else None
            paired = [s for s in seeds if s in runs.get(ref, {})]
            cells.append("" if arm == ref or not paired else _fmt(_ratio(
                [by_seed[s][col] for s in paired], [runs[ref][s][col] for s in paired]))
                + f" ({len(paired)})")
        lines.append("| " + " | ".join(cells) + " |")
    levels = [k for k in next(iter(next(iter(runs.values())).values())) if k.startswith("σ_s=")]
    head = ["arm", "λ_SC", "seeds"] + [f"{k} (1 − σ_s = {1 - float(k[4:]):.2f})" for k in levels]
    lines += ["", "SC-weighted defect per exit level σ_s (L_SC's weight there in brackets):", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, by_seed in runs.items():
        seeds = sorted(by_seed)
        cells = [arm, f"{weights[arm]:g}", str(len(seeds))]
        cells += [_fmt(_mean([by_seed[s][k] for s in seeds])) for k in levels]
        lines.append("| " + " | ".join(cells) + " |")
    rows = _ratio_rows(runs, weights, BASE, levels)
    if rows:
        lines += ["", f"The same per exit level, as a ratio to {BASE} (λ_SC = 0; paired by seed, clip and rollout "
                      "state):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + rows
    if versus:
        rows = _ratio_rows(runs, weights, versus, ["consecutive"] + levels)
        lines += ["", f"The consecutive defect and each exit level as a ratio to {versus} (paired by seed, clip and "
                      f"rollout state):", "", "| " + " | ".join(head[:3] + ["consecutive"] + head[3:]) + " |",
                  "|" + "---|" * (len(head) + 1)] + (rows or [f"| (no causal arm shares a measured seed with "
                                                               f"{versus}) |"])
    return "\n".join(lines)


def _ratio_rows(runs: dict, weights: dict, base_arm: str, columns: list) -> list:
    """Markdown rows: each causal arm's `columns` as ratios to `base_arm`'s, paired by seed (the seeds both have)."""
    base, rows = runs.get(base_arm, {}), []
    for arm, by_seed in runs.items():
        paired = [s for s in sorted(by_seed) if s in base]
        if arm == base_arm or lab_arms.student_kind(arm) != "causal" or not paired:
            continue
        cells = [arm, f"{weights[arm]:g}", str(len(paired))]
        cells += [_fmt(_ratio([by_seed[s][k] for s in paired], [base[s][k] for s in paired])) for k in columns]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv=None):
    """Measure every finished run of ARMS under --out that lacks a current measurement (unless --table); print."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the experiment's output folder (runs/lab-exp)")
    p.add_argument("--table", action="store_true", help="print from the cached measurements only")
    p.add_argument("--export", default="", metavar="DIR", help="also copy the measurements, gzipped, to DIR (what the "
                                                              "repository keeps; --out DIR --table reprints)")
    p.add_argument("--clips", type=int, default=48, help="clips per run (the experiment's evaluation: 48)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms whose runs to measure (the table "
                   "reads every measured arm)")
    p.add_argument("--also", action="append", default=[], metavar="DIR", help="an experiment folder whose runs "
                   "stand in for --out's runs kept without their measurement (lab_experiment.py --remeasure); "
                   "the table reads them, --export copies only --out's")
    p.add_argument("--versus", default="", metavar="ARM", help="also print each causal arm's defect as a ratio to "
                   "this arm's, paired by seed (e.g. sc20 beside sc20-low)")
    args = p.parse_args(argv)
    if args.versus and args.versus not in ARMS:
        raise SystemExit(f"--versus {args.versus!r}: not a measured arm; expected one of {','.join(ARMS)}")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms {args.arms!r}: unknown {unknown}; expected some of {','.join(ARMS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.table:
        for arm in arms:
            d = os.path.join(args.out, arm)
            for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
                run = os.path.join(d, name)
                if name.startswith("seed") and os.path.exists(os.path.join(run, "summary.json")):
                    if is_restored(run):   # kept from an earlier machine: its measurement is what was kept
                        continue
                    measure(run, args.clips)
                    print(f"measured {run}", flush=True)
    if args.export:
        print(f"exported {export(args.out, args.export)} measurements to {args.export}")
    print(table(args.out, args.also, args.versus))


if __name__ == "__main__":
    main()
