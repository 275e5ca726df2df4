"""SaltLiveStream in-process (`execute` as ComfyUI runs it) and its control routes' logic; the real server and
browser checks are in tests/test_comfy_server.py."""
import sys

import pytest
import torch

from test_nodes import run, toy_options


def live_inputs(salt_nodes, toy_salt, **kw):
    args = dict(model=toy_salt, positive=run(salt_nodes.SaltToyTextEncode, text="a red disc moving left")[0],
                cache_options=toy_options(salt_nodes, attention="rolling"),
                sigmas=run(salt_nodes.SaltFewStepSigmas, preset="2step", nfe=2, shift=1.0)[0], seed=5,
                width=16, height=16, max_chunks=3, stream_id="t", continue_stream=True)
    args.update(kw)
    return args


@pytest.fixture(autouse=True)
def fresh_sessions():
    from comfyui_salt.nodes import live
    live.SESSIONS.clear()
    live.STARTING.clear()
    yield
    live.SESSIONS.clear()
    live.STARTING.clear()


def test_queueing_again_continues_the_video_exactly_where_it_stopped(salt_nodes, toy_salt):
    """Two runs of 3 chunks on one stream_id give the frames of one 6-chunk run (same seed, new stream id)."""
    first = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="a"))
    second = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="a"))
    whole = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="b", max_chunks=6))
    assert first[0].shape == (9, 16, 16, 3) and whole[0].shape == (18, 16, 16, 3)
    assert torch.equal(torch.cat([first[0], second[0]]), whole[0])
    assert torch.equal(torch.cat([first[1]["samples"], second[1]["samples"]], 2), whole[1]["samples"])
    fresh = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="a", continue_stream=False))
    assert torch.equal(fresh[0], first[0])                        # continue_stream off: a new stream from the seed


def test_stop_and_a_typed_prompt_are_applied_at_chunk_boundaries(salt_nodes, toy_salt, monkeypatch):
    """Intents sent while chunk k is shown take effect at a later chunk boundary: the video equals the plain stream
    up to that boundary and differs after it (decoding runs on a worker thread, so the node may be up to the
    queue's depth ahead of what is shown: at most 4 chunks here). Stop may also land between a chunk's steps,
    which drops that chunk: the run may end with chunk k itself."""
    from comfyui_salt.nodes import live
    seen, asked, ends = [], {}, []

    def push(event, data, pixels):                                 # what the browser would receive
        if data["stream"] != "t":
            return
        if event == live.LIVE_END_EVENT:
            ends.append((len(seen), data))
            return
        seen.append(data["chunk"])
        if data["chunk"] == 2:
            asked["prompt"] = 2
            assert live.control_request("t", "prompt", {"text": "a blue square moving up"})[0] == 200
        if data["chunk"] == 8:
            asked["stop"] = 8
            assert live.control_request("t", "stop", None)[0] == 200
    monkeypatch.setattr(live, "push_event", push)
    out = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=50))
    chunks = out[0].shape[0] // 3
    assert seen == list(range(1, chunks + 1)) and 8 <= chunks <= 8 + 4
    plain = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="p", max_chunks=chunks))
    differ = [c for c in range(chunks) if not torch.equal(out[0][3 * c:3 * c + 3], plain[0][3 * c:3 * c + 3])]
    assert differ and 2 <= differ[0] <= 2 + 4 and differ == list(range(differ[0], chunks)), differ
    status = live.control_request("t", "status", None)[1]
    assert status["chunks"] == chunks and status["prompt"] == "a blue square moving up" and not status["running"]
    assert status["ended"] == "stop"                               # and the page was told, after the last frames
    assert ends[0] == (chunks, {"stream": "t", "node": None, "ended": "stop", "chunk": chunks}), ends


@pytest.mark.parametrize("change", ["continue_off", "other_size"])
def test_a_prompt_typed_between_runs_switches_the_next_run_when_it_starts_a_new_stream(salt_nodes, toy_salt, change):
    """A prompt typed after a run ended was answered 200 and then dropped when the next run started a new stream
    (continue_stream off, or another size: a new session): it now goes to the next run of that stream id."""
    from comfyui_salt.nodes import live
    run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=2))
    assert live.control_request("t", "prompt", {"text": "a blue square moving up"})[0] == 200
    new = dict(continue_stream=False) if change == "continue_off" else dict(width=24)
    typed = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=3, **new))
    plain = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="p", max_chunks=3, **new))
    assert typed[0].shape == plain[0].shape and not torch.equal(typed[0], plain[0])
    assert live.control_request("t", "status", None)[1]["prompt"] == "a blue square moving up"


def test_a_stop_sent_while_the_next_run_loads_ends_it_and_one_between_runs_is_refused(salt_nodes, toy_salt,
                                                                                      monkeypatch):
    """Between runs Stop, Pause and Resume got 200 and were then dropped when the next run started, after its model
    loaded: a Stop clicked while a continued stream's run was loading let it go to max_chunks. Now one sent between
    runs gets a 409 saying the stream is not running, and one sent while the next run loads ends it before its
    first chunk (as a Stop between chunks would; the stream kept as it was)."""
    from comfyui_salt.nodes import live
    first = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=2))
    code, reply = live.control_request("t", "stop", None)
    assert code == 409 and "is not running" in reply["error"] and "queue" in reply["error"], reply
    assert live.control_request("t", "pause", {})[0] == 409
    replies, real = [], live.free_memory

    def loading(*args):                                  # the model being loaded: the run has begun
        replies.append(live.control_request("n" if replies else "t", "stop", {}))
        return real(*args)
    monkeypatch.setattr(live, "free_memory", loading)
    second = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=6))
    assert replies[0][0] == 200 and second[0].shape[0] == 0, (replies, second[0].shape)
    status = live.control_request("t", "status", None)[1]
    assert status["ended"] == "stop" and status["chunks"] == 2 and not status["running"], status
    fresh = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="n", max_chunks=6))
    assert replies[1][0] == 200 and fresh[0].shape[0] == 0      # a new stream's first run too (it was a 404)
    assert live.control_request("n", "status", None)[1]["ended"] == "stop"
    monkeypatch.setattr(live, "free_memory", real)       # queued again: it continues from chunk 2, not stopped
    third = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=1))
    whole = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="w", max_chunks=3))
    assert torch.equal(torch.cat([first[0], third[0]]), whole[0])


@pytest.mark.parametrize("stream, action, body, code, words", [
    ("nope", "stop", None, 404, "no live stream 'nope'"),
    ("../x", "stop", None, 404, "no live stream"),
    ("t", "explode", None, 404, "unknown action 'explode'"),
    ("t", "prompt", None, 400, "expected JSON"),
    ("t", "prompt", {"text": ""}, 400, "1..2000 characters"),
    ("t", "prompt", {"text": "x" * 2001}, 400, "1..2000 characters"),
    ("t", "prompt", {"text": 5}, 400, "expected JSON"),
    ("t", "prompt", ["text"], 400, "expected JSON"),
])
def test_bad_control_requests_get_a_4xx_naming_the_problem(salt_nodes, toy_salt, stream, action, body, code, words):
    from comfyui_salt.nodes import live
    run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=1))
    status, reply = live.control_request(stream, action, body)
    assert status == code and words in reply["error"] and len(reply["error"]) < 300


@pytest.mark.parametrize("text, words", [
    ("a purple elephant", "SaltLiveStream: prompt='a purple elephant': "),
    ("x" * 1500, "(1500 characters)"),
])
def test_a_typed_prompt_the_model_cannot_encode_is_refused_at_the_route(salt_nodes, toy_salt, text, words):
    """Checked when sent (a 400 naming the prompt, quoted), not at the next chunk boundary where it used to end the
    run: the stream keeps its prompt."""
    from comfyui_salt.nodes import live
    run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=1))
    status, reply = live.control_request("t", "prompt", {"text": text})
    assert status == 400 and words in reply["error"] and len(reply["error"]) < 800, reply      # vocabulary listed
    assert live.SESSIONS["t"].control.prompt is None


def test_a_wan_stream_without_the_clip_input_refuses_typed_prompts_and_one_failing_later_leaves_the_stream_on(
        salt_nodes, monkeypatch):
    from comfyui_salt.nodes import live
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    wan = SaltModel(build_model("tiny-hd128", seed=0).eval(), "wan21", "tiny wan", causal=True)
    check = live.prompt_check(wan, clip=None)
    with pytest.raises(ValueError, match="no clip input .* connect Load CLIP"):
        check("a cat")
    assert live.prompt_check(wan, clip=object()) is None
    pushed = []

    def push(event, data, pixels):                       # a prompt that passes the route but fails to encode
        if event != live.LIVE_EVENT:
            return
        pushed.append(data["chunk"])
        if data["chunk"] == 1:
            control = live.SESSIONS["t"].control
            with control.lock:
                control.prompt = "a purple elephant"
    monkeypatch.setattr(live, "push_event", push)
    toy = run(salt_nodes.SaltToyModel, asset="toy_salt_student")[0]
    out = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy, max_chunks=4))
    status = live.control_request("t", "status", None)[1]
    assert out[0].shape[0] == 12 and "unknown word" in status["prompt_error"] and status["prompt"] is None


def test_a_prompt_no_tokenizer_takes_is_refused_at_the_route_and_one_that_gets_past_it_leaves_the_stream_on(
        salt_nodes, monkeypatch):
    """JSON's "\\ud800" is valid and decodes to a lone surrogate, on which umT5's sentencepiece tokenizer (ComfyUI's,
    through a tiny clip) raises RuntimeError, not ValueError: the route answers 400 naming it; one that reaches the
    encoder anyway (any exception type) is reported in the status and the stream goes on to its budget."""
    import json
    from tiny_clip import tiny_umt5_clip
    from comfyui_salt.nodes import live
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    clip = tiny_umt5_clip(["a cat walking on a beach", "a dog running in snow"], width=64)
    lone = json.loads('{"text": "a cat \\ud800"}')["text"]
    with pytest.raises(RuntimeError):                    # the tokenizer's own refusal
        clip.encode_from_tokens(clip.tokenize(lone))
    wan = SaltModel(build_model("tiny-hd128", seed=0).eval(), "wan21", "tiny wan", causal=True)
    replies = []

    def push(event, data, pixels):
        if event != live.LIVE_EVENT or data["chunk"] != 1:
            return
        replies.append(live.control_request("w", "prompt", {"text": lone}))
        control = live.SESSIONS["w"].control
        with control.lock:                               # past the route, as a check that missed it would let it
            control.prompt = lone
    monkeypatch.setattr(live, "push_event", push)
    positive = [[clip.encode_from_tokens(clip.tokenize("a cat walking on a beach")), {}]]
    run(salt_nodes.SaltLiveStream, model=wan, positive=positive, clip=clip,
        **{k: v for k, v in live_inputs(salt_nodes, None, max_chunks=4, width=32, height=32,
                                        stream_id="w").items() if k not in ("model", "positive")})
    status = live.control_request("w", "status", None)[1]
    assert replies[0][0] == 400 and "not valid Unicode" in replies[0][1]["error"], replies
    assert status["ended"] == "max_chunks" and status["chunks"] == 4, status
    assert status["prompt_error"].startswith("RuntimeError") and status["prompt"] is None, status


def test_cancel_raised_while_a_typed_prompt_encodes_ends_the_run_as_cancel(salt_nodes, toy_salt, monkeypatch):
    """The encoder's errors are reported and the stream goes on, but ComfyUI's interrupt exception is Cancel."""
    import comfy.model_management
    from comfyui_salt.nodes import live

    def encode(*args):
        raise comfy.model_management.InterruptProcessingException()

    def push(event, data, pixels):
        if event == live.LIVE_EVENT and data["chunk"] == 1:
            with live.SESSIONS["t"].control.lock:
                live.SESSIONS["t"].control.prompt = "a blue square moving up"
    monkeypatch.setattr(live, "encode_prompt", encode)
    monkeypatch.setattr(live, "push_event", push)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=6))
    assert live.control_request("t", "status", None)[1]["ended"] == "cancel"


def test_what_a_run_keeps_is_checked_against_the_hosts_free_memory_before_the_first_chunk(salt_nodes, toy_salt,
                                                                                          monkeypatch):
    """max_chunks 100,000 of 16×16 toy frames keeps 3.4 GiB (frames and latents, twice): refused under a 0.5 GiB
    host before the stream's session is touched, naming the fix; with keep_last_seconds the bound is a few chunks.
    The bound is checked against what KeptChunks really holds over a long run."""
    from comfyui_salt.nodes import live
    monkeypatch.setattr(live, "available_memory", lambda device: 1 << 29)
    pushed = []
    monkeypatch.setattr(live, "push_event", lambda *a: pushed.append(1))
    with pytest.raises(MemoryError, match="SaltLiveStream: keeping 100000 chunks.*keep_last_seconds"):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=100_000))
    assert not pushed and "t" not in live.SESSIONS
    for keep, per_latent, sizes in ((8, 1, [3] * 40), (37, 4, [9, 8, 16, 8] * 10), (0, 1, [3] * 12)):
        kept, shape = live.KeptChunks(keep, per_latent), (1, 3, 3, 4, 4)
        held = 0
        for size in sizes:                            # frames per chunk as the decoders deliver them (Wan: 9, 8, 16…)
            kept.add_frames(torch.zeros(size, 4, 4, 3))
            kept.add_latents(torch.zeros(shape))
            held = max(held, 4 * (sum(f.numel() for f in kept.frames) + sum(c.numel() for c in kept.chunk_latents)))
        assert held <= kept.bytes_needed(len(sizes), shape, (4, 4)) / 2, (keep, held)   # once, before the cat
    few = live.KeptChunks(8, 1)   # the last 8 frames of 3-frame chunks (144 pixels, 144 latents): the newest 4 chunks
    shape = (1, 3, 3, 4, 4)
    assert few.bytes_needed(100_000, shape, (4, 4)) == few.bytes_needed(4, shape, (4, 4)) == 2 * 4 * 4 * (144 + 144)
    assert live.KeptChunks(0, 1).bytes_needed(100_000, shape, (4, 4)) == 100_000 // 4 * few.bytes_needed(4, shape,
                                                                                                          (4, 4))


def test_a_live_stream_needs_a_cache_of_constant_size_and_a_plain_stream_id(salt_nodes, toy_salt):
    with pytest.raises(ValueError, match="use a rolling or sink cache"):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, cache_options=toy_options(salt_nodes)))
    with pytest.raises(ValueError, match="stream_id='../x'"):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="../x"))


def test_a_stream_paused_past_the_limit_ends_its_run_and_queueing_again_continues_it(salt_nodes, toy_salt,
                                                                                      monkeypatch):
    """A paused run holds ComfyUI's queue: past PAUSE_LIMIT_SECONDS it ends as Stop would (the stream kept, the
    status says why), and the next run continues the video as if it had never paused; a run that resumes in time
    goes on to its budget."""
    import threading
    import time
    from comfyui_salt.nodes import live
    monkeypatch.setattr(live, "PAUSE_LIMIT_SECONDS", 0.3)
    # without the limit the run would wait for this resume (and then run to its budget), so a broken limit fails
    late_resume = threading.Timer(20.0, live.control_request, ("z", "resume", None))
    late_resume.daemon = True

    def pause_at_second_chunk(event, data, pixels):
        if event == live.LIVE_EVENT and data["chunk"] == 2:
            assert live.control_request("z", "pause", None)[0] == 200
            late_resume.start()
    monkeypatch.setattr(live, "push_event", pause_at_second_chunk)
    start = time.monotonic()
    try:
        first = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="z", max_chunks=50))
    finally:
        late_resume.cancel()
    assert time.monotonic() - start >= 0.3
    chunks = first[0].shape[0] // 3
    assert 2 <= chunks <= 2 + 4 and live.control_request("z", "status", None)[1]["ended"] == "paused too long"
    monkeypatch.setattr(live, "push_event", lambda *a: None)
    after = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="z", max_chunks=2))
    assert live.control_request("z", "status", None)[1]["ended"] == "max_chunks"
    whole = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="w",
                                                         max_chunks=chunks + 2))
    assert torch.equal(torch.cat([first[0], after[0]]), whole[0])

    monkeypatch.setattr(live, "PAUSE_LIMIT_SECONDS", 30.0)

    def pause_then_resume(event, data, pixels):                    # resumed well inside the limit
        if event == live.LIVE_EVENT and data["chunk"] == 1:
            live.control_request("r", "pause", None)
            threading.Timer(0.1, live.control_request, ("r", "resume", None)).start()
    monkeypatch.setattr(live, "push_event", pause_then_resume)
    resumed = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="r", max_chunks=6))
    assert resumed[0].shape[0] == 18 and live.control_request("r", "status", None)[1]["ended"] == "max_chunks"


@pytest.mark.parametrize("cancel_at", [4, 5, 9, 11])
def test_cancel_keeps_the_stream_and_queueing_again_continues_it(salt_nodes, toy_salt, monkeypatch, cancel_at):
    """ComfyUI's Cancel (its interrupt exception from check_interrupted), looked at before each chunk and between its
    two steps (3 looks a chunk: calls 4 and 10 are boundaries, 5, 9 and 11 inside a chunk): the next queue run
    continues the video from the last whole chunk, equal to a stream that never stopped."""
    from comfyui_salt.nodes import live
    calls = {"n": 0}

    class Interrupted(Exception):
        pass

    def cancel_at_call():
        calls["n"] += 1
        if calls["n"] == cancel_at:
            raise Interrupted
    monkeypatch.setattr(live, "check_interrupted", cancel_at_call)
    with pytest.raises(Interrupted):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="c", max_chunks=50))
    done = live.SESSIONS["c"].chunks
    assert done == (cancel_at - 1) // 3 and live.control_request("c", "status", None)[1]["ended"] == "cancel"
    monkeypatch.setattr(live, "check_interrupted", lambda: None)
    after = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="c", max_chunks=2))
    whole = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="w", max_chunks=done + 2))
    assert live.SESSIONS["c"].chunks == done + 2 and torch.equal(after[0], whole[0][3 * done:])
    assert live.control_request("c", "status", None)[1]["ended"] == "max_chunks"


def test_an_error_after_a_chunks_noise_is_drawn_leaves_the_stream_as_before_the_chunk(salt_nodes, toy_salt,
                                                                                        monkeypatch):
    """The noise of chunk 3 drawn, then its move to the device fails (out of memory there): the run fails, the
    stream is kept, and the next queue continues it equal to a stream that never failed (the noise generator
    used to stay one draw ahead)."""
    from comfyui_salt.nodes import live
    real_randn, draws = torch.randn, []

    def randn(*shape, generator=None, **kw):
        out = real_randn(*shape, generator=generator, **kw)
        session = live.SESSIONS.get("o")
        if session is not None and generator is session.noise_gen:
            draws.append(1)
            if len(draws) == 3:
                raise torch.OutOfMemoryError("CUDA out of memory (moving the chunk's noise)")
        return out
    monkeypatch.setattr(live.torch, "randn", randn)
    with pytest.raises(torch.OutOfMemoryError):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="o", max_chunks=5))
    monkeypatch.setattr(live.torch, "randn", real_randn)
    assert live.SESSIONS["o"].chunks == 2
    after = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="o", max_chunks=2))
    whole = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="w", max_chunks=4))
    assert torch.equal(after[0], whole[0][6:])


def test_stop_between_the_steps_of_a_long_schedule_ends_the_run_within_a_step(salt_nodes, toy_salt, monkeypatch):
    """A schedule of any length (ComfyUI's schedulers give up to 10,000 steps): Stop sent while a chunk is halfway
    ends the run at the next step, not after the chunk; the chunk is dropped and the stream continues from before
    it, equal to a stream that never stopped."""
    from comfyui_salt.nodes import live
    steps = {"n": 0}
    sigmas = torch.linspace(1, 0, 41)                        # 40 steps a chunk
    real_sample = live.ChunkStream.sample

    def sample(self, noise, sigmas, stochastic=True, callback=None):
        def counted(*a):
            steps["n"] += 1
            if steps["n"] == 50:                             # a quarter into the second chunk
                assert live.control_request("s", "stop", None)[0] == 200
            callback(*a)
        return real_sample(self, noise, sigmas, stochastic, counted)
    monkeypatch.setattr(live.ChunkStream, "sample", sample)
    out = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="s", max_chunks=5,
                                                        sigmas=sigmas))
    assert steps["n"] == 50 and out[0].shape[0] == 3 and live.SESSIONS["s"].chunks == 1
    assert live.control_request("s", "status", None)[1]["ended"] == "stop"
    monkeypatch.setattr(live.ChunkStream, "sample", real_sample)
    after = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="s", max_chunks=1,
                                                          sigmas=sigmas))
    whole = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="w", max_chunks=2,
                                                          sigmas=sigmas))
    assert torch.equal(torch.cat([out[0], after[0]]), whole[0])


def test_a_run_that_fails_says_so_in_the_status(salt_nodes, toy_salt, monkeypatch):
    from comfyui_salt.nodes import live

    def broken_push(event, data, pixels):
        raise RuntimeError("the websocket went away")
    monkeypatch.setattr(live, "push_event", broken_push)
    with pytest.raises(RuntimeError, match="websocket went away"):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="e", max_chunks=50))
    status = live.control_request("e", "status", None)[1]
    assert status["ended"] == "error" and not status["running"]


def test_only_the_newest_streams_are_kept_so_stream_ids_cannot_grow_the_servers_memory(salt_nodes, toy_salt):
    from comfyui_salt.nodes import live
    for i in range(live.MAX_SESSIONS + 2):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id=f"s{i}", max_chunks=1))
    assert list(live.SESSIONS) == [f"s{i}" for i in range(2, live.MAX_SESSIONS + 2)]
    assert live.control_request("s0", "status", None)[0] == 404
    run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="s2", max_chunks=1))
    assert list(live.SESSIONS)[-1] == "s2"                          # continuing one makes it the newest


def test_keep_last_seconds_returns_the_tail_of_the_run(salt_nodes, toy_salt):
    """keep_last_seconds=0.5 (8 frames at 16 fps): the outputs are the last 8 frames of the same run's whole output,
    and the latents of the newest chunks holding them (3 chunks of 3 frames)."""
    from comfyui_salt.nodes import live
    whole = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="w", max_chunks=7))
    tail = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="k", max_chunks=7,
                                                          keep_last_seconds=0.5))
    assert live.FPS == 16 and tail[0].shape == (8, 16, 16, 3) and torch.equal(tail[0], whole[0][-8:])
    assert torch.equal(tail[1]["samples"], whole[1]["samples"][:, :, -9:])
    # under half a frame (0.03 s = 0.48 frames) keeps the last frame, not the whole run (0 means "keep all")
    least = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="l", max_chunks=7,
                                                           keep_last_seconds=0.03))
    assert torch.equal(least[0], whole[0][-1:]) and torch.equal(least[1]["samples"], whole[1]["samples"][:, :, -3:])
    with pytest.raises(ValueError, match="keep_last_seconds"):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, keep_last_seconds=-1.0))


def chunk_colours(video: torch.Tensor) -> list:
    """IMAGE frames (N, 16, 16, 3) of 3-frame toy chunks → each chunk's sprite colour by the toy oracle's fit."""
    from comfyui_salt.toy.metrics.fit import fit_sprites
    from comfyui_salt.toy.worlds import get_world
    world = get_world("default").cfg
    index = fit_sprites(video.movedim(-1, 0).unsqueeze(0) * 2 - 1, world).colour_index[0]
    return [world.palette[int(index[c:c + 3].mode().values)][0] for c in range(0, len(index), 3)]


@pytest.mark.parametrize("switch_noise", [0.0, 0.7])
def test_a_typed_prompt_changes_the_shipped_students_colour_with_switch_noise(salt_nodes, switch_noise, monkeypatch):
    """The shipped toy Salt student streams 'a red disc'; 'a blue disc' typed while chunk 3 is shown. With
    switch_noise 0.7 every chunk from the one where it is applied on is blue (the oracle's colour fit); with 0 (clean
    re-cache, LongLive's form) the student, never trained with prompt switches, keeps copying the red it sees."""
    from comfyui_salt.nodes import live
    applied = []
    real_set_prompt = live.ChunkStream.set_prompt

    def push(event, data, pixels):
        if event == live.LIVE_EVENT and data["chunk"] == 3:
            live.control_request("c", "prompt", {"text": "a blue disc moving left on a dark background"})
    monkeypatch.setattr(live, "push_event", push)
    monkeypatch.setattr(live.ChunkStream, "set_prompt",
                        lambda self, *a, **k: applied.append(self.frame // 3) or real_set_prompt(self, *a, **k))
    student = run(salt_nodes.SaltToyModel, asset="toy_salt_student")[0]
    options = run(salt_nodes.SaltCacheOptions, chunk_frames=3, attention="sink", window_frames=9, sink_frames=3,
                  relative_rope=True, context_noise=0.0, max_frames=21)[0]
    out = run(salt_nodes.SaltLiveStream, **live_inputs(
        salt_nodes, student, positive=run(salt_nodes.SaltToyTextEncode, text="a red disc moving left on a dark "
                                                                             "background")[0],
        cache_options=options, sigmas=run(salt_nodes.SaltFewStepSigmas, preset="self_forcing_4step", nfe=4,
                                          shift=3.0)[0],
        seed=42, stream_id="c", max_chunks=14, switch_noise=switch_noise))
    colours = chunk_colours(out[0])
    (at,) = applied
    assert 3 <= at <= 3 + 4 and colours[:at] == ["red"] * at, (at, colours)
    after = colours[at:]
    if switch_noise:
        assert after == ["blue"] * len(after), (at, colours)
    else:
        assert after.count("blue") <= 1, (at, colours)


def test_a_stream_continued_with_another_model_at_a_reused_address_starts_again(salt_nodes, toy_salt, monkeypatch):
    """The stream's key named its model by id(): a model freed and another built at its address (CPython reuses
    them) continued the first one's stream, its KV cache written by other weights. Simulated by an id() that gives
    every object one address; the key now holds a weak reference, so the other model starts its own stream."""
    from comfyui_salt.nodes import live
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    other = SaltModel(build_model("toy", seed=1).eval(), "pixels", "another toy", causal=True)
    monkeypatch.setattr(live, "id", lambda obj: 0, raising=False)
    run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, max_chunks=2))
    continued = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, other, max_chunks=2))[0]
    fresh = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, other, stream_id="f", max_chunks=2))[0]
    assert torch.equal(continued, fresh)


def test_the_largest_seed_the_widget_allows_streams(salt_nodes, toy_salt):
    """seed 2**64 − 1 (the seed widget's max): the re-noise seed wraps instead of overflowing torch's manual_seed."""
    images, latent = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, seed=0xffffffffffffffff,
                                                                 max_chunks=1))[:2]
    assert images.shape == (3, 16, 16, 3) and torch.isfinite(latent["samples"]).all()


def test_a_continuation_whose_positive_changed_switches_to_it_as_a_typed_prompt_would(salt_nodes, toy_salt,
                                                                                      monkeypatch):
    """Queueing again with another `positive` continues the video under the new prompt (it was kept under the old
    one in silence): the same frames as continuing with the old positive and typing the new prompt before the run
    (the canvas's switch, applied at the first chunk boundary); with the positive unchanged, nothing switches."""
    from comfyui_salt.nodes import live
    from comfyui_salt.salt_core.streaming import ChunkStream
    switched, real = [], ChunkStream.set_prompt
    monkeypatch.setattr(ChunkStream, "set_prompt", lambda self, *a, **k: switched.append(1) or real(self, *a, **k))
    blue = run(salt_nodes.SaltToyTextEncode, text="a blue square moving up")[0]
    out, switches = {}, {}
    for name in ("changed", "typed", "same"):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id=name))
        if name == "typed":
            assert live.control_request("typed", "prompt", {"text": "a blue square moving up"})[0] == 200
        kw = dict(positive=blue) if name == "changed" else {}
        switched.clear()
        out[name] = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id=name, **kw))[0]
        switches[name] = len(switched)
    assert torch.equal(out["changed"], out["typed"])
    assert not torch.equal(out["changed"], out["same"])
    assert switches == {"changed": 1, "typed": 1, "same": 0}, switches


@pytest.fixture(scope="module")
def tiny_wan_vae(salt_nodes):
    import comfy.sd
    from helpers import tiny_wan_vae_state_dict
    return comfy.sd.VAE(sd=tiny_wan_vae_state_dict())


def test_a_wan_stream_queued_twice_decodes_the_frames_of_one_run_with_the_graphs_vae(salt_nodes, tiny_wan_vae):
    """The Wan VAE decodes causally, carrying a cache (and on 0.33 a frame waiting for its pair) from chunk to chunk:
    the decoder stays with the stream between queue runs, so 2 + 2 chunks give the frames of one 4-chunk run, bit for
    bit, and the run's frames equal VAEDecode of its latents up to a frame still waiting for its pair. A fresh
    decoder per run started the video's decoding again (34 frames for 41, values off by up to 1)."""
    import nodes as comfy_nodes
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    wan = SaltModel(build_model("tiny-hd128", seed=0).eval(), "wan21", "tiny wan", causal=True)
    positive = [[torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(1)), {}]]
    args = dict(model=wan, positive=positive, cache_options=toy_options(salt_nodes, attention="rolling"),
                sigmas=run(salt_nodes.SaltFewStepSigmas, preset="2step", nfe=2, shift=1.0)[0], seed=3, width=32,
                height=32, vae=tiny_wan_vae, continue_stream=True)
    whole = run(salt_nodes.SaltLiveStream, **args, stream_id="one", max_chunks=4)
    parts = [run(salt_nodes.SaltLiveStream, **args, stream_id="two", max_chunks=2) for _ in range(2)]
    assert torch.equal(torch.cat([p[1]["samples"] for p in parts], 2), whole[1]["samples"])
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0]), [p[0].shape for p in parts] + [whole[0].shape]
    with torch.inference_mode():
        decoded = comfy_nodes.VAEDecode().decode(tiny_wan_vae, whole[1])[0]
    frames = whole[0].shape[0]
    assert decoded.shape[0] - 4 <= frames <= decoded.shape[0] and torch.allclose(whole[0], decoded[:frames],
                                                                                 atol=1e-5)
    blind = run(salt_nodes.SaltLiveStream, **{**args, "vae": None}, stream_id="no_vae", max_chunks=2)
    assert blind[0].shape == (0, 32, 32, 3) and blind[1]["samples"].shape[2] == 2 * 3   # latents only: no frames


def test_a_kept_wan_stream_counts_its_decoders_carried_state_against_the_hosts_memory(salt_nodes, tiny_wan_vae,
                                                                                     monkeypatch):
    """The Wan VAE's feature cache a kept stream's decoder carries between runs (about 3.5 GiB in float32 at 832×480,
    more than a rolling window's KV cache) was not counted: the kept streams' budget saw only their KV caches. Its
    bytes, counted tensor by tensor from ComfyUI's own feat_cache list, now are: with the host's free memory set so
    that the KV cache alone fits in the half and the two together do not, the stream is not kept."""
    from comfyui_salt.nodes import live
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    wan = SaltModel(build_model("tiny-hd128", seed=0).eval(), "wan21", "tiny wan", causal=True)
    args = dict(model=wan, positive=[[torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(1)), {}]],
                cache_options=toy_options(salt_nodes, attention="rolling"), seed=3, width=32, height=32,
                sigmas=run(salt_nodes.SaltFewStepSigmas, preset="2step", nfe=2, shift=1.0)[0], vae=tiny_wan_vae,
                continue_stream=True, stream_id="w", max_chunks=2)
    run(salt_nodes.SaltLiveStream, **args)
    session = live.SESSIONS["w"]
    kv = sum(t.numel() * t.element_size() for t in (session.state["cache"]["k"], session.state["cache"]["v"]))
    carried = [t for t in session.decoder.feat_cache + [session.decoder.pending] if isinstance(t, torch.Tensor)]
    state = sum(t.numel() * t.element_size() for t in carried)
    assert carried and all(t.device.type == "cpu" for t in carried) and state > kv > 0, (state, kv)
    assert live.kept_bytes(session) == kv + state
    free = 2 * (kv + state) - 1 - live.kept_bytes(session)       # the half, less one byte, once this one is let go
    monkeypatch.setattr(live, "available_memory", lambda device: free if device.type == "cpu" else 1 << 40)
    run(salt_nodes.SaltLiveStream, **args)
    assert session.state is None and session.decoder is None       # not kept: the next run starts from its seed


def test_the_live_node_runs_again_whenever_it_is_queued(salt_nodes):
    """ComfyUI reuses a node's last output while its fingerprint stays the same: queued again with the same inputs
    (a fixed seed, as the shipped workflows have) it continued nothing. NaN never equals itself."""
    value = salt_nodes.SaltLiveStream.fingerprint_inputs(seed=0, stream_id="live")
    assert value != value


class _Request:
    """What the route reads of an aiohttp request: method, match_info, content_type, content_length, content (its
    reads return at most 1000 bytes each, as a body arriving in pieces does)."""

    def __init__(self, method, action, raw=b"", length=None, content_type="application/json"):
        class Content:
            at = 0

            async def read(self, n):
                piece = raw[self.at:self.at + min(n, 1000)]
                self.at += len(piece)
                return piece
        self.method, self.match_info, self.content_type = method, {"stream": "t", "action": action}, content_type
        self.content_length, self.content = len(raw) if length is None else length, Content()


@pytest.mark.parametrize("method, action, raw, length, status", [
    ("HEAD", "stop", b"", None, 405), ("GET", "pause", b"", None, 405), ("PUT", "stop", b"{}", None, 405),
    ("GET", "status", b"", None, 200), ("POST", "stop", b"", None, 200),
    ("POST", "prompt", b'{"text": "' + b"a" * (70 << 10) + b'"}', None, 413),      # over 64 KiB: not read
    ("POST", "prompt", b'{"text": "' + b"a" * (70 << 10) + b'"}', 0, 413),         # a length that lies
    ("POST", "prompt", b"\xff\xfe{}", None, 400), ("POST", "prompt", b"not json", None, 400),
    ("POST", "prompt", b'{"text": "a blue square moving up"}', None, 200),
    ("POST", "prompt", b'{"text": "' + b"a" * (60 << 10) + b'"}', None, 200)])     # in 62 pieces, under 64 KiB
def test_only_post_changes_a_stream_and_a_body_is_read_only_up_to_its_limit(salt_nodes, method, action, raw, length,
                                                                            status):
    """A HEAD request reached the handler (aiohttp adds HEAD to every GET route) and could stop or pause a stream; a
    body was parsed whole (up to ComfyUI's 100 MB) before anything was checked, and a bogus charset was a 500."""
    import asyncio
    import json
    from comfyui_salt.nodes.bridge.server import make_route
    seen = []
    route = make_route(lambda stream, act, body: seen.append((act, body)) or (200, {"ok": True}))
    reply = asyncio.run(route(_Request(method, action, raw, length)))
    assert reply.status == status, json.loads(reply.body)
    assert bool(seen) == (status == 200)
    if status == 200 and raw:
        assert seen == [(action, json.loads(raw))]


def test_the_routes_over_http_take_only_json_read_whole_however_it_arrives(salt_nodes):
    """Through aiohttp's own server: a body sent in two TCP writes, a pause apart, is read whole (one read took what
    had arrived: valid JSON got 400); a form or text POST, which a page on any site may send without asking first
    (no CORS preflight), is refused with 415 and changes nothing; a chunked body over 64 KiB gets 413."""
    import asyncio
    from aiohttp import web
    from comfyui_salt.nodes.bridge.server import make_route
    seen = []
    route = make_route(lambda stream, act, body: seen.append((act, body)) or (200, {"ok": True}))

    async def exchange(port, request: bytes, pause_after: int = None) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        cut = len(request) if pause_after is None else pause_after
        writer.write(request[:cut])
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(request[cut:])
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        writer.close()
        return status

    def post(action, body: bytes, content_type="application/json", chunked=False) -> bytes:
        head = f"POST /salt/live/t/{action} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        head += f"Content-Type: {content_type}\r\n" if content_type else ""
        if chunked:
            pieces = [body[i:i + 4096] for i in range(0, len(body), 4096)]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
            return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + payload
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def main():
        app = web.Application()
        app.router.add_post("/salt/live/{stream}/{action}", route)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        body = b'{"text": "a blue square moving up"}'
        try:
            split = post("prompt", body)
            return [await exchange(port, split, pause_after=len(split) - 10),
                    await exchange(port, post("prompt", body, "text/plain")),
                    await exchange(port, post("stop", b"", None)),
                    await exchange(port, post("prompt", body, "application/x-www-form-urlencoded")),
                    await exchange(port, post("prompt", b'{"text": "' + b"a" * (70 << 10) + b'"}', chunked=True)),
                    await exchange(port, post("stop", b"{}", "application/json; charset=utf-8"))]
        finally:
            await runner.cleanup()
    assert asyncio.run(main()) == [200, 415, 415, 415, 413, 200]
    assert seen == [("prompt", {"text": "a blue square moving up"}), ("stop", {})]


def test_a_pushed_frames_longer_side_is_about_256_pixels_whatever_its_size(salt_nodes):
    from comfyui_salt.nodes.bridge.server import shown_size
    assert shown_size(832, 480, 256) == (256, 148) and shown_size(16, 16, 256) == (256, 256)
    assert shown_size(100, 60, 256) == (200, 120) and shown_size(256, 144, 256) == (256, 144)
    assert shown_size(480, 832, 256) == (148, 256) and shown_size(60, 100, 256) == (120, 200)
    assert shown_size(4, 8192, 256) == (1, 256) and shown_size(16, 4096, 256) == (1, 256)
    assert shown_size(4, 64, 256) == (16, 256) and shown_size(8192, 4, 256) == (256, 1)


@pytest.mark.parametrize("height, width", [(4096, 16), (16, 4096), (8192, 4), (4, 4)])
def test_a_tall_or_wide_frame_is_pushed_as_a_small_jpeg(salt_nodes, monkeypatch, height, width):
    """The frames a toy stream of any allowed size pushes are encoded (JPEG takes at most 65,500 px a side) at no
    more than 256 px a side: a 16 × 4096 stream ended in an error, enlarged to 256 × 65,536."""
    import base64
    import io
    import types
    from PIL import Image
    from comfyui_salt.nodes.bridge import server as bridge
    sent = []
    fake = types.SimpleNamespace(client_id=None, send_sync=lambda event, data, sid: sent.append(data))
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(
        instance=fake)))
    bridge.push_event("salt.live", {"chunk": 1, "frames": torch.rand(2, height, width, 3)}, 256)
    (data,) = sent
    assert (data["width"], data["height"]) == (width, height) and len(data["frames"]) == 2
    for url in data["frames"]:
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert max(image.size) == 256 and min(image.size) >= 1, image.size


@pytest.mark.parametrize("waiting, sent_frames", [(0, True), (4, True), (5, False), (None, True)])
def test_a_push_behind_a_backlog_of_messages_goes_without_its_frames(salt_nodes, monkeypatch, waiting, sent_frames):
    """ComfyUI sends its queue of messages one at a time, each waiting on the socket: behind a browser slower than
    the stream, frames would pile up in the server and the view fall ever further behind. Past MAX_BACKLOG waiting
    messages a push carries its frame count instead (None: a server without that queue pushes every frame)."""
    import asyncio
    import types
    from comfyui_salt.nodes.bridge import server as bridge
    sent = []
    fake = types.SimpleNamespace(client_id="browser", send_sync=lambda event, data, sid: sent.append((event, data,
                                                                                                     sid)))
    if waiting is not None:
        fake.messages = asyncio.Queue()     # ComfyUI's PromptServer.messages
        for i in range(waiting):
            fake.messages.put_nowait(("status", {}, None))
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(
        instance=fake)))
    bridge.push_event("salt.live", {"chunk": 3, "frames": torch.rand(5, 16, 24, 3)}, 256)
    (event, data, sid), = sent
    assert event == "salt.live" and sid == "browser" and data["chunk"] == 3
    assert (data["width"], data["height"]) == (24, 16)
    if sent_frames:
        assert len(data["frames"]) == 5 and all(f.startswith("data:image/jpeg;base64,") for f in data["frames"])
        assert "skipped" not in data
    else:
        assert data["frames"] == [] and data["skipped"] == 5


def test_a_stream_whose_cache_does_not_fit_the_hosts_memory_is_not_kept_and_says_so(salt_nodes, toy_salt,
                                                                                    monkeypatch, caplog):
    """Between runs a stream's KV cache waits on the host (GBs for Wan at 832×480): where it does not fit, the run
    still returns its outputs, the stream is not kept (the next run starts it from its seed) and the log says why;
    the copy was made regardless and could take the server down."""
    from comfyui_salt.nodes import live
    monkeypatch.setattr(live, "available_memory", lambda device: 1 << 40)
    first = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="a"))
    asked = []                        # the run's own checks first, then the host's memory once the run ends: full
    monkeypatch.setattr(live, "available_memory", lambda device: asked.append(1) or (1 << 40 if len(asked) == 1
                                                                                       else 1000))
    with caplog.at_level("WARNING", logger="salt.nodes"):
        second = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="a"))
    assert "stream 'a' is not kept for a later run" in caplog.text and live.SESSIONS["a"].state is None
    assert second[0].shape[0] > 0
    monkeypatch.setattr(live, "available_memory", lambda device: 1 << 40)
    third = run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, stream_id="a"))
    assert torch.equal(third[0], first[0])                           # started again from the seed


HARNESS = """
import { registered, listeners, graph } from "./scripts/app.js";
await import("./extensions/salt/salt_live.js");
registered[0].setup();
const shown = {};
const view = (name) => ({ queue: [], status: {}, say(text) { this.status.textContent = text; },
                          play() { shown[name] = this.queue.length; } });
const node = (id, extra) => ({ id, ...extra });
const inner = { nodes: [node(5, { saltLive: view("inner") })] };
inner.getNodeById = (id) => inner.nodes.find((n) => n.id === id);
const deeper = { nodes: [node(7, { saltLive: view("deeper") })] };
deeper.getNodeById = (id) => deeper.nodes.find((n) => n.id === id);
inner.nodes.push(node(6, { subgraph: deeper }));
graph.nodes.push(node(3, { saltLive: view("root") }), node(12, { subgraph: inner }));
for (const id of [3, "3", "12:5", "12:6:7", "12:9", "99", "12", null])
  listeners["salt.live"]({ detail: { node: id, chunk: 1, period_ms: 5, frames: ["a", "b", "c"] } });
console.log(JSON.stringify(shown));
"""
RACE_HARNESS = """
import { registered, listeners, graph, api } from "./scripts/app.js";
const element = () => ({ style: {}, dataset: {}, kids: [], appendChild(c) { this.kids.push(c); },
                         append(...c) { this.kids.push(...c); } });
globalThis.document = { createElement: element };
await import("./extensions/salt/salt_live.js");
registered[0].setup();
let root;
function Node() { this.id = 4; this.size = [100, 100]; this.widgets = [{ name: "stream_id", value: "s" }]; }
Node.prototype.addDOMWidget = (name, type, element) => { root = element; };
Node.prototype.setSize = function (size) { this.size = size; };
await registered[0].beforeRegisterNodeDef(Node, { name: "SaltLiveStream" });
const node = new Node();
node.onNodeCreated();
graph.nodes.push(node);
const find = (e, action) => e.dataset?.saltLive === action ? e : e.kids?.map((k) => find(k, action)).find(Boolean);
const stop = find(root, "stop");
let answer;
api.fetchApi = () => new Promise((resolve) => { answer = resolve; });
const tick = () => new Promise((resolve) => setTimeout(resolve, 20));
const status = () => node.saltLive.status.textContent;
const out = {};
stop.onclick();                                         // the run ends before Stop's reply comes back
listeners["salt.live.end"]({ detail: { node: 4, ended: "stop", chunk: 4 } });
answer({ ok: true, json: async () => ({ applied: "stop" }) });
await tick();
out.ended_first = status();
stop.onclick();                                         // nothing in between: the reply is the news
answer({ ok: true, json: async () => ({}) });
await tick();
out.reply_only = status();
stop.onclick();                                         // an error is shown whatever came in between
listeners["salt.live"]({ detail: { node: 4, chunk: 5, period_ms: 1, frames: [] } });
answer({ ok: false, status: 404, json: async () => ({ error: "no live stream 's'" }) });
await tick();
out.error = status();
console.log(JSON.stringify(out));
"""
APP_STUB = """
export const registered = [], listeners = {};
export const graph = { nodes: [] };
graph.getNodeById = (id) => graph.nodes.find((n) => n.id === id);
export const app = { graph, registerExtension: (e) => registered.push(e) };
export const api = { addEventListener: (name, f) => { listeners[name] = f; } };
globalThis.window = globalThis;
"""


def run_web_harness(tmp_path, script: str) -> dict:
    """Run `script` (an ES module) with node.js beside web/salt_live.js laid out as ComfyUI serves it
    (extensions/salt/) and APP_STUB as the frontend's scripts/app.js and api.js; its printed JSON."""
    import json
    import pathlib
    import subprocess
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(APP_STUB)
    (tmp_path / "scripts" / "api.js").write_text('export { api } from "./app.js";\n')
    (tmp_path / "extensions" / "salt").mkdir(parents=True)
    source = pathlib.Path(__file__).parent.parent / "web" / "salt_live.js"
    (tmp_path / "extensions" / "salt" / "salt_live.js").write_text(source.read_text())
    (tmp_path / "run.mjs").write_text(script)
    out = subprocess.run(["node", str(tmp_path / "run.mjs")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not __import__("shutil").which("node"), reason="needs node.js to run the web extension")
def test_the_live_view_finds_its_node_on_the_root_graph_and_inside_subgraphs(salt_nodes, tmp_path):
    """web/salt_live.js run by node.js against a stub of the frontend's app and api: a push names its node by the
    server's execution id, "12:5" for node 5 inside subgraph node 12; the view looked on the root graph only, so
    a live node inside a subgraph stayed blank. Ids naming no live node show nothing."""
    assert run_web_harness(tmp_path, HARNESS) == {"root": 6, "inner": 3, "deeper": 3}


@pytest.mark.skipif(not __import__("shutil").which("node"), reason="needs node.js to run the web extension")
def test_a_buttons_ok_never_hides_the_streams_own_news_that_came_after_the_click(salt_nodes, tmp_path):
    """Stop acts between a chunk's steps, so the run's end event often reaches the page before the Stop request's
    reply; the reply's "stop: ok" then overwrote "ended (stop) after chunk 4" (seen in the browser test). A reply
    with nothing newer shows; an error shows whatever came in between."""
    assert run_web_harness(tmp_path, RACE_HARNESS) == {"ended_first": "ended (stop) after chunk 4", "reply_only": "stop: ok",
                                      "error": "stop: no live stream 's'"}


def test_kept_streams_take_at_most_half_the_hosts_free_memory_the_least_recently_run_let_go(salt_nodes, monkeypatch):
    """Each stream kept between runs (up to MAX_SESSIONS) was checked alone against the host's free memory, so four
    could hold nearly all of it. Now the kept caches together stay within half of what the host would have free
    without them: on an 8 MiB host (free = 8 MiB less what the kept caches hold) the streams never hold more than
    4 MiB; a newer stream lets the least recently run go; a stream continued run after run is kept every time (its
    previous cache is replaced, not added); one over the half alone is not kept, and nothing is let go for it."""
    from comfyui_salt.nodes import live
    mib = 1 << 20
    held = lambda: sum(live.kept_bytes(s) for s in live.SESSIONS.values())         # noqa: E731
    monkeypatch.setattr(live, "available_memory", lambda device: 8 * mib - held())

    def keep(name, size):                                   # as a run's end does: room first, then the state
        s = live.SESSIONS.get(name) or live.LiveSession()
        live.SESSIONS[name] = s
        live.SESSIONS.move_to_end(name)
        if live.make_room_to_keep(s, size):
            k = torch.zeros(size // 8, dtype=torch.float32)                   # k and v: size bytes together
            s.state = {"cache": {"k": k, "v": k.clone()}}
        assert held() <= 4 * mib, held()
        return s
    a, b = keep("a", 2 * mib), keep("b", 2 * mib)                           # 4 MiB kept: the half
    assert a.state is not None and b.state is not None
    c = keep("c", mib)                                                       # a let go for it
    assert a.state is None and b.state is not None and c.state is not None
    for _ in range(4):                                                       # b continued, run after run
        assert keep("b", 2 * mib).state is not None and c.state is not None
    e = keep("e", 5 * mib)                                                   # over the half alone: not kept,
    assert e.state is None and b.state is not None and c.state is not None  # and nothing let go for it
