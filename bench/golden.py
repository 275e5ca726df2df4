"""Golden outputs: bit-exact fingerprints of what the library, the jobs and workflow 1 produce, so a refactor
can show that behaviour did not change.

    .venv/bin/python bench/golden.py --record      # write bench/results/golden.json
    .venv/bin/python bench/golden.py               # recompute and compare, print a table; exit 1 on a change

Each entry is the SHA-256 of a tensor's dtype, shape and bytes (or of a file's bytes for the demo's GIF / WEBP).
Parts: `library` (seeded samples of the shipped toy teacher and student through the public API: Euler + CFG,
the stochastic and deterministic few-step samplers, streaming with every cache policy, prompt switches, first
frames, context noise, the three training rollouts), `jobs` (3-step teacher runs on both worlds, an ODE-init run
and 3-update distillation runs through the CLI, hashed from their exported weights), `demo` (the main job with
workflow 1 in a real ComfyUI). Threads are fixed, so fingerprints hold on one machine; another CPU may differ.
"""
import argparse
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "golden.json")
PY = sys.executable


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def weights_digest(path: str) -> str:
    from safetensors.torch import load_file
    sd = load_file(path)
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode() + digest(sd[k]).encode())
    return h.hexdigest()[:16]


def asset(name: str) -> str:
    hits = [p for p in glob.glob(os.path.join(ROOT, "**", name), recursive=True) if "/.venv/" not in p]
    assert len(hits) == 1, f"expected one shipped {name}, found {hits}"
    return hits[0]


def library() -> dict:
    from comfyui_salt.salt_core import (CachePolicy, FlowDenoiser, get_sigmas_fewstep, get_sigmas_uniform,
                                        rollout_stream, sample_euler, sample_fewstep_deterministic,
                                        sample_fewstep_stochastic, stream_video)
    from comfyui_salt.salt_core import rollout as ro
    from comfyui_salt.weights.files import load_model
    torch.set_num_threads(2)
    teacher, _ = load_model(asset("toy_teacher.safetensors"))
    student, _ = load_model(asset("toy_salt_student.safetensors"))
    teacher.eval(), student.eval()
    cfg = teacher.cfg
    g = torch.Generator().manual_seed(7)
    ctx = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    ctx2 = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    empty = torch.zeros_like(ctx)
    noise = torch.randn(2, cfg.in_dim, 12, 16, 16, generator=g)
    long_noise = torch.randn(2, cfg.in_dim, 18, 16, 16, generator=g)
    first = torch.randn(2, cfg.in_dim, 1, 16, 16, generator=g)
    out = {}
    with torch.no_grad():
        guided = FlowDenoiser(teacher, ctx, empty, cfg_scale=3.0)
        out["teacher euler 40 + cfg"] = sample_euler(guided, noise, get_sigmas_uniform(40, 3.0).float(), disable=True)
        out["teacher stochastic 4"] = sample_fewstep_stochastic(FlowDenoiser(teacher, ctx), noise,
                                                                get_sigmas_fewstep(4, 3.0),
                                                                extra_args={"seed": 3}, disable=True)
        out["teacher deterministic 2"] = sample_fewstep_deterministic(FlowDenoiser(teacher, ctx), noise,
                                                                      get_sigmas_fewstep(2, 3.0), disable=True)
        s4 = get_sigmas_fewstep(4, 3.0)
        policies = {"full": CachePolicy.full(18), "rolling 6": CachePolicy.rolling(6),
                    "sink 9/3": CachePolicy.sink(9, 3), "sink 9/3 relative": CachePolicy.sink(9, 3, relative_rope=True)}
        for name, pol in policies.items():
            out[f"stream {name}"] = stream_video(student, long_noise, ctx, s4, chunk_frames=3, policy=pol,
                                                 generator=torch.Generator().manual_seed(5))
        out["stream deterministic 2"] = stream_video(student, noise, ctx, get_sigmas_fewstep(2, 3.0), chunk_frames=3,
                                                     policy=CachePolicy.rolling(6), stochastic=False)
        out["stream switch + first frame + context noise"] = torch.cat(list(rollout_stream(
            student, noise, ctx, s4, chunk_frames=3, policy=CachePolicy.full(13), prompt_switches={2: ctx2},
            first_frames=first, context_noise=0.1, generator=torch.Generator().manual_seed(9))), 2)
        out["stream teacher + cfg"] = stream_video(teacher, noise, ctx, s4, chunk_frames=3,
                                                   policy=CachePolicy.full(12), cfg_scale=3.0, uncond_context=empty,
                                                   generator=torch.Generator().manual_seed(4))
    pol = CachePolicy.rolling(6)
    r = ro.rollout_self_forcing(student, noise, ctx, s4, 2, policy=pol, context_noise=0.1, grad=False,
                                generator=torch.Generator().manual_seed(11))
    out["rollout self forcing"] = r.x0
    dense = get_sigmas_fewstep(8, 3.0)
    out["rollout reference"] = ro.rollout_reference(student, noise, ctx, s4, 2, dense, r.renoise, policy=pol,
                                                    generator=torch.Generator().manual_seed(12))
    out["rollout bidirectional"] = ro.rollout_bidirectional(student, noise, ctx, s4, 1, grad=False,
                                                            generator=torch.Generator().manual_seed(13)).x0
    return {k: digest(v) for k, v in out.items()}


def cli(*args, cwd):
    subprocess.run([PY, "-m", "comfyui_salt", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


JOBS = {   # name: CLI arguments after the command (tmp = the scratch folder), and the exported file
    "teacher toy": (["teacher", "--out", "{tmp}/t", "--max-steps", "3", "--batch-size", "4", "--threads", "2",
                     "--eval-every", "100000", "--export", "{tmp}/t.safetensors"], "{tmp}/t.safetensors"),
    "teacher lab": (["teacher", "--out", "{tmp}/tl", "--world", "lab:default", "--mode", "bidirectional",
                     "--max-steps", "3", "--batch-size", "4", "--threads", "2", "--eval-every", "100000",
                     "--export", "{tmp}/tl.safetensors"], "{tmp}/tl.safetensors"),
    "ode init 3": (["ode-init", "--preset", "toy-ode-init", "--out", "{tmp}/o", "--max-gen-steps", "3",
                    "--ode-pairs", "32", "--threads", "2"], "{tmp}/o/export/student.safetensors"),
    "distill toy-dmd 3": (["distill", "--preset", "toy-dmd", "--out", "{tmp}/d", "--max-gen-steps", "3",
                           "--threads", "2", "--eval-every", "0"], "{tmp}/d/export/student.safetensors"),
    "distill toy-salt 3 (SC, align, EMA on)": (
        ["distill", "--preset", "toy-salt", "--out", "{tmp}/s", "--max-gen-steps", "3", "--threads", "2",
         "--eval-every", "0", "--align-start-iter", "0", "--ema-start-iter", "0"], "{tmp}/s/export/student.safetensors"),
    "distill toy-bidir-sc-dmd 3": (["distill", "--preset", "toy-bidir-sc-dmd", "--out", "{tmp}/b",
                                    "--max-gen-steps", "3", "--threads", "2", "--eval-every", "0"],
                                   "{tmp}/b/export/student.safetensors"),
}


def jobs(tmp: str) -> dict:
    out = {}
    for name, (args, export) in JOBS.items():
        t = time.time()
        cli(*[a.format(tmp=tmp) for a in args], cwd=ROOT)
        out[name] = weights_digest(export.format(tmp=tmp))
        print(f"  {name}: {time.time() - t:.0f} s", file=sys.stderr)
    return out


def demo(tmp: str) -> dict:
    cli("demo", "--out", f"{tmp}/demo", "--num-clips", "4", cwd=ROOT)
    return {"demo preview.gif": file_digest(f"{tmp}/demo/preview.gif"),
            "workflow 1 webp (ComfyUI server)": file_digest(f"{tmp}/demo/salt_toy_streaming.webp")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true", help=f"write {os.path.relpath(RESULTS, ROOT)}")
    ap.add_argument("--parts", default="library,jobs,demo", help="comma-separated subset of library,jobs,demo")
    args = ap.parse_args()
    parts = args.parts.split(",")
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "library" in parts:
            got.update(library())
        if "jobs" in parts:
            got.update(jobs(tmp))
        if "demo" in parts:
            got.update(demo(tmp))
    if args.record:
        old = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
        with open(RESULTS, "w") as f:
            json.dump({**old, **got}, f, indent=1)
        print(f"recorded {len(got)} fingerprints in {RESULTS}")
        return 0
    want = json.load(open(RESULTS))
    bad = 0
    print("| output | golden | now | same |\n|---|---|---|---|")
    for k, v in got.items():
        same = want.get(k) == v
        bad += not same
        print(f"| {k} | {want.get(k)} | {v} | {'yes' if same else '**NO**'} |")
    print(f"\n{len(got) - bad} of {len(got)} bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
