"""Chunk-by-chunk streaming on a KV cache: cache options and the streaming sampler (LATENT out).

The rollout itself is salt_core.streaming.rollout_stream; this module validates the node inputs,
turns CONDITIONING into text context, and adapts the per-step callback to ComfyUI's progress bar,
preview and Cancel button. Latents follow ComfyUI's layout (B, C, F, H, W).
"""
import logging

import torch

from ..salt_core.kv_cache import CachePolicy
from ..salt_core.model import fit_context
from ..salt_core.seeding import seeded_noise
from ..salt_core.streaming import rollout_stream, stream_memory_bytes
from ..salt_core.validate import (available_memory, check_choice, check_context, check_count, check_finite_tensor,
                                  check_image, check_latent, check_memory, check_number, check_sigmas, quote)
from .bridge import io
from .bridge.convert import encode_image, latent_from_comfy, latent_to_comfy, resize_image
from .bridge.memory import free_memory, torch_device, total_memory
from .bridge.progress import Progress, check_interrupted
from .models import salt_in_use
from .sampling import NON_FINITE_FIX
from .types import SPATIAL_FACTOR, CacheOptions, CacheOptionsType, SaltModel, SaltModelType


log = logging.getLogger("salt.nodes")

ATTENTION = ("full", "rolling", "sink")
SAMPLING = ("stochastic", "deterministic")
MAX_CHUNKS = 1024
MAX_CHUNK_FRAMES = 64            # the chunk_frames widget's largest value (latent frames)
MAX_CACHE_FRAMES = 1024          # the window widgets' largest value (latent frames)


def cache_options(chunk_frames: int, attention: str, window_frames: int, sink_frames: int, relative_rope: bool,
                  context_noise: float, max_frames: int) -> CacheOptions:
    """CacheOptions from the widgets, with errors that name the widget and the fix."""
    where = "SaltCacheOptions"
    check_choice("attention", attention, ATTENTION, where=where)
    check_number("context_noise", context_noise, where=where, low=0, high=1, high_open=True,
                 fix="Self Forcing uses 0")
    chunk_frames = check_count("chunk_frames", chunk_frames, where=where, maximum=MAX_CHUNK_FRAMES,
                               fix="Self Forcing uses 3")
    window_frames = check_count("window_frames", window_frames, where=where, maximum=MAX_CACHE_FRAMES)
    sink_frames = check_count("sink_frames", sink_frames, where=where, minimum=0, maximum=MAX_CACHE_FRAMES - 1)
    max_frames = check_count("max_frames", max_frames, where=where, maximum=MAX_CHUNKS * MAX_CHUNK_FRAMES,
                             fix="Self Forcing uses 21; the memory a full cache takes is checked when it streams")
    if not 0.0 <= context_noise < 1.0:
        raise ValueError(f"{where}: context_noise={context_noise}; expected a noise level in [0, 1) (Self Forcing: 0)")
    if attention == "full":
        if max_frames < chunk_frames:
            raise ValueError(f"{where}: max_frames={max_frames} < chunk_frames={chunk_frames}; raise max_frames to "
                             f"the clip length in latent frames (Self Forcing: 21)")
        policy = CachePolicy.full(max_frames, relative_rope)
    elif attention == "rolling":
        if window_frames < chunk_frames:
            raise ValueError(f"{where}: window_frames={window_frames} < chunk_frames={chunk_frames}; the window "
                             f"counts the current chunk, so use at least {chunk_frames}")
        policy = CachePolicy.rolling(window_frames, relative_rope)
    elif attention == "sink":
        if sink_frames < 1 or window_frames - sink_frames < chunk_frames:
            raise ValueError(f"{where}: sink_frames={sink_frames}, window_frames={window_frames}, chunk_frames="
                             f"{chunk_frames}; a sink needs sink_frames >= 1 and window_frames >= sink_frames + "
                             f"chunk_frames (LongLive: window 12 with a 3-frame sink)")
        policy = CachePolicy.sink(window_frames, sink_frames, relative_rope)
    else:
        raise ValueError(f"{where}: attention={quote(attention)}; expected one of {list(ATTENTION)}")
    return CacheOptions(chunk_frames, policy, float(context_noise))


def text_context(conditioning, salt: SaltModel, batch: int, what: str,
                 node: str = "SaltStreamingSampler") -> torch.Tensor:
    """CONDITIONING [[tensor (B, L, text_dim), dict], ...] → context (batch, text_len, text_dim) on the model.

    Shorter contexts are zero-padded to the model's text_len (as Wan pads umT5 output), longer ones cut (logged when
    the cut drops words: salt_core.model.fit_context).
    """
    if not conditioning or not isinstance(conditioning[0][0], torch.Tensor):
        raise ValueError(f"{node}: {what} is empty or not a CONDITIONING; connect a text encoder "
                         f"(CLIPTextEncode with umT5 for Wan, SaltToyTextEncode for the toy model)")
    if len(conditioning) > 1:   # ComfyUI's samplers mix several by area and strength; a Salt model reads one
        raise ValueError(f"{node}: {what} holds {len(conditioning)} conditionings (e.g. from ConditioningCombine); "
                         f"Salt conditions on one text context: connect one text encoder's output, with every "
                         f"prompt written into its one text")
    ctx, cfg = conditioning[0][0], salt.model.cfg
    check_context(what, ctx, cfg.text_dim, where=f"{node} ({salt.name})", batch=batch,
                  fix="CLIPTextEncode with umT5-XXL, 4096 wide, for Wan 2.1; SaltToyTextEncode, 32 wide, for the toy "
                      "model")
    ctx, dropped = fit_context(ctx, cfg.text_len)                                  # (B, text_len, text_dim)
    if dropped:
        log.warning("%s: the %s text is %d tokens longer than the %d %s reads; its end is cut (as Wan and diffusers "
                    "cut it): shorten the prompt to keep it", node, what, dropped, cfg.text_len, salt.name)
    ref = salt.model.patch_embedding.weight
    return ctx.expand(batch, -1, -1).to(device=ref.device, dtype=ref.dtype).clone()


def latent_shape(salt: SaltModel, batch: int, frames: int, width: int, height: int) -> tuple:
    """(B, C, F, H, W) of the latent for a `width`×`height` pixel video; errors name the size to use."""
    cfg, factor = salt.model.cfg, SPATIAL_FACTOR[salt.latent_format]
    unit = (factor * cfg.patch_size[1], factor * cfg.patch_size[2])
    if height % unit[0] or width % unit[1] or height < unit[0] or width < unit[1]:
        raise ValueError(f"SaltStreamingSampler: width={width}, height={height}; {salt.name} needs multiples of "
                         f"{unit[1]}×{unit[0]} pixels (latent 1/{factor} of the pixels, patch {cfg.patch_size}), "
                         f"e.g. width={max(unit[1], width // unit[1] * unit[1])}, "
                         f"height={max(unit[0], height // unit[0] * unit[0])}")
    return (batch, cfg.in_dim, frames, height // factor, width // factor)


def resize_bytes(image: torch.Tensor, width: int, height: int) -> int:
    """Host bytes the start image (B, H', W', C) takes at the video's size: the scaled copy, then the model-space
    frames made from it (x·2, then x·2 − 1), each (B, C, height, width) at the image's dtype, at least float32."""
    return 3 * image.shape[0] * image.shape[-1] * height * width * max(image.element_size(), 4)


def first_frames(salt: SaltModel, width: int, height: int, batch: int, image=None, vae=None,
                 latent=None) -> torch.Tensor:
    """Model-space first frames (batch, C, n0, H, W) from an IMAGE (encoded with `vae`; toy pixels as they are)
    or a LATENT (ComfyUI space), resized to the video; None without either (text-to-video)."""
    where = "SaltStreamingSampler"
    if image is None and latent is None:
        return None
    if image is not None and latent is not None:
        raise ValueError(f"{where}: both start_image and start_latent are connected; connect one")
    # sizes before any resize or VAE encode (a linked INT skips the widgets' ranges)
    batch = check_count("batch_size", batch, where=where)
    width = check_count("width", width, where=where)
    height = check_count("height", height, where=where)
    want = latent_shape(salt, batch, 1, width, height)
    if image is not None:
        check_image("start_image", image, where=where)
        if image.shape[0] not in (1, batch):
            raise ValueError(f"{where}: start_image holds {image.shape[0]} images for batch_size={batch}; expected 1 "
                             f"(every video starts from it) or {batch} (one each)")
        check_memory(f"start_image resized to {image.shape[0]} × {width}×{height} px",
                     resize_bytes(image, width, height), available_memory(torch.device("cpu")), where=where,
                     limit_what="the host's free memory",
                     fix="lower width/height, or give one start image for the whole batch")
    if latent is not None:
        x = latent.get("samples") if isinstance(latent, dict) else None
        if not isinstance(x, torch.Tensor) or x.ndim not in (4, 5):
            shown = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x if isinstance(latent, dict)
                                                                                else latent).__name__
            raise ValueError(f"{where}: start_latent holds {shown}; expected a LATENT of one image (B, C, H, W) or of "
                             f"frames (B, C, F, H, W), e.g. from VAEEncode")
        x = x.unsqueeze(2) if x.ndim == 4 else x
        check_latent("start_latent", x, salt.model.cfg.in_dim, where=where, finite=False)
        check_finite_tensor("start_latent", x, where=where, fix="encode the start image again (VAEEncode)")
        x = latent_from_comfy(x, salt.latent_format)
    elif salt.latent_format == "pixels":
        x = resize_image(image, width, height)[..., :3].movedim(-1, 1).unsqueeze(2) * 2 - 1   # (B, 3, 1, H, W)
    elif salt.latent_format == "wan21":
        if vae is None:
            raise ValueError(f"{where}: start_image needs the vae input (the Wan 2.1 VAE, as for VAEDecode) to "
                             f"encode it; or connect an encoded latent to start_latent")
        x = latent_from_comfy(encode_image(vae, image, width, height), "wan21")
    else:
        raise ValueError(f"{where}: start_image is not supported for {salt.name} (latents of unknown format); "
                         f"connect its latent to start_latent")
    if x.ndim != 5 or x.shape[1] != want[1] or x.shape[3:] != want[3:] or x.shape[0] not in (1, batch):
        raise ValueError(f"{where}: the start frame's latent is {tuple(x.shape)}; expected (1 or {batch}, "
                         f"{want[1]}, frames, {want[3]}, {want[4]}) for a {width}×{height} video from {salt.name}: "
                         f"encode an image of that size with the model's VAE")
    return x.float().expand(batch, -1, -1, -1, -1)


def stream(salt: SaltModel, positive, options: CacheOptions, sigmas, seed: int, num_chunks: int, width: int,
           height: int, batch_size: int = 1, sampling: str = "stochastic", cfg_scale: float = 1.0, negative=None,
           switch_positive=None, switch_at_chunk: int = 0, first: torch.Tensor = None) -> torch.Tensor:
    """Generate num_chunks × chunk_frames latent frames, after the clean `first` frames (B, C, n0, H, W) if given
    (image-to-video: they are written to the cache and returned first); model-space latents on CPU."""
    with torch.no_grad():
        return _stream(salt, positive, options, sigmas, seed, num_chunks, width, height, batch_size, sampling,
                       cfg_scale, negative, switch_positive, switch_at_chunk, first)


def stream_plan(salt: SaltModel, options: CacheOptions, num_chunks: int, width: int, height: int, batch_size: int,
                cfg_scale: float, num_first: int) -> tuple:
    """The checks of a stream's sizes, then (frames, latent shape (B, C, frames, H, W), device bytes it needs:
    stream_memory_bytes) for `num_chunks` chunks after `num_first` clean start frames; ValueError naming the input."""
    if not salt.causal:
        raise ValueError(f"SaltStreamingSampler: {salt.name} is a bidirectional model (not trained for chunk-by-"
                         f"chunk generation); use a causal teacher or student, or a native sampler")
    num_chunks = check_count("num_chunks", num_chunks, where="SaltStreamingSampler", maximum=MAX_CHUNKS)
    batch_size = check_count("batch_size", batch_size, where="SaltStreamingSampler")
    width = check_count("width", width, where="SaltStreamingSampler")
    height = check_count("height", height, where="SaltStreamingSampler")
    frames, policy = num_chunks * options.chunk_frames, options.policy
    if policy.kind == "full" and frames + num_first > policy.max_frames:
        raise ValueError(f"SaltStreamingSampler: {num_first} start + {num_chunks} chunks × {options.chunk_frames} "
                         f"frames = {frames + num_first} latent frames exceed the full cache's "
                         f"max_frames={policy.max_frames}; raise max_frames in SaltCacheOptions or use a rolling / "
                         f"sink cache for long videos")
    check_number("cfg", cfg_scale, where="SaltStreamingSampler", low=0, fix="1.0 turns guidance off")
    shape = latent_shape(salt, batch_size, frames, width, height)
    need = stream_memory_bytes(salt.model.cfg, batch_size, frames + num_first, shape[-2:], policy,
                               options.chunk_frames, cfg_scale, salt.model.patch_embedding.weight.dtype)
    return frames, shape, need


STREAM_MEMORY_FIX = ("lower width/height, batch_size or num_chunks, or use a rolling / sink cache (SaltCacheOptions) "
                     "so the cache holds fewer frames")


def _stream(salt, positive, options, sigmas, seed, num_chunks, width, height, batch_size, sampling, cfg_scale, negative,
            switch_positive, switch_at_chunk, first) -> torch.Tensor:
    """`stream` without the autograd-mode handling."""
    check_choice("sampling", sampling, SAMPLING, where="SaltStreamingSampler")
    num_first = 0 if first is None else first.shape[2]
    frames, shape, need = stream_plan(salt, options, num_chunks, width, height, batch_size, cfg_scale, num_first)
    num_chunks, batch_size, policy = shape[2] // options.chunk_frames, shape[0], options.policy
    sig = check_sigmas(sigmas, where="SaltStreamingSampler")
    # as ComfyUI's samplers: onto the compute device, others freed for room; a native MODEL's view bound to it
    with salt_in_use(salt, need):
        ref = salt.model.patch_embedding.weight      # compute dtype and device (fp8 storage casts to it per layer)
        free = free_memory(ref.device, salt.patcher)   # under Dynamic VRAM: with what ComfyUI can evict
        check_memory(f"{batch_size} × {width}×{height} px × {frames + num_first} latent frames ({policy.kind} "
                     f"cache of {policy.capacity_frames} frames)", need, free, where="SaltStreamingSampler",
                     limit_what=f"ComfyUI's free memory on {ref.device}", fix=STREAM_MEMORY_FIX)
        context = text_context(positive, salt, batch_size, "positive")
        uncond = None
        if cfg_scale != 1.0:
            if negative is None:
                raise ValueError(f"SaltStreamingSampler: cfg={cfg_scale} needs a negative conditioning; connect one "
                                 f"or set cfg to 1.0 (distilled students run without guidance)")
            uncond = text_context(negative, salt, batch_size, "negative")
        switches = {}
        if switch_positive is not None:
            switch_at_chunk = check_count("switch_at_chunk", switch_at_chunk, where="SaltStreamingSampler")
            if num_chunks < 2:
                raise ValueError(f"SaltStreamingSampler: switch_positive is connected with num_chunks={num_chunks}; a "
                                 f"switch needs a chunk before it and one after: raise num_chunks to 2 or more, or "
                                 f"disconnect switch_positive")
            if not 1 <= switch_at_chunk < num_chunks:
                raise ValueError(f"SaltStreamingSampler: switch_at_chunk={switch_at_chunk} with "
                                 f"num_chunks={num_chunks}; expected 1..{num_chunks - 1} (the first chunk that uses "
                                 f"switch_positive)")
            switches[switch_at_chunk] = text_context(switch_positive, salt, batch_size, "switch_positive")

        # The pack's seed convention (salt_core.seeding): the clip's noise, then every re-noise, from one CPU generator
        # seeded `seed`, so this node, stream_video and sample_student give the same clip for a seed.
        noise, renoise = seeded_noise(seed, shape, device=ref.device, dtype=ref.dtype)
        steps = len(sig) - 1
        progress = Progress(num_chunks * steps, salt.latent_format)

        def callback(d):
            check_interrupted()
            progress.update(d["chunk"] * steps + d["i"] + 1, d["denoised"])

        chunks = rollout_stream(salt.model, noise, context, sig, policy=policy, chunk_frames=options.chunk_frames,
                                context_noise=options.context_noise, stochastic=sampling == "stochastic",
                                generator=renoise, callback=callback, prompt_switches=switches, cfg_scale=cfg_scale,
                                uncond_context=uncond, memory_limit=free,
                                first_frames=None if first is None else first.to(ref.device, ref.dtype))
        out = []
        for k, chunk in enumerate(chunks, start=1 if first is None else 0):   # the first frames come back first
            out.append(chunk.float().cpu())
            progress.show_chunk(k * steps, chunk)              # the finished chunk, decoded as the user previews
        video = torch.cat(out, dim=2)
        check_finite_tensor("the sampled video", video, where="SaltStreamingSampler", fix=NON_FINITE_FIX)
        return video


class SaltCacheOptions(io.ComfyNode):
    """KV-cache settings for streaming: chunk size, which frames stay in the cache, RoPE mode, context noise."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltCacheOptions",
            display_name="Salt Cache Options",
            category="Salt/streaming",
            description="How SaltStreamingSampler generates: chunk_frames latent frames per chunk, attending to a "
                        "KV cache of earlier frames. full: every frame (Self Forcing, up to max_frames); rolling: "
                        "the window_frames most recent (current chunk included); sink: the first sink_frames "
                        "forever plus the most recent (LongLive; the window counts the sink).",
            inputs=[
                io.Int.Input("chunk_frames", default=3, min=1, max=MAX_CHUNK_FRAMES,
                             tooltip="Latent frames generated per chunk (Self Forcing: 3; frame-wise models: 1)."),
                io.Combo.Input("attention", options=list(ATTENTION), default="full",
                               tooltip="full: attend to every earlier frame (bounded by max_frames); rolling: a "
                                       "window of recent frames; sink: first frames kept forever + a window."),
                io.Int.Input("window_frames", default=12, min=1, max=1024,
                             tooltip="rolling / sink: latent frames attended, current chunk and sink included "
                                     "(LongLive: 12)."),
                io.Int.Input("sink_frames", default=3, min=0, max=1023,
                             tooltip="sink: first latent frames kept forever (LongLive: 3); must leave room for a "
                                     "chunk in the window."),
                io.Boolean.Input("relative_rope", default=False,
                                 tooltip="Rotate keys by their position inside the window instead of the absolute "
                                         "frame index, so streams can run past the RoPE table (1024 frames)."),
                io.Float.Input("context_noise", default=0.0, min=0.0, max=0.99, step=0.01,
                               tooltip="Noise level σ at which finished chunks are re-encoded into the cache "
                                       "(Self Forcing: 0 = clean)."),
                io.Int.Input("max_frames", default=21, min=1, max=1024,
                             tooltip="full: cache capacity in latent frames = the longest video (Self Forcing: 21)."),
            ],
            outputs=[CacheOptionsType.Output(tooltip="Cache settings for SaltStreamingSampler.")],
        )

    @classmethod
    def execute(cls, chunk_frames, attention, window_frames, sink_frames, relative_rope, context_noise,
                max_frames) -> io.NodeOutput:
        return io.NodeOutput(cache_options(chunk_frames, attention, window_frames, sink_frames, relative_rope,
                                           context_noise, max_frames))


class SaltStreamingSampler(io.ComfyNode):
    """Generate a video chunk by chunk on a KV cache (Self Forcing / LongLive style) → LATENT."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltStreamingSampler",
            display_name="Salt Streaming Sampler",
            category="Salt/streaming",
            description="Autoregressive few-step generation: each chunk is denoised with the given SIGMAS while "
                        "attending to the KV cache of earlier chunks, then written to the cache. Output latent "
                        "(B, C, num_chunks·chunk_frames, H, W) in ComfyUI's layout: Wan latents for VAEDecode "
                        "(1/8 of the pixel size, 16 channels; pixel frames = 4·(F-1)+1), RGB pixels for the toy "
                        "model (SaltToyDecode). Optional prompt switch with a KV re-cache (LongLive) and optional "
                        "first frame (image-to-video: the image is encoded, cached, and the video continues it).",
            inputs=[
                SaltModelType.Input("model", tooltip="A causal Salt model (SaltLoadCausalModel, "
                                                     "SaltCausalFromModel, SaltToyModel)."),
                io.Conditioning.Input("positive", tooltip="Text conditioning: umT5 for Wan, SaltToyTextEncode for "
                                                          "the toy model."),
                CacheOptionsType.Input("cache_options", tooltip="Chunk size and KV-cache policy (SaltCacheOptions)."),
                io.Sigmas.Input("sigmas", tooltip="Noise levels per chunk, ending at 0 (SaltFewStepSigmas)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the clip: its initial noise and every re-noise, from one CPU generator "
                                     "(the same seed gives the same clip on any device and in Salt's other samplers)."),
                io.Int.Input("num_chunks", default=4, min=1, max=MAX_CHUNKS,
                             tooltip="Chunks to generate; the video has num_chunks × chunk_frames latent frames."),
                io.Int.Input("width", default=832, min=4, max=8192, step=4,
                             tooltip="Video width in pixels (Wan: a multiple of 16; toy world: 16)."),
                io.Int.Input("height", default=480, min=4, max=8192, step=4,
                             tooltip="Video height in pixels (Wan: a multiple of 16; toy world: 16)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Videos generated at once."),
                io.Combo.Input("sampling", options=list(SAMPLING), default="stochastic",
                               tooltip="stochastic: fresh noise between steps (Self Forcing / DMD students); "
                                       "deterministic: Euler steps (teachers, ODE-distilled students)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance; 1.0 = off (distilled students). Other values "
                                       "need the negative input and double the compute."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Unconditional / negative text, used only when cfg ≠ 1."),
                io.Conditioning.Input("switch_positive", optional=True,
                                      tooltip="A second prompt, used from chunk switch_at_chunk on (the cache is "
                                              "re-encoded with it, as LongLive)."),
                io.Int.Input("switch_at_chunk", default=2, min=1, max=MAX_CHUNKS - 1, optional=True,
                             tooltip="First chunk (0-based) generated with switch_positive; ignored without it."),
                io.Image.Input("start_image", optional=True,
                               tooltip="Image-to-video: the first frame. Encoded with vae (Wan; the toy model takes "
                                       "pixels as they are), resized to width×height, written to the KV cache "
                                       "before the first chunk and returned as the video's first latent frame."),
                io.Vae.Input("vae", optional=True, tooltip="The VAE that encodes start_image (the Wan 2.1 VAE, as "
                                                          "for VAEDecode)."),
                io.Latent.Input("start_latent", optional=True,
                                tooltip="Image-to-video from an already encoded first frame (or several frames: "
                                        "video continuation), instead of start_image."),
            ],
            outputs=[io.Latent.Output(tooltip="Latent video (B, C, F, H, W); with a start frame F counts it too.")],
        )

    @classmethod
    def execute(cls, model, positive, cache_options, sigmas, seed, num_chunks, width, height, batch_size, sampling,
                cfg, negative=None, switch_positive=None, switch_at_chunk=2, start_image=None, vae=None,
                start_latent=None) -> io.NodeOutput:
        if start_image is not None:   # before its resize and VAE encode: a video no memory of the device holds
            need = stream_plan(model, cache_options, num_chunks, width, height, batch_size, cfg, num_first=1)[2]
            device = torch_device()
            check_memory(f"{batch_size} × {width}×{height} px × {num_chunks} chunks and the start frame", need,
                         total_memory(device), where="SaltStreamingSampler", limit_what=f"all of {device}'s memory",
                         fix=STREAM_MEMORY_FIX)
        first = first_frames(model, width, height, batch_size, start_image, vae, start_latent)
        # `cfg` is the widget's id (ComfyUI's name for the guidance scale, as on KSampler): stream's cfg_scale
        x = stream(model, positive, cache_options, sigmas, seed, num_chunks, width, height, batch_size, sampling,
                   cfg, negative, switch_positive, switch_at_chunk, first)
        return io.NodeOutput({"samples": latent_to_comfy(x, model.latent_format)})
