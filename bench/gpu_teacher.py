"""One-command GPU teacher: the toy teacher job with a GPU recipe, for the minutes left after gpu_check.py.

    python3 bench/gpu_teacher.py OUT_DIR --minutes 5          # on the GPU machine (docs/training.md "GPU check")
    python3 bench/gpu_teacher.py OUT_DIR --smoke              # CPU, a few steps at tiny batch

Recipe (training/teacher.py's job, teacher forcing, shift 3 from the start): model preset `toy-gpu` (patch
1×2×2 instead of 1×4×4, dim 192, 6 layers, 3.9M parameters), batch 256, lr 1e-3 with 200 warm-up steps and
a cosine schedule sized to the time budget (a 30-step probe measures the seconds per step), EMA 0.999.
Writes to OUT_DIR: teacher_gpu.safetensors (EMA weights, ≤ 16 MB), gpu_teacher.md and gpu_teacher.json (the
oracle metrics of the new and the shipped teacher on the same 64 prompts, 40 Euler steps + CFG 3 and 4 steps),
and keeps the resumable run folder in OUT_DIR/run or --run-dir (rerun the same command to train further).
Ship the new teacher only if it beats the shipped one; the students then need re-distilling.
"""
import argparse
import json
import os
import pathlib
import sys
import time

import torch

from gpu_check import import_package   # the package from this tree, root not on sys.path

PROBE_STEPS = 30


def metrics_table(models: dict, device, num_clips: int, steps_list, smoke: bool) -> list:
    """Oracle metrics (toy score, Fréchet, ...) of each teacher on the same prompts and noise."""
    from comfyui_salt.salt_core.config import get_config
    from comfyui_salt.toy.text import ToyTextEncoder
    from comfyui_salt.toy.worlds import get_world
    from comfyui_salt.toy.jobs import toy_evaluator
    from comfyui_salt.toy.prompts import eval_prompts
    from comfyui_salt.training.teacher import sample_teacher
    world = get_world("default").cfg
    evaluate = toy_evaluator("default", num_ref=32 if smoke else 256)
    caps = eval_prompts(world, num_clips)
    rows = []
    for name, model in models.items():
        mcfg = model.cfg
        encoder = ToyTextEncoder(text_dim=mcfg.text_dim, max_tokens=mcfg.text_len, world=world)
        for steps in steps_list:
            start = time.perf_counter()
            with torch.no_grad():
                vids = sample_teacher(model.to(device).eval(), "teacher_forcing", caps, encoder, world, steps, 3.0)
            row = {"teacher": name, "steps": f"{steps} + CFG 3", **{k: round(v, 4) for k, v in evaluate(vids, caps).items()
                                                                     if isinstance(v, float)}}
            row["sample s"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(row, flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output folder")
    ap.add_argument("--minutes", type=float, default=5.0, help="training wall time (the evaluation comes after)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--preset", default="toy-gpu", help="salt_core model preset of the teacher")
    ap.add_argument("--clips", type=int, default=64, help="evaluation prompts (64+)")
    ap.add_argument("--run-dir", default=None, help="resumable run folder (default OUT/run)")
    ap.add_argument("--smoke", action="store_true", help="CPU: a few steps at batch 4, 4 prompts")
    args = ap.parse_args()
    import_package()
    from comfyui_salt.training.teacher import TeacherConfig, export_teacher, train_teacher
    from comfyui_salt.toy.jobs import teacher_world
    from comfyui_salt.toy.shipped import load_toy_teacher
    from comfyui_salt.weights.files import load_model
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    out = pathlib.Path(args.out)
    run = pathlib.Path(args.run_dir) if args.run_dir else out / "run"
    batch = 4 if args.smoke else args.batch
    budget = 20.0 if args.smoke else args.minutes * 60
    base = dict(model_preset=args.preset, batch_size=batch, lr=1e-3, warmup_steps=200, shift=3.0, ema_decay=0.999,
                eval_every=10**9, checkpoint_every=500, threads=2 if args.smoke else 16, log_every=10)
    start = time.time()
    probe = 3 if args.smoke else PROBE_STEPS
    cfg = TeacherConfig(total_steps=10**6, **base)
    train_teacher(cfg, str(run), max_steps=probe, quiet=True, device=device,
                  world=teacher_world(cfg))   # warm-up part: independent of total
    per_step = (time.time() - start) / probe
    done_steps = probe
    total = done_steps + max(1, int(0.95 * (budget - (time.time() - start)) / per_step))
    cfg = TeacherConfig(total_steps=total, **base)
    train_teacher(cfg, str(run), quiet=True, device=device, max_seconds=budget - (time.time() - start),
                  world=teacher_world(cfg), allow_changed_settings=True)   # the probe ran under a placeholder total_steps
    train_s = time.time() - start
    weights = out / "teacher_gpu.safetensors"
    print(export_teacher(str(run), str(weights), "ema"), flush=True)
    size_mb = weights.stat().st_size / 2**20
    new, _ = load_model(str(weights))
    shipped, _, _ = load_toy_teacher()
    clips = 4 if args.smoke else max(64, args.clips)
    rows = metrics_table({"shipped (toy, patch 4×4, 5,000 CPU steps)": shipped, f"GPU ({args.preset})": new},
                         device, clips, (4,) if args.smoke else (40, 4), args.smoke)
    state = json.loads((run / "config.json").read_text())
    header = (f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; torch {torch.__version__}; "
              f"trained {train_s:.0f} s, ~{per_step:.3f} s/step, schedule {total} steps, batch {batch}, preset "
              f"{args.preset}; EMA file {size_mb:.1f} MB; {clips} prompts, seed 0")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    text = "\n".join([f"# GPU teacher\n\n{header}\n", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]) + "\n"
    (out / "gpu_teacher.md").write_text(text)
    (out / "gpu_teacher.json").write_text(json.dumps({"header": header, "rows": rows, "config": state}, indent=1))
    print("\n" + text)
    if size_mb > 16:
        print(f"EMA file is {size_mb:.1f} MB > 16 MB: choose a smaller --preset", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
