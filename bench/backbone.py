"""Backbone benchmark (CPU): prints a markdown table. Not a test; do not run beside training jobs.

    .venv/bin/python bench/backbone.py [--threads 2] [--repeats 5] [--rows a,f]

(a) 4-NFE bidirectional sample time / (4 × bare forward)       target ≤ 1.03
    and the sampler's own work (a stub model that returns x) / (4 × bare forward)
(b) AR streaming time per chunk, chunk 2 vs chunk 20 (rolling) target ratio ≤ 1.1
(c) cached streaming vs re-running all history, 16 chunks      target ≥ 5× and ≥ 0.9× ideal
(d) KV-cache memory per latent frame
(e) our bidirectional forward vs diffusers WanTransformer3DModel, same weights  target ≤ 1.0×
(f) per-chunk time, sink W=9 S=3 + relative RoPE / rolling W=9, 4 NFE    target ≤ 1.03
Ratios interleave the repeats of their two variants, so slow drifts of a shared machine hit both.
"""
import argparse
import statistics
import time

import torch

from comfyui_salt.salt_core import (CachePolicy, FlowDenoiser, build_model, from_wan_state_dict,
                                    get_sigmas_fewstep, sample_fewstep_stochastic, stream_video)
from comfyui_salt.salt_core.model import BlockCausal
from comfyui_salt.salt_core.streaming import rollout_stream


def timed(fn, repeats, cpu=False):
    """Median seconds of `repeats` calls after a warm-up: wall clock, or this process's CPU time with `cpu`
    (on a shared machine the CPU time is not inflated by other jobs; exact only with --threads 1)."""
    clock = time.process_time if cpu else time.perf_counter
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def no_cache_rollout(model, noise, ctx, sigmas, chunk):
    """Reference without a cache: every step re-runs all clean history plus the current chunk."""
    B, C, F, H, W = noise.shape
    clean = []
    sig = [float(s) for s in sigmas]
    for c in range(F // chunk):
        x = noise[:, :, c * chunk:(c + 1) * chunk]
        for i in range(len(sig) - 1):
            hist = torch.cat(clean + [x], 2)
            t = torch.zeros(B, hist.shape[2], dtype=torch.float64)
            t[:, -chunk:] = 1000 * sig[i]
            v = model(hist, t, ctx, block_causal=BlockCausal(chunk))[:, :, -chunk:]
            x0 = x - sig[i] * v
            x = x0 if sig[i + 1] == 0 else (1 - sig[i + 1]) * x0 + sig[i + 1] * torch.randn_like(x0)
        clean.append(x)
    return torch.cat(clean, 2)


def sampler_overhead(model, ctx, hw, sig4, repeats):
    """(a) 4-NFE sample ÷ 4 bare forwards (interleaved) and the sampler's own work ÷ 4 forwards."""
    cfg = model.cfg
    x = torch.randn(1, cfg.in_dim, 6, *hw)
    t = torch.tensor([500.0])
    den = FlowDenoiser(model, ctx)
    fwds, samps, fwds_cpu, samps_cpu = [], [], [], []
    for _ in range(repeats):   # interleaved, so slow drifts of the machine hit both alike
        for cpu, f, sm in ((False, fwds, samps), (True, fwds_cpu, samps_cpu)):
            f.append(timed(lambda: model(x, t, ctx), 1, cpu))
            sm.append(timed(lambda: sample_fewstep_stochastic(den, x, sig4, extra_args={"seed": 0}, disable=True), 1, cpu))
    fwd, samp = statistics.median(fwds), statistics.median(samps)
    fwd_cpu, samp_cpu = statistics.median(fwds_cpu), statistics.median(samps_cpu)
    # The denoiser's x0 conversion is part of the sampler's work; run it on a stub velocity of zeros.
    stub = FlowDenoiser(lambda x, t, c: torch.zeros_like(x), ctx)
    own = timed(lambda: sample_fewstep_stochastic(stub, x, sig4, extra_args={"seed": 0}, disable=True), 20)
    return [("(a) 4-NFE sample / (4 × forward), 6 frames", f"{samp / (4 * fwd):.3f}", "≤ 1.03",
             f"forward {fwd * 1e3:.1f} ms, sample {samp * 1e3:.1f} ms (wall)"),
            ("(a) the same in process CPU time", f"{samp_cpu / (4 * fwd_cpu):.3f}", "≤ 1.03",
             f"forward {fwd_cpu * 1e3:.1f} ms, sample {samp_cpu * 1e3:.1f} ms (CPU)"),
            ("(a') sampler's own work (stub model) / (4 × forward)", f"{own / (4 * fwd):.4f}", "—",
             f"{own * 1e3:.2f} ms per 4-step sample: noise draws, x0 conversion, float64 re-noising")]


def chunk_times(model, ctx, hw, chunk, sig4, policy, num_chunks, cpu=False):
    """Seconds of each chunk of one stream (wall, or this process's CPU time with `cpu`)."""
    clock = time.process_time if cpu else time.perf_counter
    noise = torch.randn(1, model.cfg.in_dim, chunk * num_chunks, *hw)
    stamps = [clock()]
    for _ in rollout_stream(model, noise, ctx, sig4, policy=policy, chunk_frames=chunk):
        stamps.append(clock())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def late_vs_early_chunk(model, ctx, hw, chunk, sig4):
    """(b) per-chunk time early vs late with a rolling window (W = 6 frames: full from chunk 2 on)."""
    policy = CachePolicy.rolling(6)
    chunk_times(model, ctx, hw, chunk, sig4, policy, 3)
    runs = [chunk_times(model, ctx, hw, chunk, sig4, policy, 20) for _ in range(3)]
    per_chunk = [statistics.median(r[c] for r in runs) for c in range(20)]
    return ("(b) per-chunk time chunk 20 / chunk 2 (rolling W=6)", f"{per_chunk[19] / per_chunk[1]:.3f}", "≤ 1.1",
            f"chunk 2 {per_chunk[1] * 1e3:.0f} ms, chunk 20 {per_chunk[19] * 1e3:.0f} ms")


def cache_vs_no_cache(model, ctx, hw, chunk, sig4, repeats):
    """(c) cache vs no cache, 16 chunks, 4 steps, full attention (same semantics)."""
    n_chunks, K = 16, 4
    noise = torch.randn(1, model.cfg.in_dim, chunk * n_chunks, *hw)
    cached = timed(lambda: stream_video(model, noise, ctx, sig4, policy=CachePolicy.full(chunk * n_chunks),
                                        chunk_frames=chunk), max(1, repeats // 2))
    uncached = timed(lambda: no_cache_rollout(model, noise, ctx, sig4, chunk), 1)
    ideal = (K * chunk * sum(range(1, n_chunks + 1))) / ((K + 1) * chunk * n_chunks)
    speed = uncached / cached
    return (f"(c) no-cache / cached time, 16 chunks × 4 NFE, {hw[0]}×{hw[1]} latent", f"{speed:.2f}×",
            "≥ 5× and ≥ 0.9× ideal", f"ideal from frames processed {ideal:.2f}× → {speed / ideal:.2f} of ideal; "
            f"cached {cached:.2f} s, no cache {uncached:.2f} s")


def ours_vs_diffusers(model, ctx, hw, t, repeats):
    """(e) our bidirectional forward vs diffusers' WanTransformer3DModel on the same weights."""
    from diffusers import WanTransformer3DModel
    cfg = model.cfg
    ref = WanTransformer3DModel(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
                                attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim, out_channels=cfg.out_dim,
                                text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim,
                                num_layers=cfg.num_layers).eval()
    ref.load_state_dict(from_wan_state_dict(model.state_dict(), "diffusers"))
    x = torch.randn(1, cfg.in_dim, 12, *hw)
    ours = timed(lambda: model(x, t, ctx), repeats)
    theirs = timed(lambda: ref(x, t, ctx, return_dict=False), repeats)
    return ("(e) our forward / diffusers forward, 12 frames", f"{ours / theirs:.3f}", "≤ 1.0",
            f"ours {ours * 1e3:.0f} ms, diffusers {theirs * 1e3:.0f} ms; both torch SDPA (CPU kernel)")


def sink_vs_rolling(model, ctx, hw, chunk, sig4, repeats, window=9, sink=3, num_chunks=6):
    """(f) per-chunk time with a full window: sink + relative RoPE vs a rolling window of the same size."""
    policies = {"rolling": CachePolicy.rolling(window),
                "sink": CachePolicy.sink(window, sink, relative_rope=True)}
    full_from = window // chunk          # chunks before this one are still filling the window
    times = {(k, cpu): [] for k in policies for cpu in (False, True)}
    for _ in range(repeats):             # interleaved
        for name, policy in policies.items():
            for cpu in (False, True):
                times[name, cpu] += chunk_times(model, ctx, hw, chunk, sig4, policy, num_chunks, cpu)[full_from:]
    rows = []
    for cpu in (False, True):
        roll, sk = statistics.median(times["rolling", cpu]), statistics.median(times["sink", cpu])
        rows.append((f"(f) per-chunk time, sink W={window} S={sink} relative RoPE / rolling W={window}, 4 NFE"
                     + (" (CPU time)" if cpu else ""), f"{sk / roll:.3f}", "≤ 1.03",
                     f"sink {sk * 1e3:.0f} ms, rolling {roll * 1e3:.0f} ms per chunk (window full)"))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--hw", type=int, nargs=2, default=(32, 32), help="latent height and width")
    ap.add_argument("--rows", default="a,b,c,d,e,f", help="comma-separated rows to run")
    args = ap.parse_args()
    todo = set(args.rows.split(","))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.preset, seed=0).eval()
    cfg = model.cfg
    hw, chunk = tuple(args.hw), 3
    tokens = (hw[0] // cfg.patch_size[1]) * (hw[1] // cfg.patch_size[2])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim)
    rows = []
    sig4 = get_sigmas_fewstep(4)
    t = torch.tensor([500.0])
    with torch.no_grad():
        if "a" in todo:
            rows += sampler_overhead(model, ctx, hw, sig4, args.repeats)
        if "b" in todo:
            rows.append(late_vs_early_chunk(model, ctx, hw, chunk, sig4))
        if "c" in todo:
            rows.append(cache_vs_no_cache(model, ctx, hw, chunk, sig4, args.repeats))
        if "d" in todo:
            cache = model.new_cache(1, CachePolicy.rolling(12), hw)
            per_frame = (cache.k.numel() + cache.v.numel()) * cache.k.element_size() / 12
            wan13 = 2 * 30 * 1560 * 1536 * 2
            rows.append(("(d) KV-cache bytes per latent frame", f"{per_frame / 1024:.0f} KiB", "—",
                         f"{tokens} tokens/frame fp32 here; Wan 1.3B 480p bf16 = {wan13 / 2**20:.1f} MiB/frame"))
        if "e" in todo:
            rows.append(ours_vs_diffusers(model, ctx, hw, t, args.repeats))
        if "f" in todo:
            rows += sink_vs_rolling(model, ctx, hw, chunk, sig4, args.repeats)

    print(f"\npreset {args.preset}: dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads}×{cfg.head_dim} heads; "
          f"latent {hw[0]}×{hw[1]} → {tokens} tokens/frame; chunk {chunk}; torch {torch.__version__}, {args.threads} threads\n")
    print("| measure | result | target | detail |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
