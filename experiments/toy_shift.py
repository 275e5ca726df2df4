"""Measure the toy world's timestep shift: a teacher's many-step samples at several sampling shifts.

    .venv/bin/python experiments/toy_shift.py [--teacher FILE] [--shifts 1 2 3 5] [--steps 40] [--clips 64]

Prints one oracle-metric row per shift (same prompts, same noise). The shift used to train the
teacher is the other half of the measurement: see docs/toy_world.md for both. Not a test; run it
with the machine otherwise quiet if you read the seconds column.
"""
import argparse
import time

import torch

from comfyui_salt.toy.metrics.frechet import reference_features
from comfyui_salt.toy.metrics.score import format_table, score_table
from comfyui_salt.toy.text import ToyTextEncoder
from comfyui_salt.toy.worlds import get_world
from comfyui_salt.toy.prompts import eval_prompts
from comfyui_salt.training.teacher import sample_teacher
from comfyui_salt.toy.shipped import TOY_TEACHER, load_toy_teacher

COLUMNS = ["toy_score", "sharpness_error", "adherence", "shape_ok", "direction_ok", "smoothness_px", "dynamic_px",
           "flicker", "frechet", "seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=TOY_TEACHER, help="teacher .safetensors (default: the shipped one)")
    ap.add_argument("--shifts", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    ap.add_argument("--steps", type=int, default=40, help="Euler steps per chunk")
    ap.add_argument("--cfg", type=float, default=3.0, help="standard-form CFG scale")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    world = get_world("default").cfg
    teacher, mode, source = load_toy_teacher(args.teacher)
    enc = ToyTextEncoder(text_dim=teacher.cfg.text_dim, max_tokens=teacher.cfg.text_len, world=world)
    caps = eval_prompts(world, args.clips)
    ref = reference_features(world, 512)
    rows = {}
    for shift in args.shifts:
        t = time.time()
        videos = sample_teacher(teacher, mode, caps, enc, world, args.steps, args.cfg, shift, seed=0)
        rows[f"shift {shift:g}"] = {**score_table(videos, caps, world, ref), "seconds": time.time() - t}
    print(f"\n{source}; {args.clips} prompts, {args.steps} Euler steps, CFG {args.cfg:g}\n")
    print(format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
