"""The Salt experiment on the toy world (issue: distillation). Not a test: hours of CPU; resumable.

    .venv/bin/python experiments/distill_experiment.py --out runs/experiment [--gen-steps 200] [--eval-only]
    .venv/bin/python experiments/distill_experiment.py --out runs/experiment --ship-student ar-salt

The last run's table: experiments/results/distill_experiment.md.

Runs, with the same number of generator updates and the same seeds:
  ODE-pair init (causal and bidirectional students) from the shipped toy teacher, then
  bidirectional arm: DMD (4-step grid) and SC-DMD (8-step grid, 4-step inference);
  autoregressive arm: Self-Forcing DMD (K = 4), SC on a single K (K = 8), Salt (mixed K + SC + alignment);
and prints one table: oracle metrics at 4 and 2 NFE, semigroup defect, drift slope on a 3×-length
rolling-cache rollout, wall time. Do not run beside other CPU jobs if you read the wall times.
"""
import argparse
import json
import os
import time

import torch

from comfyui_salt.toy.metrics.frechet import reference_features
from comfyui_salt.toy.metrics.score import format_table, score_table
from comfyui_salt.toy.text import ToyTextEncoder
from comfyui_salt.toy.world import TOY_SHIFT
from comfyui_salt.toy.worlds import get_world
from comfyui_salt.training.loop import install_stop_handlers
from comfyui_salt.toy.jobs import distill_world
from comfyui_salt.training.distill import run_distillation
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.training.job_configs import as_distill_config
from comfyui_salt.training.ode_init import run_ode_init
from comfyui_salt.training.ode_init_config import ODE_INIT_PRESETS, get_ode_init_preset
from comfyui_salt.salt_core.metrics.bootstrap import bootstrap_ci
from comfyui_salt.toy.evaluate import drift_slopes
from comfyui_salt.training.distill_eval import defect_report, format_defect_report, sample_student
from comfyui_salt.weights.files import export_student, load_model
from comfyui_salt.toy.prompts import eval_prompts
from comfyui_salt.training.teacher import sample_teacher
from comfyui_salt.toy.shipped import TOY_STUDENT, load_toy_teacher, write_toy_student

ARMS = [  # (run name, preset, student init run, arm)
    ("ode-causal", "toy-ode-init", None, "init"),
    ("ode-bidir", "toy-ode-init", None, "init"),
    ("bidir-dmd", "toy-bidir-dmd", "ode-bidir", "bidirectional"),
    ("bidir-sc-dmd", "toy-bidir-sc-dmd", "ode-bidir", "bidirectional"),
    ("ar-dmd", "toy-dmd", "ode-causal", "autoregressive"),
    ("ar-sc-single-k", "toy-sc-dmd", "ode-causal", "autoregressive"),
    ("ar-salt", "toy-salt", "ode-causal", "autoregressive"),
]
# The toy critic-lr sweep (issue: official-recipe fidelity): Salt arms that differ from ar-salt only in lr_critic.
# Trained only when named in --train-only (not part of the default run).
# ar-salt itself is the preset's value (1e-4, the sweep's choice).
SWEEP = {"ar-salt-critic-4e-6": {"lr_critic": 4e-6}, "ar-salt-critic-2e-5": {"lr_critic": 2e-5}}
ARMS += [(name, "toy-salt", "ode-causal", "autoregressive") for name in SWEEP]


def run_arm(name, preset, init, out, gen_steps, batch, threads, ode_steps, ode_pairs):
    overrides = {"batch_size": batch, "threads": threads}
    ode = preset in ODE_INIT_PRESETS
    if ode:
        overrides.update(student_kind="bidirectional" if name.endswith("bidir") else "causal", gen_steps=ode_steps,
                         ode_pairs=ode_pairs)
        cfg = get_ode_init_preset(preset, **overrides)
    else:
        overrides.update(gen_steps=gen_steps, student_init=os.path.join(out, init, "export", "student.safetensors"),
                         eval_every=0)
        if name.startswith("bidir"):
            overrides["student_kind"] = "bidirectional"
        cfg = get_preset(preset, **overrides, **SWEEP.get(name, {}))
    run_dir = os.path.join(out, name)
    shared = os.path.join(out, "ode-causal", "ode_pairs.safetensors")
    if name == "ode-bidir" and os.path.exists(shared) and not os.path.exists(os.path.join(run_dir, "ode_pairs.safetensors")):
        # the teacher's trajectories do not depend on the student kind: generate them once
        os.makedirs(run_dir, exist_ok=True)
        os.link(shared, os.path.join(run_dir, "ode_pairs.safetensors"))
    t = time.time()
    try:
        model = (run_ode_init if ode else run_distillation)(cfg, run_dir, world=distill_world())
    finally:   # a stopped arm (Ctrl-C / kill save a checkpoint first) keeps the time it spent
        total = add_wall_time(run_dir, time.time() - t)
    export_student(model, run_dir)
    return as_distill_config(cfg), total   # an ODE initialisation's: how its student samples


def add_wall_time(run_dir, seconds):
    """Accumulate this call's wall time in <run>/wall_seconds.json (an interrupted arm resumes and adds on)."""
    path = os.path.join(run_dir, "wall_seconds.json")
    total = wall_time(run_dir) if os.path.exists(path) else 0.0
    with open(path, "w") as f:
        json.dump({"seconds": total + seconds}, f)
    return total + seconds


def wall_time(run_dir):
    path = os.path.join(run_dir, "wall_seconds.json")
    if not os.path.exists(path):
        return float("nan")
    with open(path) as f:
        return float(json.load(f)["seconds"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/experiment")
    ap.add_argument("--gen-steps", type=int, default=200, help="generator updates per DMD arm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-clips", type=int, default=64)
    ap.add_argument("--ode-steps", type=int, default=1000, help="ODE-regression steps of each initialisation")
    ap.add_argument("--ode-pairs", type=int, default=512, help="teacher trajectories for the ODE initialisation")
    ap.add_argument("--drift-clips", type=int, default=16, help="prompts of the 3×-length drift rollouts")
    ap.add_argument("--defect-clips", type=int, default=64,
                    help="prompts of the semigroup-defect report (64: interval < 10 %% of the mean on the shipped "
                         "student; see docs/toy_world.md)")
    ap.add_argument("--arms", nargs="*", default=None, metavar="ARM",
                    help="evaluate only these arms (default all); 'shipped' is the shipped Salt toy student")
    ap.add_argument("--eval-only", action="store_true", help="skip training; evaluate the exported students")
    ap.add_argument("--train-only", nargs="*", default=None, metavar="ARM",
                    help="train only these arms (all if none named) and skip the evaluation, e.g. ode-causal ode-bidir")
    ap.add_argument("--ship-student", default=None, metavar="ARM",
                    help="copy that arm's exported student to the shipped asset (toy/assets) and stop")
    args = ap.parse_args()
    if args.ship_student:
        preset = {name: p for name, p, _, _ in ARMS}[args.ship_student]
        run_dir = os.path.join(args.out, args.ship_student)
        with open(os.path.join(run_dir, "config.json")) as f:
            gen_steps = json.load(f)["gen_steps"]
        print(write_toy_student(os.path.join(run_dir, "export", "student.safetensors"), TOY_STUDENT, preset, gen_steps))
        return
    torch.set_num_threads(args.threads)
    install_stop_handlers()   # Ctrl-C / kill: the running arm saves at a step boundary; rerun to resume
    cfgs = {}
    for name, preset, init, arm in ARMS:
        if args.train_only and name not in args.train_only or (name in SWEEP and not args.train_only
                                                                  and not os.path.isdir(os.path.join(args.out, name))):
            continue
        if args.eval_only:
            kind = "bidirectional" if "bidir" in name else "causal"
            if preset in ODE_INIT_PRESETS:
                cfgs[name] = as_distill_config(get_ode_init_preset(preset, student_kind=kind))
            else:
                cfgs[name] = get_preset(preset, student_kind=kind, **SWEEP.get(name, {}))
        else:
            cfgs[name], _ = run_arm(name, preset, init, args.out, args.gen_steps, args.batch, args.threads,
                                    args.ode_steps, args.ode_pairs)
    if args.train_only is not None:
        return

    world = get_world("default").cfg
    teacher, mode, source = load_toy_teacher()
    enc = ToyTextEncoder(text_dim=teacher.cfg.text_dim, max_tokens=teacher.cfg.text_len, world=world)
    caps = eval_prompts(world, args.eval_clips)
    ctx = enc.encode(caps)
    ref = reference_features(world, 512)
    rows = {}
    t = time.time()

    clip_scores = {}   # arm -> {nfe: per-prompt toy scores}, for paired differences

    def scored(row, nfe, videos, name=None):
        s, clips = score_table(videos, caps, world, ref, return_clips=True)
        row[f"ci_toy_score@{nfe}"] = bootstrap_ci(clips)
        if name is not None:
            clip_scores.setdefault(name, {})[nfe] = torch.as_tensor(clips, dtype=torch.float64)
        for k in ("toy_score", "sharpness_error", "adherence", "direction_ok", "smoothness_px", "dynamic_px",
                  "frechet"):
            row[f"{k}@{nfe}"] = s[k]
    if args.arms is None:   # the teacher's row (40 / 4 / 2 Euler steps + CFG) only in the full table
        teacher_row = {}
        for steps, col in ((40, 40), (4, 4), (2, 2)):
            scored(teacher_row, col, sample_teacher(teacher, mode, caps, enc, world, steps=steps, cfg_scale=3.0,
                                                    shift=TOY_SHIFT))
        rows["teacher (@N: N Euler steps + CFG)"] = {k: v for k, v in teacher_row.items() if not k.startswith("ci_")}
    evaluated = [(n, p, a) for n, p, _, a in ARMS if n in cfgs] + [("shipped", "toy-salt", "shipped Salt student")]
    defects, intervals = {}, {}
    for name, preset, arm in evaluated:
        if args.arms is not None and name not in args.arms:
            continue
        if name == "shipped":
            cfg, path = get_preset(preset), TOY_STUDENT
        else:
            cfg, path = cfgs[name], os.path.join(args.out, name, "export", "student.safetensors")
        model, _ = load_model(path)
        model.eval()
        row = {}
        for nfe in (4, 2):
            scored(row, nfe, sample_student(model, cfg, ctx, nfe), name)
        defects[name] = defect_report(model, cfg, ctx[:args.defect_clips], grids=(8, 4, 2))
        row["defect"] = defects[name][8]["mean"].mean
        n = args.drift_clips
        drift = drift_slopes(model, cfg, caps[:n], ctx[:n], nfe=4)
        row["drift_slope_sharp"] = drift["sharpness_error"][1]
        row["train_s"] = wall_time(os.path.join(args.out, name))
        summary = os.path.join(args.out, name, "summary.json")
        if os.path.exists(summary):
            with open(summary) as f:
                s = json.load(f)
            row["sc_updates"], row["align_updates"] = s["sc_updates"], s["align_updates"]
        rows[f"{arm}: {name}"] = row
        intervals[name] = {k: row.pop(k) for k in list(row) if k.startswith("ci_")}
        with open(os.path.join(args.out, f"eval_{name}.json"), "w") as f:   # small per-arm record, committed
            json.dump({"row": row, "intervals": {k: v.__dict__ for k, v in intervals[name].items()},
                       "defects": {g: {"mean": r["mean"].__dict__,
                                       "triplets": [[list(t), ci.__dict__] for t, ci in r["triplets"]]}
                                   for g, r in defects[name].items()}}, f, indent=1)
    cols = ["toy_score@40", "toy_score@4", "toy_score@2", "sharpness_error@4", "sharpness_error@2", "adherence@4",
            "adherence@2", "direction_ok@4", "smoothness_px@4", "dynamic_px@4", "frechet@4", "frechet@2", "defect",
            "drift_slope_sharp", "sc_updates", "align_updates", "train_s"]
    print(f"\nteacher: {source}; {args.eval_clips} prompts; eval {time.time() - t:.0f} s; columns @N: at N NFE "
          f"(the teacher's Euler steps with CFG); defect on the 8-step grid; drift slope of sharpness error per "
          f"frame over a 3×-length rolling-cache rollout at 4 NFE; train_s: wall seconds of the arm\n")
    print(format_table(rows, cols, digits=4))
    print("\ntoy score, mean [95 % bootstrap interval over the prompts]:\n")
    print("| arm | @4 | @2 |\n|---|---|---|")
    for name, ci in intervals.items():
        print(f"| {name} | {ci.get('ci_toy_score@4', '')} | {ci.get('ci_toy_score@2', '')} |")
    if len(clip_scores) > 1:   # same prompts and noise for every arm: paired differences per prompt
        base = "shipped" if "shipped" in clip_scores else next(iter(clip_scores))
        print(f"\ntoy score difference to {base}, paired by prompt and noise, mean [95 % bootstrap interval]:\n")
        print("| arm | @4 | @2 |\n|---|---|---|")
        for name, scores in clip_scores.items():
            if name != base:
                d = {nfe: bootstrap_ci(scores[nfe] - clip_scores[base][nfe]) for nfe in scores}
                print(f"| {name} − {base} | {d.get(4, '')} | {d.get(2, '')} |")
    for name, report in defects.items():
        print(f"\nsemigroup defect of {name} on the 8-step training grid and the 4- and 2-step inference grids "
              f"({args.defect_clips} prompts, the student's own stochastic rollout states):\n")
        print(format_defect_report(report))


if __name__ == "__main__":
    main()
