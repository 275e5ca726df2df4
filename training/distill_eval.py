"""Evaluate a few-step student on the toy world: samples at each inference NFE, oracle metrics.

Noise is drawn on the CPU from the seed and moved to the model's device, so a seed gives the same
clips on any device; results come back on the model's device.
"""
import torch

from ..salt_core.denoiser import FlowDenoiser
from ..salt_core.kv_cache import CachePolicy
from ..salt_core.samplers import sample_fewstep_stochastic
from ..salt_core.schedules import get_sigmas_fewstep, randn_like
from ..salt_core.streaming import stream_video
from ..salt_core.toy.text import ToyTextEncoder
from ..salt_core.toy.world import get_world
from .distill_config import DistillConfig
from .teacher import eval_prompts


def _seeded_noise(model, cfg: DistillConfig, context, num_frames: int, gen) -> tuple:
    """(noise (B, C, F, H, W), context) on the model's device; the noise drawn from the CPU generator `gen`."""
    device = model.patch_embedding.weight.device
    shape = (context.shape[0], model.cfg.in_dim, num_frames, cfg.height, cfg.width)
    noise = torch.randn(shape, generator=gen).to(device=device, dtype=context.dtype)
    return noise, context.to(device)


@torch.no_grad()
def sample_student(model, cfg: DistillConfig, context, nfe: int, seed: int = 0, num_frames: int = None,
                   policy: CachePolicy = None):
    """Few-step samples (B, C, F, H, W) of a student (stochastic Self Forcing sampler)."""
    num_frames = num_frames or cfg.num_frames
    gen = torch.Generator().manual_seed(seed)
    noise, context = _seeded_noise(model, cfg, context, num_frames, gen)
    sigmas = get_sigmas_fewstep(nfe, cfg.shift)
    if cfg.student_kind == "bidirectional":
        return sample_fewstep_stochastic(FlowDenoiser(model, context), noise, sigmas, disable=True,
                                         noise_sampler=lambda *_: randn_like(noise, gen))
    policy = policy or CachePolicy(cfg.local_attn_frames, cfg.sink_frames, num_frames)
    return stream_video(model, noise, context, sigmas, policy=policy, chunk_frames=cfg.chunk_frames,
                        context_noise=cfg.context_noise, generator=gen)


def evaluate_student(model, cfg: DistillConfig, callback=None, preview_path: str = None) -> dict:
    """{f"nfe{k}": oracle metric means} for each inference NFE (toy world only; {} otherwise);
    writes an animated preview (one row per NFE) to `preview_path` if given."""
    if not cfg.world:
        return {}
    from ..salt_core.metrics.frechet import reference_features
    from ..salt_core.metrics.score import score_table
    world = get_world(cfg.world)
    enc = ToyTextEncoder(text_dim=model.cfg.text_dim, max_tokens=model.cfg.text_len, world=world)
    caps = eval_prompts(world, cfg.eval_clips)
    ref = reference_features(world, 256)
    out, rows = {}, {}
    for nfe in cfg.eval_nfe:
        videos = sample_student(model, cfg, enc.encode(caps), nfe)
        out[f"nfe{nfe}"] = score_table(videos, caps, world, ref)
        rows[f"{nfe} NFE"] = videos[:8]
        if callback is not None:
            callback({"preview": videos, "nfe": nfe})
    if preview_path:
        from .preview import save_gif
        save_gif(rows, preview_path)
    return out


@torch.no_grad()
def student_defect(model, cfg: DistillConfig, context, grid_steps: int = 8, seed: int = 0) -> float:
    """Semigroup defect (SALT_METHOD §4) on the student's own stochastic rollout states on the
    `grid_steps` grid; for causal students every chunk is measured on its real KV cache."""
    from ..salt_core.metrics.semigroup import semigroup_defects
    from ..salt_core.streaming import rollout_stream
    sigmas = get_sigmas_fewstep(grid_steps, cfg.shift)
    gen = torch.Generator().manual_seed(seed)
    noise, context = _seeded_noise(model, cfg, context, cfg.num_frames, gen)
    rows = []
    if cfg.student_kind == "bidirectional":
        den = FlowDenoiser(model, context)

        def velocity(x, s):
            return den.velocity(x, torch.tensor([s], dtype=torch.float64, device=x.device))

        def collect(d):
            if float(d["sigma"]) > float(sigmas[-3]):   # states with two further grid points
                rows.append(semigroup_defects(velocity, [(float(d["sigma"]), d["x"])], sigmas))
        sample_fewstep_stochastic(den, noise, sigmas, callback=collect, disable=True,
                                  noise_sampler=lambda *_: randn_like(noise, gen))
    else:
        cache = model.new_cache(noise.shape[0], CachePolicy.full(cfg.num_frames), (cfg.height, cfg.width))

        def collect(d):
            if float(d["sigma"]) <= float(sigmas[-3]):
                return
            f0 = d["chunk"] * cfg.chunk_frames

            def velocity(x, s):
                t = torch.full((x.shape[0], x.shape[2]), 1000.0 * s, dtype=torch.float64, device=x.device)
                return model(x, t, context, cache=cache, start_frame=f0, write_cache=False)
            rows.append(semigroup_defects(velocity, [(float(d["sigma"]), d["x"])], sigmas))
        for _ in rollout_stream(model, noise, context, sigmas, cache=cache, chunk_frames=cfg.chunk_frames,
                                generator=gen, callback=collect):
            pass
    return torch.cat(rows).mean().item()


def drift_slopes(model, cfg: DistillConfig, captions, context, nfe: int, length_factor: int = 3,
                 window_frames: int = None) -> dict:
    """Per-frame oracle curves of a `length_factor`× longer rollout on a rolling cache with
    window-relative RoPE, and their least-squares slopes per frame {name: (curve (F,), slope)}."""
    from ..salt_core.metrics.oracle import drift_curves
    world = get_world(cfg.world)
    frames = cfg.num_frames * length_factor
    policy = CachePolicy.rolling(window_frames or cfg.num_frames, relative_rope=True)
    videos = sample_student(model, cfg, context, nfe, num_frames=frames, policy=policy)
    curves = drift_curves(videos, captions, world)
    f = torch.arange(frames, dtype=torch.float64)
    out = {}
    for name in ("sharpness_error", "path_px", "adherence"):
        if name in curves:
            c = torch.as_tensor(curves[name], dtype=torch.float64).mean(0)
            slope = float(((f - f.mean()) * (c - c.mean())).sum() / ((f - f.mean()) ** 2).sum())
            out[name] = (c.tolist(), slope)
    return out
