"""Backbone benchmark (CPU): prints a markdown table. Not a test; do not run beside training jobs.

    .venv/bin/python tests/bench/backbone.py [--threads 2] [--repeats 5]

(a) 4-NFE bidirectional sample time / (4 × bare forward)       target ≤ 1.03
(b) AR streaming time per chunk, chunk 2 vs chunk 20 (rolling) target ratio ≤ 1.1
(c) cached streaming vs re-running all history, 16 chunks      target ≥ 5× and ≥ 0.9× ideal
(d) KV-cache memory per latent frame
(e) our bidirectional forward vs diffusers WanTransformer3DModel, same weights  target ≤ 1.0×
"""
import argparse
import statistics
import time

import torch

from comfyui_salt.salt_core import (CachePolicy, FlowDenoiser, build_model, from_wan_state_dict,
                                    get_sigmas_fewstep, sample_fewstep_stochastic, stream_video)
from comfyui_salt.salt_core.model import BlockCausal


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="small")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.preset, seed=0).eval()
    cfg = model.cfg
    hw, chunk = (32, 32), 3
    tokens = (hw[0] // cfg.patch_size[1]) * (hw[1] // cfg.patch_size[2])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim)
    rows = []
    with torch.no_grad():
        # (a) sampler overhead
        x = torch.randn(1, cfg.in_dim, 6, *hw)
        t = torch.tensor([500.0])
        den = FlowDenoiser(model, ctx)
        sig4 = get_sigmas_fewstep(4)
        fwds, samps = [], []
        for _ in range(args.repeats):   # interleaved, so slow drifts of the machine hit both alike
            fwds.append(timed(lambda: model(x, t, ctx), 1))
            samps.append(timed(lambda: sample_fewstep_stochastic(den, x, sig4, extra_args={"seed": 0}, disable=True), 1))
        fwd, samp = statistics.median(fwds), statistics.median(samps)
        rows.append(("(a) 4-NFE sample / (4 × forward), 6 frames", f"{samp / (4 * fwd):.3f}", "≤ 1.03",
                     f"forward {fwd * 1e3:.1f} ms, sample {samp * 1e3:.1f} ms"))

        # (b) per-chunk time early vs late with a rolling window (W = 6 frames: full from chunk 2 on)
        policy = CachePolicy.rolling(6)
        per_chunk = {}

        def stream_timed(num_chunks):
            noise = torch.randn(1, cfg.in_dim, chunk * num_chunks, *hw)
            stamps = [time.perf_counter()]
            for _ in __import__("comfyui_salt.salt_core.streaming", fromlist=["x"]).rollout_stream(
                    model, noise, ctx, sig4, policy=policy, chunk_frames=chunk):
                stamps.append(time.perf_counter())
            return [b - a for a, b in zip(stamps, stamps[1:])]
        stream_timed(3)
        runs = [stream_timed(20) for _ in range(3)]
        per_chunk = [statistics.median(r[c] for r in runs) for c in range(20)]
        rows.append(("(b) per-chunk time chunk 20 / chunk 2 (rolling W=6)", f"{per_chunk[19] / per_chunk[1]:.3f}", "≤ 1.1",
                     f"chunk 2 {per_chunk[1] * 1e3:.0f} ms, chunk 20 {per_chunk[19] * 1e3:.0f} ms"))

        # (c) cache vs no cache, 16 chunks, 4 steps, full attention (same semantics)
        n_chunks, K, hw_c = 16, 4, hw
        noise = torch.randn(1, cfg.in_dim, chunk * n_chunks, *hw_c)
        cached = timed(lambda: stream_video(model, noise, ctx, sig4, policy=CachePolicy.full(chunk * n_chunks),
                                            chunk_frames=chunk), max(1, args.repeats // 2))
        uncached = timed(lambda: no_cache_rollout(model, noise, ctx, sig4, chunk), 1)
        frames_nocache = K * chunk * sum(range(1, n_chunks + 1))
        frames_cached = (K + 1) * chunk * n_chunks
        ideal = frames_nocache / frames_cached
        speed = uncached / cached
        rows.append((f"(c) no-cache / cached time, 16 chunks × 4 NFE, {hw_c[0]}×{hw_c[1]} latent", f"{speed:.2f}×", "≥ 5× and ≥ 0.9× ideal",
                     f"ideal from frames processed {ideal:.2f}× → {speed / ideal:.2f} of ideal; cached {cached:.2f} s, no cache {uncached:.2f} s"))

        # (d) memory per frame
        cache = model.new_cache(1, CachePolicy.rolling(12), hw)
        per_frame = (cache.k.numel() + cache.v.numel()) * cache.k.element_size() / 12
        wan13 = 2 * 30 * 1560 * 1536 * 2
        rows.append(("(d) KV-cache bytes per latent frame", f"{per_frame / 1024:.0f} KiB", "—",
                     f"{tokens} tokens/frame fp32 here; Wan 1.3B 480p bf16 = {wan13 / 2**20:.1f} MiB/frame"))

        # (e) ours vs diffusers
        from diffusers import WanTransformer3DModel
        ref = WanTransformer3DModel(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
                                    attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim, out_channels=cfg.out_dim,
                                    text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim,
                                    num_layers=cfg.num_layers).eval()
        ref.load_state_dict(from_wan_state_dict(model.state_dict(), "diffusers"))
        x = torch.randn(1, cfg.in_dim, 12, *hw)
        ours = timed(lambda: model(x, t, ctx), args.repeats)
        theirs = timed(lambda: ref(x, t, ctx, return_dict=False), args.repeats)
        rows.append(("(e) our forward / diffusers forward, 12 frames", f"{ours / theirs:.3f}", "≤ 1.0",
                     f"ours {ours * 1e3:.0f} ms, diffusers {theirs * 1e3:.0f} ms; both torch SDPA (CPU kernel)"))

    print(f"\npreset {args.preset}: dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads}×{cfg.head_dim} heads; "
          f"latent {hw[0]}×{hw[1]} → {tokens} tokens/frame; chunk {chunk}; torch {torch.__version__}, {args.threads} threads\n")
    print("| measure | result | target | detail |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
