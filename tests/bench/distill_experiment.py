"""The Salt experiment on the toy world (issue: distillation). Not a test: hours of CPU; resumable.

    .venv/bin/python tests/bench/distill_experiment.py --out runs/experiment [--gen-steps 200] [--eval-only]

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

from comfyui_salt.salt_core.metrics.frechet import reference_features
from comfyui_salt.salt_core.metrics.score import format_table, score_table
from comfyui_salt.salt_core.toy.text import ToyTextEncoder
from comfyui_salt.salt_core.toy.world import TOY_SHIFT, get_world
from comfyui_salt.training.distill import run_distillation
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.training.distill_eval import drift_slopes, sample_student, student_defect
from comfyui_salt.training.files import export_student, load_model
from comfyui_salt.training.teacher import eval_prompts, sample_teacher
from comfyui_salt.training.toy_assets import load_toy_teacher

ARMS = [  # (run name, preset, student init run, arm)
    ("ode-causal", "toy-ode-init", None, "init"),
    ("ode-bidir", "toy-ode-init", None, "init"),
    ("bidir-dmd", "toy-bidir-dmd", "ode-bidir", "bidirectional"),
    ("bidir-sc-dmd", "toy-bidir-sc-dmd", "ode-bidir", "bidirectional"),
    ("ar-dmd", "toy-dmd", "ode-causal", "autoregressive"),
    ("ar-sc-single-k", "toy-sc-single-k", "ode-causal", "autoregressive"),
    ("ar-salt", "toy-salt", "ode-causal", "autoregressive"),
]


def run_arm(name, preset, init, out, gen_steps, batch, threads):
    overrides = {"batch_size": batch, "threads": threads, "eval_every": 0}
    if preset == "toy-ode-init":
        overrides["student_kind"] = "bidirectional" if name.endswith("bidir") else "causal"
    else:
        overrides.update(gen_steps=gen_steps, student_init=os.path.join(out, init, "export", "student.safetensors"))
        if name.startswith("bidir"):
            overrides["student_kind"] = "bidirectional"
    cfg = get_preset(preset, **overrides)
    run_dir = os.path.join(out, name)
    t = time.time()
    model = run_distillation(cfg, run_dir)
    export_student(model, run_dir)
    return cfg, time.time() - t


def last_wall_time(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    secs = [r["sec"] for r in rows if "sec" in r]
    return secs[-1] if secs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/experiment")
    ap.add_argument("--gen-steps", type=int, default=200, help="generator updates per DMD arm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-clips", type=int, default=64)
    ap.add_argument("--eval-only", action="store_true", help="skip training; evaluate the exported students")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfgs = {}
    for name, preset, init, arm in ARMS:
        if args.eval_only:
            cfgs[name] = get_preset(preset, student_kind="bidirectional" if "bidir" in name else "causal")
        else:
            cfgs[name], _ = run_arm(name, preset, init, args.out, args.gen_steps, args.batch, args.threads)

    world = get_world("default")
    teacher, mode, source = load_toy_teacher()
    enc = ToyTextEncoder(text_dim=teacher.cfg.text_dim, max_tokens=teacher.cfg.text_len, world=world)
    caps = eval_prompts(world, args.eval_clips)
    ctx = enc.encode(caps)
    ref = reference_features(world, 512)
    rows = {}
    t = time.time()
    v = sample_teacher(teacher, mode, caps, enc, world, steps=40, cfg_scale=3.0, shift=TOY_SHIFT)
    rows["teacher 40 steps + CFG"] = {"toy_score@4": score_table(v, caps, world, ref)["toy_score"], "train_s": float("nan")}
    for name, preset, init, arm in ARMS:
        cfg = cfgs[name]
        model, _ = load_model(os.path.join(args.out, name, "export", "student.safetensors"))
        model.eval()
        row = {}
        for nfe in (4, 2):
            s = score_table(sample_student(model, cfg, ctx, nfe), caps, world, ref)
            row[f"toy_score@{nfe}"] = s["toy_score"]
            for k in ("sharpness_error", "adherence", "smoothness_px", "dynamic_px", "frechet"):
                row[f"{k}@{nfe}"] = s[k]
        row["defect"] = student_defect(model, cfg, ctx[:16])
        drift = drift_slopes(model, cfg, caps[:16], ctx[:16], nfe=4)
        row["drift_slope_sharp"] = drift["sharpness_error"][1]
        row["train_s"] = last_wall_time(os.path.join(args.out, name))
        rows[f"{arm}: {name}"] = row
    cols = ["toy_score@4", "toy_score@2", "sharpness_error@4", "sharpness_error@2", "adherence@4", "adherence@2",
            "smoothness_px@4", "dynamic_px@4", "frechet@4", "defect", "drift_slope_sharp", "train_s"]
    print(f"\nteacher: {source}; {args.eval_clips} prompts; eval {time.time() - t:.0f} s\n")
    print(format_table(rows, cols, digits=4))


if __name__ == "__main__":
    main()
