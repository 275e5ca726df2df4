"""AR streaming equals a brute-force rollout that re-runs all history without a cache."""
import pytest
import torch

from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
from comfyui_salt.salt_core.streaming import ChunkStream, rollout_stream, stream_video
from helpers import assert_close, brute_force_rollout, tiny_inputs


@pytest.fixture(scope="module")
def setup():
    model = build_model("tiny", seed=4).eval()
    noise, ctx = tiny_inputs(model.cfg, frames=9)
    return model, noise, ctx


@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_stochastic_stream_equals_brute_force_rollout_without_cache(setup, nfe):
    model, noise, ctx = setup
    sigmas = get_sigmas_fewstep(nfe)
    with torch.no_grad():
        ours = stream_video(model, noise, ctx, sigmas, policy=CachePolicy.full(9), chunk_frames=3,
                            generator=torch.Generator().manual_seed(5))
        ref = brute_force_rollout(model, noise, ctx, sigmas, 3, torch.Generator().manual_seed(5))
    assert_close(ours, ref, 1e-5)


def test_prompt_switch_recaches_the_window_with_the_new_prompt(setup):
    model, noise, ctx = setup
    other = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(9))  # (token order alone would not matter)
    sigmas = get_sigmas_fewstep(2)
    noise12 = torch.cat([noise, noise[:, :, :3]], 2)
    with torch.no_grad():
        ours = stream_video(model, noise12, ctx, sigmas, policy=CachePolicy.full(12), chunk_frames=3,
                            generator=torch.Generator().manual_seed(1), prompt_switches={2: other})
        ref = brute_force_rollout(model, noise12, ctx, sigmas, 3, torch.Generator().manual_seed(1), {2: other})
        plain = stream_video(model, noise12, ctx, sigmas, policy=CachePolicy.full(12), chunk_frames=3,
                             generator=torch.Generator().manual_seed(1))
    assert_close(ours, ref, 1e-5)
    assert torch.equal(ours[:, :, :6], plain[:, :, :6])
    assert (ours[:, :, 6:] - plain[:, :, 6:]).abs().max() > 1e-3


def test_stream_yields_chunks_calls_back_every_step_and_can_be_interrupted(setup):
    model, noise, ctx = setup
    seen = []
    gen = rollout_stream(model, noise, ctx, get_sigmas_fewstep(4), policy=CachePolicy.rolling(6),
                         callback=seen.append, generator=torch.Generator().manual_seed(0))
    first = next(gen)
    assert first.shape == (2, 4, 3, 8, 8) and len(seen) == 4 and seen[0]["num_chunks"] == 3

    class Interrupted(Exception):
        pass

    def stop_at_second_chunk(d):
        if d["chunk"] == 1:
            raise Interrupted
    with pytest.raises(Interrupted):
        stream_video(model, noise, ctx, get_sigmas_fewstep(4), policy=CachePolicy.rolling(6),
                     callback=stop_at_second_chunk)


def test_window_relative_rope_streams_past_frame_1024_with_a_start_offset(setup):
    model, noise, ctx = setup
    with torch.no_grad():
        out = stream_video(model, torch.randn(2, 4, 30, 8, 8), ctx, get_sigmas_fewstep(2), chunk_frames=3,
                           policy=CachePolicy.sink(9, 3, relative_rope=True), start_frame=1000)
    assert out.shape[2] == 30 and torch.isfinite(out).all()


def test_first_frames_hook_conditions_the_stream(setup):
    model, noise, ctx = setup
    first = torch.randn(2, 4, 3, 8, 8)
    with torch.no_grad():
        a = stream_video(model, noise, ctx, get_sigmas_fewstep(1), policy=CachePolicy.full(12), first_frames=first)
        b = stream_video(model, noise, ctx, get_sigmas_fewstep(1), policy=CachePolicy.full(12), first_frames=-first)
    assert a.shape[2] == 12 and torch.equal(a[:, :, :3], first)
    assert (a[:, :, 3:] - b[:, :, 3:]).abs().max() > 1e-3


def test_bad_stream_arguments_are_rejected(setup):
    model, noise, ctx = setup
    with pytest.raises(ValueError, match="multiple of chunk_frames"):
        stream_video(model, noise[:, :, :7], ctx, get_sigmas_fewstep(2), policy=CachePolicy.full(9))
    with pytest.raises(ValueError, match="ending with 0"):
        stream_video(model, noise, ctx, torch.tensor([1.0, 0.5]), policy=CachePolicy.full(9))
    with pytest.raises(ValueError, match="CachePolicy"):
        stream_video(model, noise, ctx, get_sigmas_fewstep(2))


# -- the chunk engine (ChunkStream) --------------------------------------------------------------------------
def stream_of(model, ctx, policy, seed=3, **kw):
    from comfyui_salt.salt_core.streaming import ChunkStream
    cache = model.new_cache(ctx.shape[0], policy, (8, 8))
    return ChunkStream(model, cache, ctx, chunk_frames=3, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("switch", [False, True], ids=["same-prompt", "new-prompt"])
@pytest.mark.parametrize("policy", [CachePolicy.full(18), CachePolicy.sink(9, 3, relative_rope=True)],
                         ids=["full", "sink-relative"])
def test_a_saved_stream_continues_exactly_where_it_stopped_in_a_new_cache(setup, policy, switch):
    """Pause after 3 chunks, save to bytes, continue in a fresh stream on a fresh cache (another queue run):
    the next chunks, with or without a prompt switch at the resume, equal those of the stream that never
    stopped."""
    import io
    from comfyui_salt.salt_core.streaming import ChunkStream
    model, noise, ctx = setup
    other = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(11))
    chunks = torch.randn(6, 2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    sig = get_sigmas_fewstep(2).tolist()
    with torch.no_grad():
        whole = stream_of(model, ctx, policy, context_noise=0.1)
        ref = [whole.sample(chunks[c], sig) for c in range(3)]
        if switch:
            whole.set_prompt(other)
        ref += [whole.sample(chunks[c], sig) for c in range(3, 6)]

        first = stream_of(model, ctx, policy, context_noise=0.1)
        ours = [first.sample(chunks[c], sig) for c in range(3)]
        buffer = io.BytesIO()
        torch.save(first.state(), buffer)
        state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        cache = model.new_cache(2, policy, (8, 8))
        later = ChunkStream.from_state(model, cache, state, chunk_frames=3, context_noise=0.1,
                                       generator=torch.Generator())
        if switch:
            later.set_prompt(other)
        ours += [later.sample(chunks[c], sig) for c in range(3, 6)]
    assert all(torch.equal(a, b) for a, b in zip(ours, ref)) and later.frame == whole.frame == 18


def test_a_prompt_schedule_with_several_switches_equals_a_brute_force_rollout(setup):
    model, noise, ctx = setup
    prompts = [torch.randn(ctx.shape, generator=torch.Generator().manual_seed(20 + i)) for i in range(3)]
    schedule = {1: prompts[0], 2: prompts[1], 4: prompts[2]}
    noise15 = torch.randn(2, 4, 15, 8, 8, generator=torch.Generator().manual_seed(8))
    sigmas = get_sigmas_fewstep(2)
    with torch.no_grad():
        ours = stream_video(model, noise15, ctx, sigmas, policy=CachePolicy.full(15), chunk_frames=3,
                            generator=torch.Generator().manual_seed(1), prompt_switches=schedule)
        ref = brute_force_rollout(model, noise15, ctx, sigmas, 3, torch.Generator().manual_seed(1), schedule)
    assert_close(ours, ref, 1e-5)


def test_a_stream_step_writes_what_produce_returns_and_advances(setup):
    """`step` is the one chunk loop: produce gets the stream at the chunk's position; the frames it returns are
    written as context (the next chunk sees them), its output is returned as is."""
    model, noise, ctx = setup
    frames = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    seen = []
    with torch.no_grad():
        a, b = stream_of(model, ctx, CachePolicy.full(9)), stream_of(model, ctx, CachePolicy.full(9))
        out = a.step(lambda s: (seen.append(s.frame) or "output", frames))
        b.write(frames)
        after_a, after_b = a.denoiser()(noise[:, :, 3:6], 0.5), b.denoiser()(noise[:, :, 3:6], 0.5)
    assert out == "output" and seen == [0] and a.frame == b.frame == 3 and torch.equal(after_a, after_b)


def test_a_noisy_prompt_switch_re_caches_the_kept_frames_written_at_that_level(setup):
    """set_prompt(context, noise=s) leaves the cache as if the kept frames had been written, chunk by chunk, at σ = s
    under the new prompt (from the same generator): the next chunk's denoiser output is equal; noise=None keeps the
    stream's context_noise (0 here), and a level outside [0, 1) is refused."""
    model, noise, ctx = setup
    other = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(9))
    frames = [torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(30 + i)) for i in range(2)]
    with torch.no_grad():
        switched = stream_of(model, ctx, CachePolicy.full(9))
        for f in frames:
            switched.write(f)
        switched.generator = torch.Generator().manual_seed(3)
        switched.set_prompt(other, noise=0.5)
        ref = ChunkStream(model, model.new_cache(2, CachePolicy.full(9), (8, 8)), other, chunk_frames=3,
                          context_noise=0.5, generator=torch.Generator().manual_seed(3))
        for f in frames:
            ref.write(f)
        clean = stream_of(model, ctx, CachePolicy.full(9))
        for f in frames:
            clean.write(f)
        clean.set_prompt(other)
        x = noise[:, :, 3:6]
        got, want, plain = (s.denoiser(write=False)(x, 0.5) for s in (switched, ref, clean))
    assert torch.equal(got, want)
    assert (got - plain).abs().max() > 1e-3                  # the level is used, not the stream's 0
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="noise"):
            clean.set_prompt(other, noise=bad)


@pytest.mark.parametrize("policy", [CachePolicy.full(15), CachePolicy.sink(9, 3, relative_rope=True),
                                    CachePolicy.rolling(6, relative_rope=True)], ids=["full", "sink", "rolling"])
def test_a_video_written_as_context_continues_as_the_stream_that_made_it(setup, policy):
    """Continuation (start_latent of several frames): writing a stream's 12 frames in one call leaves the cache as
    the stream that generated them chunk by chunk left it, so the next chunk is the same; a rolling or sink cache
    takes more frames than its window (it refused a write longer than window − sink)."""
    model, noise, ctx = setup
    chunks = torch.randn(5, 2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(12))
    image = torch.randn(2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(14))
    sig = get_sigmas_fewstep(2).tolist()
    for start in ([], [image]):   # from noise (4 chunks), or from an image as I2V starts (1 + 3 chunks)
        with torch.no_grad():
            made = stream_of(model, ctx, policy)
            for frames in start:
                made.write(frames)
            video = torch.cat(start + [made.sample(chunks[c], sig) for c in range(4 - len(start))], 2)
            want = made.sample(chunks[4], sig, stochastic=False)
            written = stream_of(model, ctx, policy)
            written.write(video)                          # (2, 4, 12 or 10, 8, 8) in one call
            got = written.sample(chunks[4], sig, stochastic=False)
        assert written.frame == made.frame == video.shape[2] + 3 and torch.equal(got, want)


def test_guidance_with_one_prompt_for_a_batch_equals_each_video_on_its_own(setup):
    """A context and an unconditional context of batch 1 serve every video under CFG (it failed on the batch)."""
    model, noise, ctx = setup
    unc = torch.zeros_like(ctx[:1])
    kw = dict(policy=CachePolicy.full(9), chunk_frames=3, stochastic=False, cfg_scale=2.0, uncond_context=unc)
    sig = get_sigmas_fewstep(2)
    with torch.no_grad():
        both = stream_video(model, noise, ctx[:1], sig, **kw)
        each = torch.cat([stream_video(model, noise[i:i + 1], ctx[:1], sig, **kw) for i in range(2)])
    assert_close(both, each, 1e-5)


def test_first_frames_of_one_video_start_every_video_and_a_mismatched_or_stray_input_is_named(setup):
    model, noise, ctx = setup
    first = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(13))
    kw = dict(policy=CachePolicy.full(10), chunk_frames=3, stochastic=False)
    sig = get_sigmas_fewstep(2)
    with torch.no_grad():
        both = stream_video(model, noise, ctx, sig, first_frames=first, **kw)
        each = torch.cat([stream_video(model, noise[i:i + 1], ctx[i:i + 1], sig, first_frames=first, **kw)
                          for i in range(2)])
        assert_close(both, each, 1e-5)
        for bad in (torch.zeros(3, 4, 1, 8, 8), torch.zeros(1, 4, 1, 4, 4)):
            with pytest.raises(ValueError, match=r"first_frames has shape .*expected \(1 or 2, 4, n, 8, 8\)"):
                stream_video(model, noise, ctx, sig, first_frames=bad, **kw)
        with pytest.raises(ValueError, match="rollout_stream: start_frame=-2"):
            stream_video(model, noise, ctx, sig, start_frame=-2, **kw)
        for key in (3, -1, "1", True):
            with pytest.raises(ValueError, match=r"prompt_switches has chunk indices \[.*\]; expected whole numbers "
                                                 r"in 0..2"):
                stream_video(model, noise, ctx, sig, prompt_switches={key: ctx}, **kw)
