"""Evaluate a few-step student on the toy world: samples at each inference NFE, oracle metrics."""
import torch

from ..salt_core.denoiser import FlowDenoiser
from ..salt_core.kv_cache import CachePolicy
from ..salt_core.samplers import sample_fewstep_stochastic
from ..salt_core.schedules import get_sigmas_fewstep
from ..salt_core.streaming import stream_video
from ..salt_core.toy.text import ToyTextEncoder
from ..salt_core.toy.world import get_world
from .distill_config import DistillConfig
from .teacher import eval_prompts


@torch.no_grad()
def sample_student(model, cfg: DistillConfig, context, nfe: int, seed: int = 0, num_frames: int = None,
                   policy: CachePolicy = None):
    """Few-step samples (B, C, F, H, W) of a student (stochastic Self Forcing sampler)."""
    num_frames = num_frames or cfg.num_frames
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(context.shape[0], model.cfg.in_dim, num_frames, cfg.height, cfg.width, generator=gen)
    sigmas = get_sigmas_fewstep(nfe, cfg.shift)
    if cfg.student_kind == "bidirectional":
        return sample_fewstep_stochastic(FlowDenoiser(model, context), noise, sigmas, disable=True,
                                         noise_sampler=lambda *_: torch.randn(noise.shape, generator=gen))
    policy = policy or CachePolicy(cfg.local_attn_frames, cfg.sink_frames, num_frames)
    return stream_video(model, noise, context, sigmas, policy=policy, chunk_frames=cfg.chunk_frames,
                        context_noise=cfg.context_noise, generator=gen)


def evaluate_student(model, cfg: DistillConfig, callback=None) -> dict:
    """{f"nfe{k}": oracle metric means} for each inference NFE (toy world only; {} otherwise)."""
    if not cfg.world:
        return {}
    from ..salt_core.metrics.frechet import reference_features
    from ..salt_core.metrics.score import score_table
    world = get_world(cfg.world)
    enc = ToyTextEncoder(text_dim=model.cfg.text_dim, max_tokens=model.cfg.text_len, world=world)
    caps = eval_prompts(world, cfg.eval_clips)
    ref = reference_features(world, 256)
    out = {}
    for nfe in cfg.eval_nfe:
        videos = sample_student(model, cfg, enc.encode(caps), nfe)
        out[f"nfe{nfe}"] = score_table(videos, caps, world, ref)
        if callback is not None:
            callback({"preview": videos, "nfe": nfe})
    return out
