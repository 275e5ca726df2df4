"""SaltLiveStream: chunk after chunk until stopped, a chunk budget or Cancel, each chunk's frames pushed to the
browser as soon as it is decoded, steered between chunks through the pack's own routes; the stream's state stays
on the server, so queueing again continues the same video.

The engine is salt_core.streaming.ChunkStream; decoding is the graph's VAE (`bridge.decoders.WanChunkDecoder`), a
tiny decoder or the toy world's pixels; pushing and the routes go through `bridge.server` (ComfyUI's PromptServer).
The routes only record intents (`LiveControl`), which the node applies at the next chunk boundary; Stop and
ComfyUI's Cancel are also looked at between a chunk's steps, the chunk then dropped and the stream left before it
(a schedule may have any number of steps).
"""
import collections
import logging
import math
import queue
import re
import threading
import time
import weakref

import torch

from ..salt_core.streaming import ChunkStream, stream_memory_bytes
from ..salt_core.validate import (available_memory, check_count, check_memory, check_number, check_sigmas,
                                  format_bytes, quote)
from .bridge import io
from .bridge.convert import latent_to_comfy
from .bridge.decoders import WanChunkDecoder, carried_bytes, load_tiny_wan_decoder, tiny_wan_decoder_files
from .bridge.memory import free_memory
from .bridge.progress import check_interrupted, is_interrupt
from .bridge.server import push_event
from .models import salt_in_use
from .streaming import latent_shape, text_context
from .toy import toy_conditioning
from .types import CacheOptionsType, SaltModelType

log = logging.getLogger("salt.nodes")

LIVE_EVENT = "salt.live"                            # websocket event carrying one chunk's frames
LIVE_END_EVENT = "salt.live.end"                    # ... and the one saying a run ended, and why
STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")     # \Z: "$" would take a final newline
MAX_LIVE_CHUNKS = 100_000
MAX_PROMPT_TEXT = 2000                              # characters a typed prompt may have
PUSH_PIXELS = 256                                   # frames are pushed with their longer side about this
FPS = 16                                            # frames per second of a live stream (Wan 2.1's rate)
MAX_KEEP_SECONDS = 3600.0
# A stream paused this long ends its run as Stop would (the stream kept; queueing again continues it): a paused run
# holds ComfyUI's queue, and a browser closed on a paused stream would otherwise hold it for good.
PAUSE_LIMIT_SECONDS = 600.0
ACTIONS = ("prompt", "pause", "resume", "stop")


class LiveControl:
    """Intents for one running stream, set by the routes (any thread) and taken by the node at chunk boundaries."""

    def __init__(self):
        self.lock = threading.Lock()
        self.paused, self.stopped, self.prompt = False, False, None
        self.status = {"chunks": 0, "frames": 0, "period_ms": None, "running": False, "prompt": None,
                       "prompt_error": None, "ended": None}
        # the running node's check of a typed prompt (ValueError: refused at the route, the stream untouched)
        self.check_text = None
        # a run of the stream is starting (its model loading: a Stop then ends it before its first chunk) or running:
        # Pause, Resume and Stop are taken only then (they used to be acknowledged between runs and then dropped when
        # the next run started); a typed prompt is taken any time, a run's last word: sent between runs, it switches
        # the next run at its first chunk boundary, after a changed `positive`
        self.active = False

    def begin(self, check_text) -> None:
        """A run of this stream starts: it takes the intents sent from now on, checking typed prompts `check_text`."""
        with self.lock:
            self.paused, self.stopped, self.active, self.check_text = False, False, True, check_text

    def end(self) -> None:
        """The run ended: a Pause or Stop it did not take goes with it."""
        with self.lock:
            self.paused, self.stopped, self.active = False, False, False
            self.status["running"] = False

    def apply(self, action: str, text: str = None):
        """The status after recording `action` ("status": nothing recorded), or None for Pause, Resume or Stop when
        no run is starting or running to take it."""
        with self.lock:
            if action in ("pause", "resume", "stop") and not self.active:
                return None
            if action == "prompt":
                self.prompt = text
            elif action == "pause":
                self.paused = True
            elif action == "resume":
                self.paused = False
            elif action == "stop":
                self.stopped = True
            return dict(self.status, paused=self.paused)


class LiveSession:
    """A stream kept between queue runs: its ChunkStream state, noise generator and control, and the `positive`
    context its last run was given (a continuation whose positive differs switches to it)."""

    def __init__(self):
        self.state, self.noise_gen, self.chunks, self.key, self.positive = None, None, 0, None, None
        self.control = LiveControl()
        # the frames decoder and what made it: its carried state continues the video's decoding in the next run
        self.decoder, self.decoder_key = None, None


# stream id → LiveSession, least recently run first. A kept Wan stream holds its KV cache on the CPU (GBs at 832×480),
# and its frames decoder's carried state (the Wan VAE's feature cache: GBs too), so only the newest MAX_SESSIONS are
# kept (a client cannot grow the server's memory by inventing stream ids), together within half the host's free
# memory (make_room_to_keep).
SESSIONS = collections.OrderedDict()
MAX_SESSIONS = 4
SESSIONS_LOCK = threading.Lock()
STARTING = {}     # stream id → the session of its run now starting or running (a new stream is in SESSIONS later)


def check_stream_id(stream_id) -> str:
    if not isinstance(stream_id, str) or not STREAM_ID.match(stream_id):
        raise ValueError(f"SaltLiveStream: stream_id={quote(stream_id)}; expected letters, digits, '_' or '-' "
                         f"(up to 64), e.g. 'live'")
    return stream_id


def control_request(stream_id, action, body) -> tuple:
    """(HTTP status, JSON reply) of a route call: the intent recorded, or a 4xx naming what is wrong."""
    session = None
    if isinstance(stream_id, str) and STREAM_ID.match(stream_id):
        with SESSIONS_LOCK:          # a session evicted by a run starting meanwhile is simply gone
            session = STARTING.get(stream_id) or SESSIONS.get(stream_id)
    if session is None:
        return 404, {"error": f"no live stream {quote(stream_id)}; queue a SaltLiveStream with that stream_id"}
    if action not in ACTIONS + ("status",):
        return 404, {"error": f"unknown action {quote(action)}; expected one of {list(ACTIONS) + ['status']}"}
    control = session.control
    if action == "status":
        return 200, control.apply("status")
    text = None
    if action == "prompt":
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_PROMPT_TEXT:
            return 400, {"error": f"expected JSON {{\"text\": \"...\"}} with 1..{MAX_PROMPT_TEXT} characters"}
        try:                     # JSON's "\ud800" decodes to a lone surrogate, which no tokenizer takes
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return 400, {"error": f"the prompt is not valid Unicode ({e.reason} at character {e.start}); send "
                                  f"UTF-8 text"}
        check = control.check_text
        try:
            if check is not None:
                check(text)
        except ValueError as e:
            return 400, {"error": str(e)}
    status = control.apply(action, text)
    return (200, status) if status is not None else (409, not_running(stream_id, action))


def not_running(stream_id: str, action: str) -> dict:
    return {"error": f"live stream {quote(stream_id)} is not running, so there is nothing to {action}; queue its "
                     f"SaltLiveStream (continue_stream on) to run it again"}


def prompt_check(salt, clip):
    """What a typed prompt must pass before the route accepts it (None: anything the clip encodes): a toy model's
    words are checked by the toy encoder; a Wan stream without the clip input takes none."""
    if salt.latent_format == "pixels":
        return lambda text: toy_conditioning(text, where="SaltLiveStream: prompt")
    if clip is None:
        def refuse(text):
            raise ValueError("SaltLiveStream: this stream has no clip input to encode typed prompts: connect Load "
                             "CLIP (type wan) to the node's clip input and queue it again")
        return refuse
    return None


def encode_prompt(text: str, salt, clip, batch: int) -> torch.Tensor:
    """A typed prompt → context on the model: the toy text encoder for toy models, the `clip` input for Wan."""
    if salt.latent_format == "pixels":
        conditioning = toy_conditioning(text, where="SaltLiveStream: prompt")
    elif clip is not None:
        conditioning = [[clip.encode_from_tokens(clip.tokenize(text)), {}]]
    else:
        raise ValueError("SaltLiveStream: a typed prompt for a Wan model needs the clip input (Load CLIP, type wan)")
    return text_context(conditioning, salt, batch, "prompt", node="SaltLiveStream")


class FramePusher:
    """Decodes and pushes chunks on a worker thread beside the next chunk's denoising, in order (a bounded queue of
    two, so a slow browser or decoder never lets latents pile up); an error there is raised in the node at the next
    `put` or at `close`. On a GPU the decoder runs on its own CUDA stream."""

    def __init__(self, work, device):
        self.work, self.jobs, self.error = work, queue.Queue(maxsize=2), None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.thread = threading.Thread(target=self._run, name="salt-live-push", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                if self.stream is not None:
                    self.stream.wait_event(job[1])           # the chunk is computed on the main stream first
                    with torch.cuda.stream(self.stream):
                        self.work(job[0])
                else:
                    self.work(job[0])
            except BaseException as e:                       # noqa: BLE001  (re-raised in the node's thread)
                self.error = e

    def put(self, chunk: torch.Tensor) -> None:
        self._raise()
        event = None
        if self.stream is not None:
            event = torch.cuda.Event()
            event.record()
        self.jobs.put((chunk, event))

    def close(self) -> None:
        """Wait for the pushes queued so far, then raise what went wrong on the worker, if anything."""
        self.jobs.put(None)
        self.thread.join()
        self._raise()

    def _raise(self):
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def frames_of(chunk: torch.Tensor, salt, decoder) -> torch.Tensor:
    """One chunk's model-space latents (B, C, n, H, W) → IMAGE frames (N, H', W', 3) in [0, 1] (0 frames while the
    Wan decoder waits for a pair)."""
    if salt.latent_format == "pixels":
        return ((chunk[0].float().clamp(-1, 1) + 1) / 2).movedim(0, -1).cpu()     # (n, H, W, 3)
    if decoder is None:
        return torch.empty(0, 1, 1, 3)
    return decoder.push(latent_to_comfy(chunk[:1].float(), salt.latent_format)).cpu()


class StoppedMidChunk(Exception):
    """Stop arrived between two steps of a chunk: the chunk is dropped and the stream left before it."""


def live_run(salt, positive, options, sigmas, seed, width, height, max_chunks, stream_id, continue_stream,
             vae=None, clip=None, node_id=None, switch_noise=0.0, keep_last_seconds=0.0, live_decoder="vae") -> tuple:
    """Run the stream (see the module docstring); returns (IMAGE frames of this run, model-space latents): the
    whole run, or with keep_last_seconds > 0 only the chunks that hold its last seconds (at FPS), so a long run's
    outputs take constant memory. A typed prompt re-caches the kept frames at σ = switch_noise."""
    check_stream_id(stream_id)
    max_chunks = check_count("max_chunks", max_chunks, where="SaltLiveStream", maximum=MAX_LIVE_CHUNKS)
    seed = check_count("seed", seed, where="SaltLiveStream", minimum=0, maximum=2 ** 64 - 1)
    width = check_count("width", width, where="SaltLiveStream")
    height = check_count("height", height, where="SaltLiveStream")
    switch_noise = check_number("switch_noise", switch_noise, where="SaltLiveStream", low=0, high=1, high_open=True,
                                fix="0 re-caches clean frames (LongLive); about 0.7 for models not trained to switch")
    keep_last_seconds = check_number("keep_last_seconds", keep_last_seconds, where="SaltLiveStream", low=0,
                                     high=MAX_KEEP_SECONDS, fix="0 keeps the whole run")
    sig = check_sigmas(sigmas, where="SaltLiveStream").tolist()
    policy, n = options.policy, options.chunk_frames
    if policy.kind == "full":
        raise ValueError("SaltLiveStream: a live stream runs without a length limit: use a rolling or sink cache "
                         "(SaltCacheOptions attention rolling / sink) so memory stays constant")
    shape = latent_shape(salt, 1, n, width, height)
    # before the stream's session is touched: a refused run leaves it as it was
    frames = max(1, round(keep_last_seconds * FPS)) if keep_last_seconds > 0 else 0   # 0 keeps all: never by rounding
    kept = KeptChunks(frames, 1 if salt.latent_format == "pixels" else 4)
    decodes = salt.latent_format == "pixels" or vae is not None or live_decoder != "vae"
    check_memory(f"keeping {max_chunks} chunks' frames and latents at {width}×{height} px", kept.bytes_needed(
        max_chunks, shape, (height, width) if decodes else None), available_memory(torch.device("cpu")),
        where="SaltLiveStream", limit_what="the host's free memory",
        fix="set keep_last_seconds (e.g. 10) to keep only the last seconds of the run, or lower max_chunks")
    need = stream_memory_bytes(salt.model.cfg, 1, n, tuple(shape[-2:]), policy, n,
                               dtype=salt.model.patch_embedding.weight.dtype)   # the compute dtype, as the sampler's
    # the model by a weak reference, not id(): a model freed and another made at its address would continue the
    # stream (its KV cache written by the first); a dead reference equals no live one
    key = (weakref.ref(salt.model), stream_id, tuple(shape), policy)
    with SESSIONS_LOCK:
        session = SESSIONS.get(stream_id)
        if session is None or not continue_stream or session.key != key:
            typed = session.control.prompt if session is not None else None
            session = LiveSession()      # installed once the run's checks pass: a refused run keeps the old one
            session.control.prompt = typed   # typed between runs (answered 200): the next run's, a new stream too
        session.key = key
    control = session.control
    control.begin(prompt_check(salt, clip))   # before the model loads: a Stop sent meanwhile ends the run at once,
    with SESSIONS_LOCK:                       # a new stream's too (the routes find it among the starting ones)
        STARTING[stream_id] = session
    try:
        with salt_in_use(salt, need) as model:
            ref = model.patch_embedding.weight
            free = free_memory(ref.device, salt.patcher)
            check_memory(f"a {width}×{height} px stream ({policy.kind} cache of {policy.capacity_frames} frames)",
                         need, free, where="SaltLiveStream", limit_what=f"ComfyUI's free memory on {ref.device}",
                         fix="lower width/height, or a smaller window_frames in SaltCacheOptions")
            context = text_context(positive, salt, 1, "positive", node="SaltLiveStream")
            given_now = context.detach().cpu()   # the input's prompt (a typed one may replace `context` below)
            decoder_key = (live_decoder, weakref.ref(vae) if live_decoder == "vae" and vae is not None else None)
            if session.decoder is None or session.decoder_key != decoder_key:
                session.decoder = live_frames_decoder(salt, vae, live_decoder)   # a new stream, or another VAE
                session.decoder_key = decoder_key
            decoder = session.decoder
            with SESSIONS_LOCK:
                SESSIONS[stream_id] = session
                SESSIONS.move_to_end(stream_id)
                while len(SESSIONS) > MAX_SESSIONS:
                    SESSIONS.popitem(last=False)
            with control.lock:
                control.status.update(running=True, ended=None)
            cache = model.new_cache(1, policy, shape[-2:], memory_limit=free)
            gen = torch.Generator(device=ref.device)
            if session.state is None:
                gen.manual_seed((seed + 1) % 2 ** 64)    # the widget allows 2**64 - 1: wrap, do not overflow
                session.noise_gen = torch.Generator().manual_seed(seed)
                stream = ChunkStream(model, cache, context, chunk_frames=n, context_noise=options.context_noise,
                                     generator=gen)
            else:
                stream = ChunkStream.from_state(model, cache, session.state, chunk_frames=n,
                                                context_noise=options.context_noise, generator=gen)
                given = session.positive
                if given is not None and (given.shape != given_now.shape or not torch.equal(given, given_now)):
                    stream.set_prompt(context, noise=switch_noise)   # positive changed between runs: switch to it
            timing = {"last": time.monotonic()}

            def decode_and_push(chunk):                      # on the worker thread, in chunk order
                images = frames_of(chunk, salt, decoder)
                now = time.monotonic()
                period = round(1000 * (now - timing["last"]), 1)
                timing["last"] = now
                with control.lock:
                    session.chunks += 1
                    control.status.update(chunks=session.chunks, frames=control.status["frames"] + len(images),
                                          period_ms=period)
                    number = session.chunks
                push_event(LIVE_EVENT, {"stream": stream_id, "node": node_id, "chunk": number, "frames": images,
                                        "period_ms": period}, PUSH_PIXELS)
                kept.add_frames(images)
            pusher = FramePusher(decode_and_push, ref.device)
            ended = "error"    # why the run ended, in the status (an exception out of the loop: Cancel, or an error)

            def between_steps(*_):                   # a chunk of many steps still answers Cancel and Stop
                nonlocal ended
                ended = "cancel"
                check_interrupted()
                ended = "error"
                with control.lock:
                    if control.stopped:
                        raise StoppedMidChunk
            try:                                             # Cancel, Stop or the budget: the state is kept
                for _ in range(max_chunks):
                    paused_since, timed_out = None, False
                    while True:                              # intents, applied at the chunk boundary
                        ended = "cancel"
                        check_interrupted()
                        ended = "error"
                        with control.lock:
                            stop, paused, text, control.prompt = control.stopped, control.paused, control.prompt, None
                        if text is not None:        # checked at the route; one the encoder still refuses (a
                            try:                        # tokenizer's own error type) is reported in the status,
                                context = encode_prompt(text, salt, clip, 1)   # the stream goes on unchanged
                            except BaseException as e:  # noqa: BLE001  (Cancel and exits let through: 0.33's
                                if is_interrupt(e):         # interrupt is a BaseException, 0.3.75's an Exception)
                                    ended = "cancel"
                                    raise
                                if not isinstance(e, Exception):
                                    raise
                                with control.lock:
                                    control.status["prompt_error"] = f"{type(e).__name__}: {e}"[:300]
                            else:
                                stream.set_prompt(context, noise=switch_noise)
                                with control.lock:
                                    control.status.update(prompt=text[:80], prompt_error=None)
                        if stop or not paused:
                            break
                        paused_since = paused_since or time.monotonic()
                        if time.monotonic() - paused_since > PAUSE_LIMIT_SECONDS:
                            log.info("SaltLiveStream: stream %r paused for over %.0f s; the run ends and the stream is "
                                     "kept (queue again to continue it)", stream_id, PAUSE_LIMIT_SECONDS)
                            stop, timed_out = True, True
                            break
                        time.sleep(0.05)
                    if stop:
                        ended = "paused too long" if timed_out else "stop"
                        break
                    # the generators as the chunk finds them: a chunk left midway leaves the stream as it was
                    drawn = (session.noise_gen.get_state(), stream.generator.get_state())
                    try:
                        noise = torch.randn(shape, generator=session.noise_gen).to(ref.device, ref.dtype)
                        chunk = stream.sample(noise, sig, stochastic=True, callback=between_steps)
                    except BaseException as e:           # Cancel or Stop between steps; an error (out of memory)
                        session.noise_gen.set_state(drawn[0])
                        stream.generator.set_state(drawn[1])
                        if not isinstance(e, StoppedMidChunk):
                            raise
                        ended = "stop"
                        break
                    kept.add_latents(chunk.float().cpu())
                    pusher.put(chunk)
                else:
                    ended = "max_chunks"
            finally:
                try:
                    try:
                        pusher.close()                   # every chunk's frames decoded: the decoder's state is final
                    finally:
                        try:
                            if decoder is not None and hasattr(decoder, "park"):
                                decoder.park()           # its state on the CPU
                            keep_stream(session, stream, decoder, given_now, stream_id)
                        except BaseException:            # (out of memory moving them) the kept state and the
                            session.state, session.positive, session.decoder = None, None, None   # decoder's
                            raise                        # no longer agree: the next run starts from its seed
                        finally:
                            with control.lock:
                                control.status["ended"] = ended
                finally:   # after the last chunk's frames: the node shows why the stream stopped
                    push_event(LIVE_END_EVENT, {"stream": stream_id, "node": node_id, "ended": ended,
                                                "chunk": session.chunks}, PUSH_PIXELS)
    finally:
        with SESSIONS_LOCK:
            if STARTING.get(stream_id) is session:
                del STARTING[stream_id]
        control.end()
    return kept.video(height, width), kept.latents(shape)


def keep_stream(session, stream, decoder, given_now, stream_id) -> None:
    """Keep the stream's state and the positive it now follows together on the host for a later run, with its
    decoder (parked), if they fit beside the other kept streams (make_room_to_keep); else let them go."""
    state = stream.state()
    held = cache_bytes(state) + decoder_bytes(decoder)
    if not make_room_to_keep(session, held):
        log.warning("SaltLiveStream: stream %r is not kept for a later run: its KV cache and frames decoder state "
                    "(%s) are more than half the host's free memory, with every other kept stream let go; the next "
                    "run starts it again from its seed (a smaller window_frames or size keeps it)", stream_id,
                    format_bytes(held))
        session.state, session.positive, session.decoder = None, None, None
    else:
        session.state, session.positive = _detached(state), given_now


class KeptChunks:
    """The outputs of a run: every chunk's frames and latents, or (keep > 0 frames) only the newest chunks that hold
    the last `keep` frames; older ones are dropped as new ones arrive, so memory stays constant."""

    def __init__(self, keep: int, frames_per_latent: int):
        """keep: frames (0 = all); frames_per_latent: 1 for pixel models, 4 for the Wan VAE's latent frames."""
        self.keep, self.frames_per_latent = keep, frames_per_latent
        self.frames, self.chunk_latents = collections.deque(), collections.deque()

    def bytes_needed(self, chunks: int, shape: tuple, frame_hw: tuple = None) -> int:
        """Bytes the outputs of `chunks` chunks of latents `shape` (B, C, n, H, W) take at most, float32, twice
        (the kept chunks and their concatenation at the end): frames of `frame_hw` (None: no frames decoded)."""
        per_chunk = self.frames_per_latent * shape[2]
        kept = chunks if not self.keep else min(chunks, -(-self.keep // per_chunk) + 1)
        frames = 0 if frame_hw is None else kept * per_chunk * frame_hw[0] * frame_hw[1] * 3
        return 2 * 4 * (frames + kept * math.prod(shape))

    def _trim(self, items: collections.deque, count) -> None:
        while self.keep and len(items) > 1 and sum(count(x) for x in list(items)[1:]) >= self.keep:
            items.popleft()

    def add_frames(self, images: torch.Tensor) -> None:
        """images (N, H, W, 3) of one chunk (N may be 0 while a Wan decoder waits, or without one: not kept, so the
        IMAGE output of a stream without frames is (0, height, width, 3))."""
        if not len(images):
            return
        self.frames.append(images)
        self._trim(self.frames, len)

    def add_latents(self, chunk: torch.Tensor) -> None:
        """chunk (B, C, n, H, W) of model-space latents; kept while its frames may be among the last `keep`."""
        self.chunk_latents.append(chunk)
        self._trim(self.chunk_latents, lambda c: self.frames_per_latent * c.shape[2])

    def video(self, height: int, width: int) -> torch.Tensor:
        """(N, H, W, 3): the kept frames, the last `keep` of them when keep > 0."""
        if not self.frames:
            return torch.zeros(0, height, width, 3)
        video = torch.cat(list(self.frames))
        return video[-self.keep:] if self.keep else video

    def latents(self, shape: tuple) -> torch.Tensor:
        """(B, C, n, H, W): the kept chunks' latents (whole chunks)."""
        if not self.chunk_latents:
            return torch.zeros(shape[:2] + (0,) + shape[3:])
        return torch.cat(list(self.chunk_latents), 2)


def live_frames_decoder(salt, vae, live_decoder: str):
    """What turns a Wan stream's latent chunks into frames: the graph's VAE ("vae"), a tiny decoder from
    models/vae_approx, or nothing (no VAE: latents only); pixel (toy) models need none."""
    if salt.latent_format != "wan21":
        return None
    if live_decoder != "vae":
        return load_tiny_wan_decoder(live_decoder)
    return WanChunkDecoder(vae) if vae is not None else None


def cache_bytes(state, device=None) -> int:
    """Bytes of the KV cache a ChunkStream state holds (0 for none); on `device` only when given."""
    cache = (state or {}).get("cache")
    return 0 if cache is None else carried_bytes((cache["k"], cache["v"]), device)


def decoder_bytes(decoder, device=None) -> int:
    """Bytes of the state a stream's frames decoder carries from chunk to chunk (0 for none); on `device` only."""
    return 0 if decoder is None else decoder.held_bytes(device)


def kept_bytes(session) -> int:
    """Host bytes a kept stream holds between runs: its KV cache and its frames decoder's carried state (the Wan
    VAE's feature cache: larger than a rolling window's KV cache at the same size), 0 when it keeps none."""
    cpu = torch.device("cpu")
    return cache_bytes(session.state, cpu) + decoder_bytes(session.decoder, cpu)


def make_room_to_keep(session, held: int) -> bool:
    """Whether `session`'s stream, whose new cache and decoder state take `held` bytes, may be kept on the host between
    runs. The kept streams together, this one's new cache included, stay within half of what the host would have free
    without any of them (its free memory now plus what they hold, this stream's previous state too, which the new one
    replaces): the rest stays for the models and work of later prompts. Other kept streams are let go to make room,
    least recently run first (each then starts again from its seed), and none when this one alone is over the half."""
    with SESSIONS_LOCK:
        older = [s for s in SESSIONS.values() if s is not session and s.state is not None]
    budget = (available_memory(torch.device("cpu")) + kept_bytes(session) + sum(map(kept_bytes, older))) / 2
    if held > budget:
        return False
    while held + sum(map(kept_bytes, older)) > budget:
        oldest = older.pop(0)
        log.info("SaltLiveStream: a kept stream (%s of KV cache and decoder state) is let go to keep the newest one",
                 format_bytes(kept_bytes(oldest)))
        oldest.state, oldest.positive, oldest.decoder = None, None, None
    return True


def _detached(state: dict) -> dict:
    """A ChunkStream state kept between queue runs on the CPU (the device is free for other models meanwhile)."""
    cache = state["cache"]
    return {**state, "context": state["context"].cpu(), "history": [h.cpu() for h in state["history"]],
            "cache": {**cache, "k": cache["k"].cpu(), "v": cache["v"].cpu()}}


class SaltLiveStream(io.ComfyNode):
    """Streams chunk after chunk, showing each chunk in the node as it is made, until stopped."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltLiveStream",
            display_name="Salt Live Stream",
            category="Salt/sampling",
            description="Generates chunk after chunk with a rolling or sink KV cache (constant memory) and pushes "
                        "each chunk's frames to the browser as soon as it is decoded. Steer it while it runs from "
                        "the node (prompt box, Pause, Resume, Stop) or the routes /salt/live/<stream_id>/<action>; "
                        "Cancel keeps the stream, and queueing again with continue_stream on continues the video.",
            inputs=[
                SaltModelType.Input("model", tooltip="A causal Salt model (SaltToyModel, SaltLoadCausalModel, ...)."),
                io.Conditioning.Input("positive", tooltip="The first prompt."),
                CacheOptionsType.Input("cache_options", tooltip="A rolling or sink cache (SaltCacheOptions)."),
                io.Sigmas.Input("sigmas", tooltip="Noise levels per chunk, ending at 0 (SaltFewStepSigmas)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of a new stream (a continued stream keeps its own generators)."),
                io.Int.Input("width", default=832, min=4, max=8192, step=4, tooltip="Video width in pixels."),
                io.Int.Input("height", default=480, min=4, max=8192, step=4, tooltip="Video height in pixels."),
                io.Int.Input("max_chunks", default=100, min=1, max=MAX_LIVE_CHUNKS,
                             tooltip="Stop after this many chunks (Stop or Cancel end it sooner)."),
                io.String.Input("stream_id", default="live", tooltip="Name of the stream for the routes and for "
                                                                     "continuing it in a later queue run."),
                io.Boolean.Input("continue_stream", default=True,
                                 tooltip="Continue the stored stream of this stream_id (same model, size and cache) "
                                         "instead of starting a new one."),
                io.Float.Input("switch_noise", optional=True, default=0.0, min=0.0, max=0.99, step=0.05,
                               tooltip="Noise level at which a typed prompt re-caches the kept frames: 0 re-caches "
                                       "clean frames (LongLive; models trained with prompt switches). A model not "
                                       "trained to switch keeps copying what it sees: about 0.7 makes it follow the "
                                       "new prompt at once, with a visible cut."),
                io.Float.Input("keep_last_seconds", optional=True, default=0.0, min=0.0, max=MAX_KEEP_SECONDS,
                               step=1.0,
                               tooltip="Outputs: 0 = every frame of this run; N = only its last N seconds (16 fps), "
                                       "so long runs keep constant memory."),
                io.Combo.Input("live_decoder", options=["vae"] + tiny_wan_decoder_files(), optional=True,
                               default="vae",
                               tooltip="Wan: decode the shown frames with the vae input, or with a tiny decoder "
                                       "from models/vae_approx (lighttaew2_1*, taew2_1*: much faster, lower "
                                       "quality; the IMAGE output is then tiny-decoded too: VAEDecode the LATENT "
                                       "output for full quality). Toy models ignore it."),
                io.Vae.Input("vae", optional=True, tooltip="The Wan 2.1 VAE, to show Wan frames live (toy: none)."),
                io.Clip.Input("clip", optional=True, tooltip="umT5 (Load CLIP, type wan), to encode prompts typed "
                                                             "while a Wan stream runs (toy: none)."),
            ],
            outputs=[io.Image.Output(tooltip="The frames of this run."),
                     io.Latent.Output(tooltip="The latents of this run (ComfyUI's LATENT space).")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        """Never the same: queueing the same inputs again continues the stream (ComfyUI would reuse the last output
        of a node whose inputs did not change)."""
        return float("nan")

    @classmethod
    def execute(cls, model, positive, cache_options, sigmas, seed, width, height, max_chunks, stream_id,
                continue_stream, switch_noise=0.0, keep_last_seconds=0.0, live_decoder="vae", vae=None,
                clip=None) -> io.NodeOutput:
        video, latents = live_run(model, positive, cache_options, sigmas, seed, width, height, max_chunks,
                                  stream_id, continue_stream, vae, clip,
                                  cls.hidden.unique_id if cls.hidden is not None else None,   # None: called directly
                                  switch_noise, keep_last_seconds, live_decoder)
        return io.NodeOutput(video, {"samples": latent_to_comfy(latents, model.latent_format)})
