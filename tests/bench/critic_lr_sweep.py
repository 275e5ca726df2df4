"""Sweep the toy critic's learning rate (issue: official-recipe fidelity). Not a test: CPU minutes per value; resumable.

    .venv/bin/python tests/bench/critic_lr_sweep.py --out runs/critic_sweep \
        --init runs/experiment/ode-causal/export/student.safetensors --lrs 4e-6 2e-5 1e-4 --gen-steps 40

The released configs train the critic 5x slower than the generator (2e-6 / 4e-7). For each critic lr, a
toy-dmd run (generator lr 2e-5, K = 4) starts from the same ODE-initialised student for the same generator
updates and seeds; its EMA-free student is scored on the same prompts and noise (paired) at 4 and 2 NFE,
with bootstrap 95 % intervals over clips, and the critic's last flow losses are shown. The last printed
table is committed as tests/bench/results/critic_lr_sweep.md. Do not read wall times beside other jobs.
"""
import argparse
import json
import os
import time

import torch

from comfyui_salt.salt_core.metrics.bootstrap import bootstrap_ci
from comfyui_salt.salt_core.metrics.frechet import reference_features
from comfyui_salt.salt_core.metrics.score import score_table
from comfyui_salt.salt_core.toy.text import ToyTextEncoder
from comfyui_salt.salt_core.toy.world import get_world
from comfyui_salt.training.common import install_stop_handlers
from comfyui_salt.training.distill import run_distillation
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.training.distill_eval import sample_student
from comfyui_salt.training.teacher import eval_prompts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/critic_sweep")
    ap.add_argument("--init", required=True, help="the ODE-initialised causal student (export/student.safetensors)")
    ap.add_argument("--lrs", type=float, nargs="+", default=[4e-6, 2e-5, 1e-4])
    ap.add_argument("--preset", default="toy-dmd")
    ap.add_argument("--gen-steps", type=int, default=40)
    ap.add_argument("--eval-clips", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    install_stop_handlers()
    world = get_world("default")
    caps = eval_prompts(world, args.eval_clips)
    ref = reference_features(world, 512)
    rows = []
    for lr in args.lrs:
        run_dir = os.path.join(args.out, f"critic_lr_{lr:g}")
        cfg = get_preset(args.preset, student_init=args.init, lr_critic=lr, gen_steps=args.gen_steps, eval_every=0,
                         threads=args.threads, ema_start_iter=10**9)   # score the raw student, not a young EMA
        t = time.time()
        model = run_distillation(cfg, run_dir, quiet=True)
        log = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        critic = [r["critic_loss"] for r in log if "critic_loss" in r][-10:]
        enc = ToyTextEncoder(text_dim=model.cfg.text_dim, max_tokens=model.cfg.text_len, world=world)
        row = {"lr_critic": lr, "critic_loss_last10": sum(critic) / len(critic), "sec": time.time() - t}
        for nfe in (4, 2):
            _, clips = score_table(sample_student(model.eval(), cfg, enc.encode(caps), nfe), caps, world, ref,
                                   return_clips=True)
            row[f"score@{nfe}"] = bootstrap_ci(clips)
        rows.append(row)
        with open(os.path.join(run_dir, "eval.json"), "w") as f:
            json.dump({k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in row.items()}, f, indent=1)
    print(f"\n{args.preset}, generator lr {cfg.lr_gen:g}, {args.gen_steps} generator updates from {args.init}; "
          f"{args.eval_clips} prompts, paired noise; toy score mean [95 % bootstrap interval over clips]\n")
    print("| critic lr | critic / generator lr | toy score @4 | toy score @2 | critic flow loss (last 10) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lr_critic']:g} | {r['lr_critic'] / cfg.lr_gen:g} | {r['score@4']} | {r['score@2']} | "
              f"{r['critic_loss_last10']:.4f} |")


if __name__ == "__main__":
    main()
