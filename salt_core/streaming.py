"""Autoregressive chunk-by-chunk generation on a KV cache (Self Forcing / Causal Forcing / LongLive).

Per chunk: K denoising steps (stochastic: fresh re-noise; or deterministic), then one clean-context
forward at `context_noise` that writes the chunk's K/V into the cache (not counted as an NFE).
Chunks are yielded as they finish. Prompt switches re-cache the retained window with the new
prompt (LongLive's KV re-cache). Progress and interruption flow through `callback` (it may raise).
Knows nothing of ComfyUI or training.
"""
import operator
from typing import Callable, Iterator, Optional

import torch

from .denoiser import CachedDenoiser, GuidedModel, check_guidance
from .kv_cache import CachePolicy, KVCache
from .samplers import fewstep_update
from .schedules import add_noise, randn_like
from .validate import check_context, check_count, check_latent, check_number, check_sigmas


def stream_memory_bytes(model_cfg, batch: int, num_frames: int, latent_hw: tuple, policy: CachePolicy | None,
                        chunk_frames: int, cfg_scale: float = 1.0, dtype=torch.float32) -> int:
    """Estimated bytes of a streaming request before anything is allocated: the initial noise and the output
    latents (B, C, F, H, W), the KV cache (none with `policy` None: a bidirectional forward of the whole clip,
    `chunk_frames` = num_frames), and one block's activations for a chunk (FFN hidden + q/k/v/o), all doubled in
    batch under guidance. Attention kernels and weights are not counted."""
    from .validate import kv_cache_bytes
    item = torch.empty((), dtype=dtype).element_size()
    b = batch * (2 if cfg_scale != 1.0 else 1)
    p = model_cfg.patch_size
    tokens = (latent_hw[0] // p[1]) * (latent_hw[1] // p[2])
    latents = 2 * batch * model_cfg.in_dim * num_frames * latent_hw[0] * latent_hw[1] * 4
    cache = 0 if policy is None else kv_cache_bytes(model_cfg.num_layers, b, model_cfg.num_heads,
                                                    model_cfg.dim // model_cfg.num_heads, tokens,
                                                    policy.capacity_frames, dtype)
    activations = b * chunk_frames * tokens * (model_cfg.ffn_dim + 6 * model_cfg.dim) * item
    return latents + cache + activations


@torch.no_grad()
def write_context(model, frames: torch.Tensor, context, cache: KVCache, start_frame: int,
                  context_noise: float = 0.0, generator=None) -> None:
    """Write clean (or slightly re-noised) frames (B, C, n, H, W) into the cache at `start_frame`: one
    cache-writing forward at σ = `context_noise` whose output is dropped (not counted as an NFE)."""
    x = frames
    if context_noise > 0:
        x = add_noise(frames, randn_like(frames, generator), context_noise)
    CachedDenoiser(model, context, cache, start_frame).velocity(x, context_noise)


@torch.no_grad()
def recache(model, history: torch.Tensor, context, cache: KVCache, end_frame: int, chunk_frames: int,
            context_noise: float = 0.0, generator=None) -> None:
    """LongLive KV re-cache: rebuild the cache from the last frames of `history` (B, C, F_hist, H, W)
    that end at absolute frame `end_frame`, with a new prompt. Keeps min(capacity, F_hist) frames;
    the retained window becomes the new origin (so its first frames are the new sink)."""
    keep = min(cache.policy.capacity_frames, history.shape[2])
    start = end_frame - keep
    cache.reset(start_frame=start)
    kept = history[:, :, history.shape[2] - keep:]
    for off in range(0, keep, chunk_frames):
        piece = kept[:, :, off:off + chunk_frames]
        write_context(model, piece, context, cache, start + off, context_noise, generator)


class ChunkStream:
    """The one chunk loop: a KV-cached chunk-by-chunk generator holding model, cache, prompt, position and
    re-noise generator in one place (one place per idea). Each `step` makes one chunk at the next position and writes it
    to the cache as context; between steps the prompt may change (`set_prompt`: LongLive's KV re-cache of the
    retained frames), clean frames may be written (`write`: image-to-video), and the stream may be saved
    (`state`) and continued later, in another queue run (`from_state`).

    Every caller is a short loop over it: `rollout_stream` (sampling), the Self Forcing and reference training
    rollouts, the defect measurements. `model` may be a GuidedModel (CFG).
    """

    def __init__(self, model, cache: KVCache, context: torch.Tensor, *, chunk_frames: int = 3,
                 context_noise: float = 0.0, generator: Optional[torch.Generator] = None, start_frame: int = 0):
        """cache: preallocated (reset to `start_frame` here); context (B, Lc, text_dim) the first prompt."""
        self.model, self.cache, self.context = model, cache, context
        self.chunk_frames, self.context_noise, self.generator = chunk_frames, context_noise, generator
        cache.reset(start_frame)
        self.frame = int(start_frame)   # absolute index of the next frame to generate
        self.history = []               # the last frames a re-cache can use, (B, C, n, H, W) each

    # -- one chunk ---------------------------------------------------------------------------------
    def denoiser(self, write: bool = True) -> CachedDenoiser:
        """The model bound to the cache at the next chunk (write=False: reads the past, never stores)."""
        return CachedDenoiser(self.model, self.context, self.cache, self.frame, write=write)

    def step(self, produce: Callable) -> torch.Tensor:
        """One chunk: `produce(stream)` denoises it (through `stream.denoiser()`) and returns (output, frames to
        write as context (B, C, n, H, W)); those frames are written at the chunk's position (detached) and the
        position advances. Returns the output (it may carry grad)."""
        out, frames = produce(self)
        self.write(frames.detach())
        return out

    def sample(self, noise: torch.Tensor, sigmas: list, stochastic: bool = True,
               callback: Optional[Callable] = None) -> torch.Tensor:
        """One chunk by few-step sampling from `noise` (B, C, n, H, W) down `sigmas` (K+1 floats ending at 0):
        stochastic re-noise from the stream's generator, or deterministic Euler. callback(i, sigma, x, x0)
        after each step; it may raise to interrupt. Returns the chunk's x0."""
        def produce(stream):
            x, den = noise, stream.denoiser()

            def fresh_noise(*_):
                return randn_like(noise, stream.generator)
            for i in range(len(sigmas) - 1):
                x0 = den(x, sigmas[i])
                if callback is not None:
                    callback(i, sigmas[i], x, x0)
                x = fewstep_update(x, x0, sigmas[i], sigmas[i + 1], fresh_noise if stochastic else None)
            return x, x
        return self.step(produce)

    @torch.no_grad()
    def write(self, frames: torch.Tensor) -> None:
        """Write clean frames (B, C, n, H, W) as context at the next position (one cache-writing forward at
        `context_noise`, not an NFE) and advance past them; they join the re-cache history. More frames than a
        chunk (a video to continue) are written chunk by chunk, a shorter remainder first (a start frame, then
        whole chunks: the layout of a stream that began from an image), as the stream that made them wrote them
        (at context_noise 0 its next chunk is the same) and as a re-cache does; a rolling or sink cache takes
        any length."""
        n, total = self.chunk_frames, frames.shape[2]
        if total > n:
            cuts = [0] + list(range(total % n or n, total + 1, n))
            for a, b in zip(cuts, cuts[1:]):
                self.write(frames[:, :, a:b])
            return
        write_context(self.model, frames, self.context, self.cache, self.frame, self.context_noise, self.generator)
        self.frame += frames.shape[2]
        self.history.append(frames)
        # Keep only what a re-cache can use: the frames after the oldest chunk fill the cache.
        while sum(h.shape[2] for h in self.history[1:]) >= self.cache.policy.capacity_frames:
            self.history.pop(0)

    # -- between chunks ---------------------------------------------------------------------------
    def set_prompt(self, context: torch.Tensor, noise: Optional[float] = None) -> None:
        """Switch to prompt `context` (B, Lc, text_dim) from the next chunk on; the retained frames are re-cached
        with it (LongLive's KV re-cache), written at σ = `noise` (default: the stream's `context_noise`).

        A model trained with prompt switches (LongLive) follows the new prompt from clean re-cached frames. One that
        was not copies what it sees in them (the toy student keeps the old colour in 16 of 16 clips): re-noising
        the re-cached frames trades continuity for adherence (toy, σ 0.7: the new colour in 16 of 16 clips at the
        first chunk, the sprite jumping 4 px at the switch instead of 0.7; docs/comfyui.md "Live streaming in the
        canvas")."""
        level = self.context_noise if noise is None else check_number(
            "noise", noise, where="ChunkStream.set_prompt", low=0, high=1, high_open=True)
        self.context = context
        if self.history:
            recache(self.model, torch.cat(self.history, 2), context, self.cache, self.frame, self.chunk_frames,
                    level, self.generator)

    def state(self) -> dict:
        """What continues this stream exactly, as tensors and numbers (saveable with torch.save): the position,
        the prompt, the re-cache history, the cache's contents and the generator's state."""
        cache = self.cache
        return {"frame": self.frame, "context": self.context, "history": list(self.history),
                "generator": None if self.generator is None else self.generator.get_state(),
                "cache": {"k": cache.k.clone(), "v": cache.v.clone(), "origin": cache.origin, "end": cache.end,
                          "slot_frame": list(cache.slot_frame)}}

    @classmethod
    def from_state(cls, model, cache: KVCache, state: dict, *, chunk_frames: int = 3, context_noise: float = 0.0,
                   generator: Optional[torch.Generator] = None) -> "ChunkStream":
        """A stream continuing `state` (from `state()`) on `cache` (the same policy and sizes): the next `step`
        gives what the saved stream's next step would have given."""
        saved = state["cache"]
        if tuple(saved["k"].shape) != tuple(cache.k.shape):
            raise ValueError(f"ChunkStream.from_state: the saved cache is {tuple(saved['k'].shape)}, this cache "
                             f"{tuple(cache.k.shape)}; continue with the model, policy, batch and size it was made with")
        stream = cls(model, cache, state["context"], chunk_frames=chunk_frames, context_noise=context_noise,
                     generator=generator, start_frame=saved["origin"])
        cache.k.copy_(saved["k"])
        cache.v.copy_(saved["v"])
        cache.end, cache.slot_frame = saved["end"], list(saved["slot_frame"])
        stream.frame, stream.history = int(state["frame"]), list(state["history"])
        if generator is not None and state["generator"] is not None:
            generator.set_state(state["generator"])
        return stream


def _chunk_index(key, num_chunks: int) -> bool:
    """Whether a prompt-switch key is a whole number (int, numpy integer; not a bool or a string) in 0..num_chunks-1."""
    if isinstance(key, bool):
        return False
    try:
        return 0 <= operator.index(key) < num_chunks
    except TypeError:
        return False


@torch.no_grad()
def rollout_stream(model, noise: torch.Tensor, context: torch.Tensor, sigmas: torch.Tensor, *,
                   cache: Optional[KVCache] = None, policy: Optional[CachePolicy] = None,
                   chunk_frames: int = 3, start_frame: int = 0, context_noise: float = 0.0,
                   stochastic: bool = True, generator: Optional[torch.Generator] = None,
                   callback: Optional[Callable] = None, prompt_switches: Optional[dict] = None,
                   first_frames: Optional[torch.Tensor] = None, cfg_scale: float = 1.0,
                   uncond_context: Optional[torch.Tensor] = None,
                   memory_limit: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Yield generated chunks x0 (B, C, n, H, W) one by one (a loop over a `ChunkStream`).

    noise (B, C, F, H, W): initial noise of every chunk, F a multiple of `chunk_frames`;
    context (1 or B, Lc, text_dim); sigmas (K+1,) ending at 0 (K = NFE per chunk); start_frame >= 0.
    `cache` (reset to `start_frame` here) or `policy` to allocate one. `prompt_switches`
    {chunk_index in 0..F/chunk_frames − 1: context} switches prompt before that chunk with a KV re-cache.
    `first_frames` (1 or B, C, n0, H, W): clean frames written as context before generating and yielded
    first, expanded to B (the first-chunk conditioning hook, e.g. I2V). callback(dict) gets x, i, sigma,
    denoised, chunk, num_chunks after every step; it may raise to interrupt between steps.
    `cfg_scale` ≠ 1 with `uncond_context` (1 or B, Lc, text_dim): classifier-free guidance (teachers;
    distilled students run without it). A cache allocated here is refused before allocation when it
    would exceed `memory_limit` bytes (default: the device's free memory).
    """
    where, mcfg = "rollout_stream", model.cfg
    check_latent("noise", noise, mcfg.in_dim, where=where)
    B, _, num_f, H, W = noise.shape
    check_context("context", context, mcfg.text_dim, where=where, batch=B)
    check_count("chunk_frames", chunk_frames, where=where)
    check_count("start_frame", start_frame, where=where, minimum=0, fix="the absolute index of the first frame")
    check_number("context_noise", context_noise, where=where, low=0, high=1, high_open=True)
    check_number("cfg_scale", cfg_scale, where=where)
    for c, ctx in (prompt_switches or {}).items():
        check_context(f"prompt_switches[{c}]", ctx, mcfg.text_dim, where=where, batch=B)
    if uncond_context is not None:
        check_context("uncond_context", uncond_context, mcfg.text_dim, where=where, batch=B)
    if first_frames is not None:
        check_latent("first_frames", first_frames, mcfg.in_dim, where=where)
        if first_frames.shape[0] not in (1, B) or first_frames.shape[3:] != noise.shape[3:]:
            raise ValueError(f"{where}: first_frames has shape {tuple(first_frames.shape)} and noise "
                             f"{tuple(noise.shape)}; expected (1 or {B}, {mcfg.in_dim}, n, {H}, {W}): the noise's "
                             f"batch (1: every video starts from them) and frame size")
        first_frames = first_frames.expand(B, *first_frames.shape[1:])
    check_guidance(cfg_scale, uncond_context)
    if cfg_scale != 1.0:
        model = GuidedModel(model, uncond_context, cfg_scale)
    if num_f % chunk_frames:
        raise ValueError(f"noise has {num_f} frames, not a multiple of chunk_frames={chunk_frames}")
    num_chunks, switches = num_f // chunk_frames, prompt_switches or {}
    stray = [c for c in switches if not _chunk_index(c, num_chunks)]
    if stray:
        raise ValueError(f"{where}: prompt_switches has chunk indices {stray}; expected whole numbers in "
                         f"0..{num_chunks - 1} (the {num_chunks} chunks of the noise), each the first chunk of its "
                         f"prompt")
    sig = check_sigmas(sigmas, where=where).tolist()
    if cache is None:
        if policy is None:
            raise ValueError("rollout_stream: pass a KVCache (`cache`) or a CachePolicy (`policy`)")
        cache = model.new_cache(B, policy, (H, W), memory_limit=memory_limit)
    stream = ChunkStream(model, cache, context, chunk_frames=chunk_frames, context_noise=context_noise,
                         generator=generator, start_frame=start_frame)
    if first_frames is not None:
        stream.write(first_frames)
        yield first_frames
    for c in range(num_chunks):
        if c in switches:
            stream.set_prompt(switches[c])

        def report(i, sigma, x, x0, c=c):
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0, "chunk": c,
                      "num_chunks": num_chunks})
        yield stream.sample(noise[:, :, c * chunk_frames:(c + 1) * chunk_frames], sig, stochastic,
                            report if callback is not None else None)


def stream_video(model, noise, context, sigmas, **kwargs) -> torch.Tensor:
    """All chunks of `rollout_stream` concatenated along frames: (B, C, F, H, W)."""
    return torch.cat(list(rollout_stream(model, noise, context, sigmas, **kwargs)), dim=2)
