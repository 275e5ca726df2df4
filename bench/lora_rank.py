"""LoRA extraction error vs rank on a real distilled pair: the shipped toy teacher (base) → Salt toy student.

    .venv/bin/python bench/lora_rank.py [--clips 16] [--threads 2]

For each rank, the student is rebuilt as base + LoRA the way ComfyUI 0.3.75's LoraLoaderModelOnly applies
it (salt_core.lora.comfy_applied: the modulation-table diffs are not applied; tests/test_lora.py checks
that ComfyUI's patched weights equal this) and, for comparison, with every key applied. Columns:
energy kept (mean / min over the factored linear layers), relative x0-prediction error vs the student
(‖f_lora − f_student‖ / ‖f_student‖ over clips and σ ∈ {1, .75, .5, .25}), and the relative difference
of 2-step streamed samples from the same noise (‖video_lora − video_student‖ / ‖video_student‖). Not a
test; prints a markdown table.
"""
import argparse
import os

import torch

from comfyui_salt.salt_core.lora import apply_lora, comfy_applied, extract_lora, summarize
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.toy.text import ToyTextEncoder
from comfyui_salt.toy.worlds import get_world
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.training.distill_eval import sample_student
from comfyui_salt.toy.prompts import eval_prompts
from comfyui_salt.toy.shipped import TOY_STUDENT, TOY_TEACHER, load_toy_student, load_toy_teacher

RANKS = (1, 2, 4, 8, 16, 32, 64, 128)
SIGMAS = (1.0, 0.75, 0.5, 0.25)


def model_from(sd: dict, like):
    model = build_model(like.cfg)
    model.load_state_dict(sd)
    return model.eval()


@torch.no_grad()
def x0_error(model, student, x, context, ref_norm: float) -> float:
    """‖x0_model − x0_student‖ / ‖x0_student‖ over σ ∈ SIGMAS (flow: x0 = x_σ − σ·v)."""
    err = 0.0
    g = torch.Generator().manual_seed(1)
    for sigma in SIGMAS:
        noisy = (1 - sigma) * x + sigma * torch.randn(x.shape, generator=g)
        t = torch.full((x.shape[0],), 1000.0 * sigma)
        a = noisy - sigma * model(noisy, t, context)
        b = noisy - sigma * student(noisy, t, context)
        err += float((a - b).norm() ** 2)
    return (err ** 0.5) / ref_norm


@torch.no_grad()
def x0_norm(student, x, context) -> float:
    total = 0.0
    g = torch.Generator().manual_seed(1)
    for sigma in SIGMAS:
        noisy = (1 - sigma) * x + sigma * torch.randn(x.shape, generator=g)
        t = torch.full((x.shape[0],), 1000.0 * sigma)
        total += float((noisy - sigma * student(noisy, t, context)).norm() ** 2)
    return total ** 0.5


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nfe", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base, _, _ = load_toy_teacher(TOY_TEACHER)
    student, _ = load_toy_student(TOY_STUDENT)
    cfg = get_preset("toy-salt")
    world = get_world(cfg.world).cfg
    captions = eval_prompts(world, args.clips)
    encoder = ToyTextEncoder(text_dim=student.cfg.text_dim, max_tokens=student.cfg.text_len, world=world)
    context = encoder.encode(captions)
    x = sample_student(student, cfg, context, 4, seed=3)            # student clips as the "clean" inputs
    norm = x0_norm(student, x, context)

    reference = sample_student(student, cfg, context, args.nfe, seed=0)

    def oracle(model):
        videos = sample_student(model, cfg, context, args.nfe, seed=0)
        return float((videos - reference).norm() / reference.norm())

    base_sd, student_sd = base.state_dict(), student.state_dict()
    base_err, base_samples = x0_error(base, student, x, context, norm), oracle(base)
    rows = [("student (reference)", "", "", "", 0.0, 0.0, 0.0, 0.0, ""),
            ("base = toy teacher (rank 0)", "", "", "", base_err, base_err, base_samples, base_samples, "")]
    for rank in RANKS:
        lora, reports = extract_lora(base_sd, student_sd, rank, dtype=torch.float32)
        s = summarize(reports)
        as_comfy = model_from(apply_lora(base_sd, comfy_applied(lora)), student)
        full = model_from(apply_lora(base_sd, lora), student)
        size = sum(v.numel() * 2 for v in lora.values()) / 1024   # KiB in bf16
        rows.append((f"rank {rank}", f"{size:.0f}", f"{s['mean_energy_kept']:.3f}", f"{s['min_energy_kept']:.3f}",
                     x0_error(as_comfy, student, x, context, norm), x0_error(full, student, x, context, norm),
                     oracle(as_comfy), oracle(full), f"{s['total_energy_kept']:.3f}"))
    print(f"toy teacher → Salt toy student ({os.path.basename(TOY_STUDENT)}), {args.clips} clips, "
          f"{torch.get_num_threads()} threads; samples: {args.nfe}-step streaming from the same noise\n")
    print("| LoRA | size (KiB, bf16) | energy kept, mean | min | total | x0 rel. error, ComfyUI 0.3.75 | "
          "x0 rel. error, all keys | {nfe}-step samples rel. difference, ComfyUI | samples, all keys |"
          .replace("{nfe}", str(args.nfe)))
    print("|---|---|---|---|---|---|---|---|---|")
    for name, size, mean, mn, err_c, err_f, sam_c, sam_f, total in rows:
        print(f"| {name} | {size} | {mean} | {mn} | {total} | {err_c:.4f} | {err_f:.4f} | {sam_c:.4f} | {sam_f:.4f} |")


if __name__ == "__main__":
    main()
