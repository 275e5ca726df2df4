"""How far a learned Wan teacher of the method lab is from the exact denoiser, per noise level.

    .venv/bin/python experiments/lab_teacher_error.py --teacher runs/lab-teacher/export.safetensors [--clips 256]

For data clips x0 of the lab world (captions balanced, one noise draw per clip shared by every σ: paired), at each
σ of the grid: x_σ = (1 − σ)·x0 + σ·ε, the exact posterior mean D*(x_σ) = E[x0 | x_σ, c] (ExactTeacher) and the
learned teacher's D(x_σ) = x_σ − σ·v(x_σ). Per clip: the learned error ‖D − D*‖² and the irreducible error
‖D* − x0‖² (per dimension). Printed per σ with bootstrap 95 % intervals over clips: the RMS of both, and their
ratio (mean learned / mean irreducible; 0 = exact teacher, 1 = the learned error is as large as what no denoiser can
know). Conditional (caption) and unconditional (empty prompt, the CFG branch) rows. A script, not a test.
"""
import argparse

import torch

from comfyui_salt.toy.lab import LAB_SHIFT, ExactTeacher, LabWorld
from comfyui_salt.salt_core.metrics.bootstrap import bootstrap_ci
from comfyui_salt.salt_core.schedules import shift_sigma
from comfyui_salt.weights.files import load_model

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.85, 1.0)


def denoise(model, x, sigma: float, context, batch: int) -> torch.Tensor:
    """x0 prediction x − σ·v (B, 3, F, H, W) float64, in batches."""
    outs = []
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch].float()
        t = torch.full((xb.shape[0],), 1000.0 * sigma, dtype=torch.float64)
        with torch.no_grad():
            v = model(xb, t, context[i:i + batch])
        outs.append(x[i:i + batch] - sigma * v.double())
    return torch.cat(outs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="learned lab teacher (.safetensors, any layout)")
    ap.add_argument("--world", default="default", help="lab world preset")
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sigmas", type=float, nargs="+", default=SIGMAS,
                    help=f"noise levels (the lab's grids are shifted by {LAB_SHIFT}: most steps sit at high σ)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    world = LabWorld(args.world)
    learned, _ = load_model(args.teacher)
    learned.eval()
    exact = ExactTeacher(world, learned.cfg)
    gen = torch.Generator().manual_seed(args.seed)
    caption = torch.arange(args.clips) % world.cfg.num_captions
    x0, _ = world.sample(caption, generator=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    tl, td = learned.cfg.text_len, learned.cfg.text_dim
    contexts = {"caption": world.encode(caption, tl, td), "empty prompt": torch.zeros(args.clips, tl, td)}
    print(f"learned teacher {args.teacher} vs the exact denoiser of lab world {args.world!r}: {args.clips} clips, "
          f"paired noise; per-dimension RMS, bootstrap 95 % over clips\n")
    print("| prompt | σ | shifted-grid share | learned vs exact RMS | exact vs data RMS (irreducible) | ratio of MSEs |")
    print("|---|---|---|---|---|---|")
    for name, ctx in contexts.items():
        for s in args.sigmas:
            x = (1 - s) * x0 + s * eps
            d_exact = denoise(exact, x, s, ctx, args.batch)
            d_learned = denoise(learned, x, s, ctx, args.batch)
            err = (d_learned - d_exact).pow(2).flatten(1).mean(1)
            irr = (d_exact - x0).pow(2).flatten(1).mean(1)
            e, i = bootstrap_ci(err.sqrt()), bootstrap_ci(irr.sqrt())
            ratio = bootstrap_ci(err / irr.mean())
            # fraction of a uniform raw grid that the shift maps above this σ (where steps are spent)
            share = float((shift_sigma(torch.linspace(0, 1, 1001, dtype=torch.float64), LAB_SHIFT) >= s).double().mean())
            print(f"| {name} | {s:g} | {share:.2f} | {e} | {i} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
