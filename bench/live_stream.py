"""Live streaming measured on the toy world (CPU): time to first frame, steady chunk period against the forward-count
limit, prompt-switch latency, flat memory, and quality over time (sink vs rolling). Prints a markdown table.

    .venv/bin/python bench/live_stream.py                       # 1,000 chunks, 16 clips, 2 threads (~10 min)
    .venv/bin/python bench/live_stream.py --chunks 60 --clips 2 # a quick look

Part A runs the SaltLiveStream node in-process as ComfyUI runs it (ComfyUI 0.3.75 imported with --cpu, batch 1,
the shipped Salt toy student, 4 steps, chunks of 3 frames, sink 3 + window 9 with relative RoPE); "shown" is the
moment the node hands a chunk's frames to ComfyUI's websocket (the browser adds its own network and paint time).
The forward-count limit is (NFE + 1) forwards per chunk (one cache write), each forward timed alone on the same
warm cache. A prompt switch alternates the caption's colour (red / blue) every 30 chunks from the push of the
frame where it is requested; its latency ends at the first shown chunk whose sprite colour (the toy oracle's fit,
majority over the chunk's frames) is the new one. Memory is the process RSS and the KV cache at chunks 10 and N.
Part B streams `--clips` clips at once through salt_core's ChunkStream for N chunks per cache policy and scores
48-frame windows along the stream with the toy oracle (toy score, 0-100; real clips score 98.7, the 12-frame
training clips of the student ~47). The student was trained on 12-frame clips only.
"""
import argparse
import statistics
import time

import torch


CAPTIONS = {"red": "a red disc moving left on a dark background", "blue": "a blue disc moving left on a dark background"}
WINDOW = 16                       # chunks per scored window: 48 frames


def rss_mib() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 20


def part_a(chunks: int, switch_noise: float) -> dict:
    from comfyui_salt.dev.comfy_import import import_nodes
    nodes = import_nodes()
    from comfyui_salt.nodes import live
    from comfyui_salt.salt_core.denoiser import CachedDenoiser
    from comfyui_salt.salt_core.kv_cache import CachePolicy
    from comfyui_salt.toy.metrics.fit import fit_sprites
    from comfyui_salt.toy.worlds import get_world
    world = get_world("default").cfg
    colours = [name for name, _ in world.palette]
    salt = nodes.SaltToyModel.execute(asset="toy_salt_student").args[0]
    options = nodes.SaltCacheOptions.execute(chunk_frames=3, attention="sink", window_frames=9, sink_frames=3,
                                             relative_rope=True, context_noise=0.0, max_frames=21).args[0]
    sigmas = nodes.SaltFewStepSigmas.execute(preset="self_forcing_4step", nfe=4, shift=3.0).args[0]
    positive = nodes.SaltToyTextEncode.execute(text=CAPTIONS["red"]).args[0]
    pushes, switches, memory = [], [], {}
    start = time.perf_counter()

    def push(event, data, pixels):
        if event != live.LIVE_EVENT:                               # the run's end: no frames
            return
        now = time.perf_counter()
        frames = data["frames"]                                    # (3, 16, 16, 3) in [0, 1]
        video = (frames.movedim(-1, 0).unsqueeze(0) * 2 - 1)      # (1, 3, F, H, W) in [-1, 1]
        index = fit_sprites(video, world).colour_index[0]
        colour = colours[int(index.mode().values)]
        pushes.append((now, data["chunk"], colour))
        chunk = data["chunk"]
        if chunk in (10, chunks):
            memory[chunk] = rss_mib()
        if chunk % 30 == 0 and chunk + 30 <= chunks:
            target = "blue" if len(switches) % 2 == 0 else "red"
            live.control_request("bench", "prompt", {"text": CAPTIONS[target]})
            switches.append((now, chunk, target))
    live.push_event = push
    with torch.inference_mode():
        nodes.SaltLiveStream.execute(model=salt, positive=positive, cache_options=options, sigmas=sigmas, seed=1,
                                     width=16, height=16, max_chunks=chunks, stream_id="bench",
                                     continue_stream=False, switch_noise=switch_noise)
    ttff = pushes[0][0] - start
    steady = [b[0] - a[0] for a, b in zip(pushes[20:], pushes[21:])]
    period = statistics.median(steady)
    latencies = []
    for t0, chunk, target in switches:
        hit = next(((t - t0, c) for t, c, colour in pushes if t > t0 and colour == target), None)
        latencies.append(None if hit is None else hit[0])
    # the forward-count limit on the same model and a warm cache of the same policy
    model, policy = salt.model, CachePolicy.sink(9, 3, relative_rope=True)
    cache = model.new_cache(1, policy, (16, 16))
    ctx = positive[0][0]
    x = torch.randn(1, 3, 3, 16, 16)
    times = []
    with torch.inference_mode():
        for f in range(0, 60, 3):
            CachedDenoiser(model, ctx, cache, f).velocity(x, 0.0)          # fill the window
        for _ in range(30):
            t = time.perf_counter()
            CachedDenoiser(model, ctx, cache, 60, write=False).velocity(x, 0.5)
            times.append(time.perf_counter() - t)
    forward = statistics.median(times)
    nfe = len(sigmas) - 1
    return {"ttff_ms": 1000 * ttff, "period_ms": 1000 * period, "forward_ms": 1000 * forward,
            "limit_ms": 1000 * (nfe + 1) * forward, "ratio": period / ((nfe + 1) * forward),
            "latencies": latencies, "periods": [None if v is None else v / period for v in latencies],
            "memory": memory, "cache_mib": sum(t.numel() * t.element_size() for t in (cache.k, cache.v)) / 2 ** 20,
            "chunks": len(pushes)}


def part_b(chunks: int, clips: int) -> dict:
    from comfyui_salt.salt_core.kv_cache import CachePolicy
    from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
    from comfyui_salt.salt_core.streaming import ChunkStream
    from comfyui_salt.toy.metrics.oracle import evaluate
    from comfyui_salt.toy.metrics.score import toy_score
    from comfyui_salt.toy.shipped import TOY_STUDENT, load_toy_asset
    from comfyui_salt.toy.text import ToyTextEncoder
    from comfyui_salt.toy.worlds import get_world
    world = get_world("default").cfg
    model = load_toy_asset(TOY_STUDENT)[0].eval()
    cfg = model.cfg
    ctx = ToyTextEncoder(text_dim=cfg.text_dim, max_tokens=cfg.text_len).encode([CAPTIONS["red"]] * clips)
    sig = get_sigmas_fewstep(4, 3.0).tolist()
    starts = sorted({0, WINDOW, 4 * WINDOW, chunks // 4, chunks // 2, chunks - WINDOW} & set(range(0, chunks - WINDOW + 1)))
    out = {}
    for name, policy in (("sink 3 + window 9", CachePolicy.sink(9, 3, relative_rope=True)),
                         ("rolling 9", CachePolicy.rolling(9, relative_rope=True))):
        noise_gen, gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
        stream = ChunkStream(model, model.new_cache(clips, policy, (16, 16)), ctx, chunk_frames=3, generator=gen)
        kept, scores = {}, {}
        with torch.inference_mode():
            for c in range(chunks):
                x = stream.sample(torch.randn(clips, 3, 3, 16, 16, generator=noise_gen), sig)
                for s in starts:
                    if s <= c < s + WINDOW:
                        kept.setdefault(s, []).append(x)
                if c + 1 in [s + WINDOW for s in starts]:
                    s = c + 1 - WINDOW
                    video = torch.cat(kept.pop(s), 2)                     # (clips, 3, 48, 16, 16)
                    score = toy_score(evaluate(video, [CAPTIONS["red"]] * clips, world), world)
                    scores[s] = (float(score.mean()), float(score.std(ddof=1) / clips ** 0.5) if clips > 1 else 0.0)
        out[name] = scores
    return out


def part_c(clips: int) -> list:
    """The prompt-switch trade-off on the shipped student: red for 10 chunks, then blue, re-cached at each
    switch_noise (or the cache reset): the share of clips whose first chunk after the switch is blue, and the
    sprite's jump at the switch against an ordinary chunk boundary (px, median over clips)."""
    from comfyui_salt.salt_core.kv_cache import CachePolicy
    from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
    from comfyui_salt.salt_core.streaming import ChunkStream
    from comfyui_salt.toy.metrics.fit import fit_sprites
    from comfyui_salt.toy.shipped import TOY_STUDENT, load_toy_asset
    from comfyui_salt.toy.text import ToyTextEncoder
    from comfyui_salt.toy.worlds import get_world
    world = get_world("default").cfg
    blue = [name for name, _ in world.palette].index("blue")
    model = load_toy_asset(TOY_STUDENT)[0].eval()
    encode = ToyTextEncoder(text_dim=model.cfg.text_dim, max_tokens=model.cfg.text_len).encode
    red_ctx, blue_ctx = encode([CAPTIONS["red"]] * clips), encode([CAPTIONS["blue"]] * clips)
    sig = get_sigmas_fewstep(4, 3.0).tolist()
    rows = []
    for level in (None, 0.0, 0.3, 0.5, 0.7, 0.9, "reset"):
        noise_gen = torch.Generator().manual_seed(2)
        stream = ChunkStream(model, model.new_cache(clips, CachePolicy.sink(9, 3, relative_rope=True), (16, 16)),
                             red_ctx, chunk_frames=3, generator=torch.Generator().manual_seed(1))
        chunks = []
        with torch.inference_mode():
            for c in range(14):
                if c == 10 and level == "reset":
                    stream = ChunkStream(model, stream.cache, blue_ctx, chunk_frames=3, generator=stream.generator,
                                         start_frame=stream.frame)
                elif c == 10 and level is not None:
                    stream.set_prompt(blue_ctx, noise=level)
                chunks.append(stream.sample(torch.randn(clips, 3, 3, 16, 16, generator=noise_gen), sig))
        fit = fit_sprites(torch.cat(chunks, 2), world)
        jump = (fit.centre[:, 1:] - fit.centre[:, :-1]).norm(dim=-1)             # (clips, frames - 1)
        ordinary = torch.cat([jump[:, 3 * k - 1] for k in range(2, 10)]).median()
        rows.append({"level": "no switch" if level is None else level,
                     "blue": float((fit.colour_index[:, 30:33].mode(-1).values == blue).float().mean()),
                     "blue_later": float((fit.colour_index[:, 33:].mode(-1).values == blue).float().mean()),
                     "jump": float(jump[:, 29].median()), "ordinary": float(ordinary)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=1000)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--switch-noise", type=float, default=0.7, help="the live node's switch_noise in part A")
    ap.add_argument("--only-switch-table", action="store_true", help="print part C only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c = part_c(args.clips)
    print(f"| switch (sink 3 + window 9, {args.clips} clips, red → blue before chunk 11) | first chunk blue | "
          f"chunks 12-14 blue | sprite jump at the switch (median px) | ordinary boundary (px) |\n|---|---|---|---|---|")
    for r in c:
        name = r["level"] if isinstance(r["level"], str) else f"re-cache at σ {r['level']}"
        print(f"| {name} | {r['blue']:.2f} | {r['blue_later']:.2f} | {r['jump']:.2f} | {r['ordinary']:.2f} |")
    if args.only_switch_table:
        return
    a = part_a(args.chunks, args.switch_noise)
    print(f"| measure (toy world, CPU, {args.threads} threads, batch 1) | value |\n|---|---|")
    print(f"| time to first frame | {a['ttff_ms']:.0f} ms |")
    print(f"| steady chunk period (median, chunks 21..{a['chunks']}) | {a['period_ms']:.1f} ms |")
    print(f"| forward-count limit: (4 NFE + 1 cache write) × {a['forward_ms']:.2f} ms | {a['limit_ms']:.1f} ms |")
    print(f"| period / limit | {a['ratio']:.2f} |")
    lat = [v for v in a["latencies"] if v is not None]
    per = sorted(v for v in a["periods"] if v is not None)
    if lat:
        p99 = per[min(len(per) - 1, round(0.99 * (len(per) - 1)))]
        print(f"| prompt switch (switch_noise {args.switch_noise}) → first shown chunk of the new colour "
              f"({len(lat)} of {len(a['latencies'])} switches "
              f"seen) | p50 {statistics.median(per):.2f}, p99 {p99:.2f} chunk periods "
              f"(p50 {1000 * statistics.median(lat):.0f} ms) |")
    mem = a["memory"]
    if len(mem) == 2:
        first, last = sorted(mem)
        print(f"| process RSS at chunk {first} → chunk {last} | {mem[first]:.0f} → {mem[last]:.0f} MiB "
              f"({100 * (mem[last] - mem[first]) / mem[first]:+.1f} %); KV cache {a['cache_mib']:.2f} MiB at both |")
    b = part_b(args.chunks, args.clips)
    print(f"\n| cache ({args.clips} clips, 48-frame windows) | " + " | ".join(
        f"chunks {s + 1}-{s + WINDOW}" for s in sorted(next(iter(b.values())))) + " |")
    print("|---|" + "---|" * len(next(iter(b.values()))))
    for name, scores in b.items():
        print(f"| {name} | " + " | ".join(f"{m:.1f} ± {se:.1f}" for s, (m, se) in sorted(scores.items())) + " |")


if __name__ == "__main__":
    main()
