"""The KV-cached chunk-by-chunk forward equals full-clip forwards with brute-force masks."""
import pytest
import torch

from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.salt_core.model import BlockCausal, build_model
from helpers import assert_close, tiny_inputs


def brute_force_token_mask(num_frames, chunk, tokens, window=-1, sink=0):
    """Token mask written out frame pair by frame pair, independent of BlockCausal.frame_mask."""
    allow = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    for q in range(num_frames):
        chunk_end = (q // chunk + 1) * chunk
        for k in range(num_frames):
            visible = k < chunk_end
            if window != -1:
                in_sink = k < sink
                in_recent = k >= chunk_end - (window - sink)
                visible = visible and (in_sink or in_recent)
            allow[q, k] = visible
    return allow.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)


def streamed(model, x, t, ctx, chunk, policy):
    """Run x chunk by chunk through a cache; each chunk written once, as the clean-context pass does."""
    cache = model.new_cache(x.shape[0], policy, x.shape[-2:])
    outs = []
    for f0 in range(0, x.shape[2], chunk):
        outs.append(model(x[:, :, f0:f0 + chunk], t[:, f0:f0 + chunk], ctx, cache=cache, start_frame=f0))
    return torch.cat(outs, 2), cache


@pytest.fixture(scope="module")
def setup():
    model = build_model("tiny", seed=1).eval()
    x, ctx = tiny_inputs(model.cfg, frames=12)
    t = torch.rand(2, 12, generator=torch.Generator().manual_seed(3)) * 1000
    return model, x, t, ctx


@pytest.mark.parametrize("chunk", [1, 3])
def test_block_causal_full_sequence_equals_chunked_kv_cache(setup, chunk):
    model, x, t, ctx = setup
    with torch.no_grad():
        full = model(x, t, ctx, block_causal=BlockCausal(chunk))
        stream, _ = streamed(model, x, t, ctx, chunk, CachePolicy.full(max_frames=12))
    assert_close(stream, full, 1e-5, f"chunk {chunk}")


@pytest.mark.parametrize("window,sink,chunk", [(6, 0, 3), (9, 3, 3), (4, 1, 1), (5, 2, 3)])
def test_rolling_window_and_sink_equal_brute_force_masked_recomputation(setup, window, sink, chunk):
    model, x, t, ctx = setup
    tokens = 16
    mask = brute_force_token_mask(12, chunk, tokens, window, sink)
    with torch.no_grad():
        reference = model(x, t, ctx, attn_mask=mask)
        policy = CachePolicy.sink(window, sink) if sink else CachePolicy.rolling(window)
        full_mask = model(x, t, ctx, block_causal=BlockCausal(chunk, policy))
        stream, _ = streamed(model, x, t, ctx, chunk, policy)
    assert_close(full_mask, reference, 1e-6, "BlockCausal mask vs brute force")
    assert_close(stream, reference, 1e-5, f"window {window} sink {sink} chunk {chunk}")


def test_rerunning_the_newest_chunk_overwrites_its_own_slots(setup):
    model, x, t, ctx = setup
    policy = CachePolicy.rolling(6)
    with torch.no_grad():
        clean, _ = streamed(model, x, t, ctx, 3, policy)
        cache = model.new_cache(2, policy, (8, 8))
        outs = []
        for f0 in range(0, 12, 3):
            for _ in range(2):  # a noisy denoising step writes junk K/V first; the context pass overwrites it
                model(torch.randn_like(x[:, :, f0:f0 + 3]), t[:, f0:f0 + 3] * 0.5, ctx, cache=cache, start_frame=f0)
            outs.append(model(x[:, :, f0:f0 + 3], t[:, f0:f0 + 3], ctx, cache=cache, start_frame=f0))
    assert_close(torch.cat(outs, 2), clean, 1e-5)


def test_non_writing_grad_forward_matches_zero_copy_forward(setup):
    model, x, t, ctx = setup
    policy = CachePolicy.sink(6, 3)
    with torch.no_grad():
        _, cache = streamed(model, x[:, :, :9], t[:, :9], ctx, 3, policy)
        zero_copy = model(x[:, :, 9:], t[:, 9:], ctx, cache=cache, start_frame=9)
    _, cache2 = streamed(model, x[:, :, :9], t[:, :9], ctx, 3, policy)
    with torch.enable_grad():
        gathered = model(x[:, :, 9:], t[:, 9:], ctx, cache=cache2, start_frame=9)
    assert gathered.requires_grad
    assert_close(gathered.detach(), zero_copy, 1e-5)


def test_rolling_cache_tensors_are_never_reallocated(setup):
    model, x, t, ctx = setup
    cache = model.new_cache(2, CachePolicy.rolling(6, relative_rope=True), (8, 8))
    ptrs = (cache.k.data_ptr(), cache.v.data_ptr(), cache.k.numel())
    with torch.no_grad():
        for f0 in range(0, 30, 3):
            model(torch.randn(2, 4, 3, 8, 8), torch.full((2,), 500.0), ctx, cache=cache, start_frame=f0)
            assert (cache.k.data_ptr(), cache.v.data_ptr(), cache.k.numel()) == ptrs
    assert cache.num_frames == 30


def test_cross_attention_kv_is_cached_per_prompt_and_reset_on_change(setup):
    model, x, t, ctx = setup
    cache = model.new_cache(2, CachePolicy.full(12), (8, 8))
    with torch.no_grad():
        model(x[:, :, :3], t[:, :3], ctx, cache=cache, start_frame=0)
        first = cache.cross_k[0]
        model(x[:, :, 3:6], t[:, 3:6], ctx, cache=cache, start_frame=3)
        assert cache.cross_k[0] is first
        other = ctx.flip(0)
        out = model(x[:, :, 6:9], t[:, 6:9], other, cache=cache, start_frame=6)
        assert cache.cross_k[0] is not first
    # the new prompt really is used: same as a fresh cache fed the same history with the new prompt
    ref_cache = model.new_cache(2, CachePolicy.full(12), (8, 8))
    with torch.no_grad():
        model(x[:, :, :3], t[:, :3], ctx, cache=ref_cache, start_frame=0)
        model(x[:, :, 3:6], t[:, 3:6], ctx, cache=ref_cache, start_frame=3)
        ref_cache.reset_cross()
        ref = model(x[:, :, 6:9], t[:, 6:9], other, cache=ref_cache, start_frame=6)
    assert_close(out, ref, 1e-6)


def test_relative_rope_without_sink_equals_absolute_rope_below_1024(setup):
    model, x, t, ctx = setup
    with torch.no_grad():
        for start in (0, 500):
            a, _ = streamed_from(model, x, t, ctx, start, CachePolicy.rolling(6))
            r, _ = streamed_from(model, x, t, ctx, start, CachePolicy.rolling(6, relative_rope=True))
            assert_close(r, a, 1e-5, f"start {start}")


def streamed_from(model, x, t, ctx, start, policy):
    cache = model.new_cache(2, policy, (8, 8))
    cache.reset(start)
    outs = [model(x[:, :, f:f + 3], t[:, f:f + 3], ctx, cache=cache, start_frame=start + f) for f in range(0, 12, 3)]
    return torch.cat(outs, 2), cache


def test_absolute_rope_refuses_positions_past_the_table_and_relative_rope_runs_past_1024(setup):
    model, x, t, ctx = setup
    with torch.no_grad():
        with pytest.raises(ValueError, match="relative_rope=True"):
            streamed_from(model, x, t, ctx, 1020, CachePolicy.rolling(6))
        out, cache = streamed_from(model, x, t, ctx, 1020, CachePolicy.sink(6, 3, relative_rope=True))
    assert torch.isfinite(out).all() and cache.end == 1032


def test_cache_rejects_gaps_oversized_chunks_and_overflow(setup):
    model, x, t, ctx = setup
    cache = model.new_cache(2, CachePolicy.full(6), (8, 8))
    with torch.no_grad():
        with pytest.raises(ValueError, match="does not continue"):
            model(x[:, :, :3], t[:, :3], ctx, cache=cache, start_frame=3)
        model(x[:, :, :3], t[:, :3], ctx, cache=cache, start_frame=0)
        model(x[:, :, 3:6], t[:, 3:6], ctx, cache=cache, start_frame=3)
        with pytest.raises(ValueError, match="global cache is full"):
            model(x[:, :, 6:9], t[:, 6:9], ctx, cache=cache, start_frame=6)
    small = model.new_cache(2, CachePolicy.sink(4, 2), (8, 8))
    with pytest.raises(ValueError, match="does not fit the window"):
        model(x[:, :, :3], t[:, :3], ctx, cache=small, start_frame=0)
    with pytest.raises(ValueError, match="sink_frames"):
        CachePolicy.sink(3, 3)


def test_gradient_checkpointing_with_a_cache_mutated_after_forward_gives_the_same_gradients():
    model = build_model("tiny", seed=2)
    x, ctx = tiny_inputs(model.cfg, frames=9)
    t = torch.full((2, 9), 400.0)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        cache = model.new_cache(2, CachePolicy.rolling(6), (8, 8))
        with torch.no_grad():
            model(x[:, :, :3], t[:, :3], ctx, cache=cache, start_frame=0)
        out = model(x[:, :, 3:6], t[:, 3:6], ctx, cache=cache, start_frame=3)  # grad-carrying, writes deferred
        with torch.no_grad():  # later chunks rewrite the ring (frame 6..8 evict frames 0..2)
            model(x[:, :, 6:9] * 3, t[:, 6:9], ctx, cache=cache, start_frame=6)
        out.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.gradient_checkpointing = False
    assert_close(grads[1], grads[0], 1e-5, "checkpointed vs plain gradients")


def denoise_chunks(model, x, ctx, policy, steps=4):
    """Each chunk: `steps` noisy forwards re-running its slots, then a clean forward (the streamer's pattern)."""
    cache = model.new_cache(2, policy, (8, 8))
    outs = []
    for f0 in range(0, x.shape[2], 3):
        chunk = x[:, :, f0:f0 + 3]
        for k in range(steps):
            t = torch.full((2, 3), 1000.0 * (1 - k / steps))
            outs.append(model(chunk + (1 - k / steps) * torch.sin(chunk), t, ctx, cache=cache, start_frame=f0))
        outs.append(model(chunk, torch.zeros(2, 3), ctx, cache=cache, start_frame=f0))
    return torch.cat(outs, 2)


@pytest.mark.parametrize("policy", [CachePolicy.sink(9, 3, relative_rope=True), CachePolicy.rolling(6, relative_rope=True)])
def test_relative_rope_keys_rotated_once_per_chunk_equal_keys_rotated_at_every_forward(setup, policy):
    model, x, t, ctx = setup
    x = torch.cat([x, x.flip(2)], 2)   # 24 frames: the window slides five times
    with torch.no_grad():              # zero-copy steps: rotated keys kept in k_rot
        kept = denoise_chunks(model, x, ctx, policy)
    with torch.enable_grad():          # gathered steps: every attended key rotated at every forward
        every = denoise_chunks(model, x, ctx, policy).detach()
    assert_close(kept, every, 1e-5, policy.kind)


def test_relative_rope_rotates_each_window_key_once_per_chunk(setup, monkeypatch):
    from comfyui_salt.salt_core import kv_cache
    model, x, t, ctx = setup
    rotated = []   # frames rotated per call (16 tokens per frame at 8×8 latents, patch 2×2)
    real = kv_cache.apply_rope
    monkeypatch.setattr(kv_cache, "apply_rope", lambda k, cos, sin: rotated.append(k.shape[2] // 16) or real(k, cos, sin))
    W, S, n, K, layers = 9, 3, 3, 4, model.cfg.num_layers
    x = torch.cat([x, x.flip(2)], 2)
    with torch.no_grad():
        denoise_chunks(model, x, ctx, CachePolicy.sink(W, S, relative_rope=True), steps=K)
    calls_per_chunk = layers * (K + 1)
    per_chunk = [sum(rotated[i:i + calls_per_chunk]) // layers for i in range(0, len(rotated), calls_per_chunk)]
    # Once the window is full, each chunk rotates the W - S - n ring frames that moved once, and its own
    # n frames at each of its K + 1 forwards; the sink never moves. Rotating every step would be (K+1)·W = 45.
    assert per_chunk[3:] == [(W - S - n) + (K + 1) * n] * (len(per_chunk) - 3), per_chunk


# -- bf16 autocast over float32 weights (how the job trains on a GPU; CPU autocast runs the same code path) ----------
@pytest.mark.parametrize("policy", [CachePolicy.full(9), CachePolicy.rolling(6),
                                    CachePolicy.sink(6, 3, relative_rope=True)])
def test_streaming_under_bf16_autocast_keeps_a_bf16_cache_and_follows_the_fp32_stream(setup, policy):
    from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
    from comfyui_salt.salt_core.streaming import stream_video
    model = setup[0]
    noise, ctx = tiny_inputs(model.cfg, frames=9)
    run = lambda: stream_video(model, noise, ctx, get_sigmas_fewstep(4), policy=policy, chunk_frames=3,  # noqa: E731
                               generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = run()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.new_cache(2, policy, (8, 8)).k.dtype == torch.bfloat16
            out = run()
    assert model.new_cache(2, policy, (8, 8)).k.dtype == torch.float32
    assert_close(out, ref, 5e-2, "bf16 autocast stream vs fp32 stream:")
    assert (out - ref).abs().max() > 0          # autocast really ran in bf16


def test_a_float32_cache_under_bf16_autocast_trains_through_the_rollout(setup):
    """A cache allocated outside autocast (fp32) is written with bf16 K/V inside it: cast on write. The gradient
    under autocast, with either cache, follows the float32 rollout's within bf16's error."""
    from comfyui_salt.salt_core.rollout import rollout_self_forcing
    from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
    model = build_model("tiny", seed=4)
    noise, ctx = tiny_inputs(model.cfg, frames=6)

    def grad(cache=None, autocast=True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            roll = rollout_self_forcing(model, noise, ctx, get_sigmas_fewstep(4), 2, policy=CachePolicy.full(6),
                                        generator=torch.Generator().manual_seed(1), cache=cache)
        roll.x0.float().square().mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    reference = grad(autocast=False)
    for cache in (None, model.new_cache(2, CachePolicy.full(6), (8, 8))):
        g = grad(cache)
        assert torch.isfinite(g).all()
        cos = torch.nn.functional.cosine_similarity(g.double(), reference.double(), dim=0)
        assert cos > 0.99 and 0.9 < g.norm() / reference.norm() < 1.1, (cos, g.norm() / reference.norm())


def test_compiled_blocks_share_one_graph_across_layers_and_match_eager():
    """torch.compile of each block (regional compilation, as the GPU check does) must not specialise on the layer:
    one graph serves every layer. With the layer's cache reached by its index it compiled once per layer, up to
    dynamo's limit of 8, and ran the rest eagerly (found on an H100). Counted with a backend that records each
    graph it is given; the compiled stream must equal the eager one."""
    from comfyui_salt.salt_core.config import WanConfig
    from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
    from comfyui_salt.salt_core.streaming import stream_video
    torch._dynamo.reset()
    model = build_model(WanConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=10, in_dim=4, out_dim=4, text_dim=16,
                                  freq_dim=32), seed=0).eval()
    noise, ctx = torch.randn(1, 4, 9, 4, 4, generator=torch.Generator().manual_seed(0)), torch.randn(1, 3, 16)
    policy = CachePolicy.sink(6, 3, relative_rope=True)
    run = lambda: stream_video(model, noise, ctx, get_sigmas_fewstep(2), policy=policy, chunk_frames=3,  # noqa: E731
                               generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = run()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    try:
        for block in model.blocks:
            block.compile(dynamic=True, backend=counting_backend)
        with torch.no_grad():
            compiled = run()
    finally:
        for block in model.blocks:
            block._compiled_call_impl = None
        torch._dynamo.reset()
    assert 1 <= len(graphs) <= 3, f"{len(graphs)} graphs for 10 layers"
    assert torch.equal(compiled, eager)


def test_attended_frames_are_the_sink_and_the_newest_ring_or_everything():
    from comfyui_salt.salt_core.kv_cache import attended_frames
    assert attended_frames(CachePolicy(max_frames=21), 0, 9) == list(range(9))
    assert attended_frames(CachePolicy(window_frames=6, sink_frames=2), 0, 12) == [0, 1, 8, 9, 10, 11]
    assert attended_frames(CachePolicy(window_frames=6, sink_frames=2), 5, 17) == [5, 6, 13, 14, 15, 16]
    assert attended_frames(CachePolicy(window_frames=6, sink_frames=0), 0, 4) == [0, 1, 2, 3]
    assert attended_frames(CachePolicy(window_frames=6, sink_frames=3), 0, 2) == [0, 1]


@pytest.mark.parametrize("policy", [CachePolicy.full(9), CachePolicy.rolling(6), CachePolicy.sink(6, 3),
                                    CachePolicy.sink(6, 3, relative_rope=True)])
def test_a_cache_in_another_dtype_than_the_compute_serves_keys_in_the_computes_dtype(setup, policy):
    """A bf16 cache read by a float32 forward without autocast (e.g. made under autocast, used outside it):
    every policy, the relative-RoPE rotated keys included, hands attention keys in the forward's dtype."""
    from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
    from comfyui_salt.salt_core.streaming import stream_video
    model = setup[0]
    noise, ctx = tiny_inputs(model.cfg, frames=9)
    outs = []
    for dtype in (torch.float32, torch.bfloat16):
        cache = model.new_cache(2, policy, (8, 8), dtype=dtype)
        with torch.no_grad():
            outs.append(stream_video(model, noise, ctx, get_sigmas_fewstep(2), policy=policy, chunk_frames=3,
                                     generator=torch.Generator().manual_seed(3), cache=cache))
    assert_close(outs[1], outs[0], 5e-2, "bf16 cache vs float32 cache:")


def test_commit_releases_the_deferred_writes_a_checkpointed_block_would_keep():
    model = build_model("tiny", seed=2)
    x, ctx = tiny_inputs(model.cfg, frames=6)
    cache = model.new_cache(2, CachePolicy.full(6), (8, 8))
    step = cache.step(0, 3, write=True)
    layers = [step.layer(i) for i in range(model.cfg.num_layers)]
    k = torch.randn(2, model.cfg.num_heads, 3 * 16, model.cfg.head_dim, requires_grad=True)
    for layer in layers:
        layer.keys_values(k, k * 2)                    # a grad step: writes deferred to commit
    assert all(layer.pending is not None for layer in layers)
    step.commit()
    assert all(layer.pending is None for layer in layers)
    assert torch.equal(cache.k[0, :, :, :48], k.detach()) and torch.equal(cache.v[-1, :, :, :48], 2 * k.detach())


@pytest.mark.parametrize("write", [True, False])
def test_only_a_writing_step_advances_the_cache_with_or_without_layers(setup, write):
    """A reading step (write=False: SC's composed branch, the lab teacher's reads) leaves the cache's frames and
    high-water mark alone; a writing one advances them, whether its layers asked for their views or not."""
    model = setup[0]
    for layers in (0, model.cfg.num_layers):
        cache = model.new_cache(2, CachePolicy.full(6), (8, 8))
        with torch.no_grad():
            step = cache.step(0, 3, write=write)
            for i in range(layers):
                step.layer(i)
            step.commit()
        assert cache.end == (3 if write else 0) and cache.slot_frame[:3] == ([0, 1, 2] if write else [-1] * 3)
