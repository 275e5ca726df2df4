"""Evaluate generated toy-world clips with the oracle metrics: the teacher job's and the distillation job's
evaluation callbacks, and drift along long rollouts.

Samples come from training (`sample_teacher` runs inside the teacher job, `training.distill_eval.sample_student`
here); the scores are toy.metrics' (sprite world) or toy.lab.metrics' (the method lab).
"""
import torch

from ..salt_core.kv_cache import CachePolicy
from ..training.distill_eval import sample_student
from .prompts import eval_prompts
from .text import ToyTextEncoder
from .world import sprite_world


def evaluate_student(model, cfg, world, callback=None, preview_path: str = None) -> dict:
    """{f"nfe{k}": oracle metric means} for each inference NFE of a DistillConfig `cfg` on the sprite world `world`
    (a ToyWorldConfig); writes an animated preview (one row per NFE) to `preview_path` if given (SpriteWorld's
    evaluation of a distillation run)."""
    from .metrics.frechet import reference_features
    from .metrics.score import score_table
    enc = ToyTextEncoder(text_dim=model.cfg.text_dim, max_tokens=model.cfg.text_len, world=world)
    caps = eval_prompts(world, cfg.eval_clips)
    ref = reference_features(world, 256)
    return score_each_nfe(model, cfg, enc.encode(caps), lambda videos: score_table(videos, caps, world, ref),
                          callback, preview_path)


def evaluate_lab_student(model, cfg, lab, callback=None, preview_path: str = None) -> dict:
    """{f"nfe{k}": the lab's exact metric means} for each inference NFE of a DistillConfig `cfg` on the lab world
    `lab` (a LabWorld): `cfg.eval_clips` clips of the fixed captions (`lab_eval_captions`), sampled with
    `sample_student` (seed 0) and scored by toy.lab.metrics.evaluate_clips; preview GIF as `evaluate_student`."""
    from .lab.metrics import evaluate_clips
    from .lab.world import LabTextEncoder
    from .prompts import lab_eval_captions
    caps = lab_eval_captions(lab, cfg.eval_clips)
    context = LabTextEncoder(lab, model.cfg.text_dim, model.cfg.text_len).encode(caps)
    return score_each_nfe(model, cfg, context, lambda videos: evaluate_clips(lab, videos.cpu(), caps), callback,
                          preview_path)


def score_each_nfe(model, cfg, context, score, callback=None, preview_path: str = None) -> dict:
    """{f"nfe{k}": score(videos)} for the student's samples (sample_student, seed 0) at each `cfg.eval_nfe`, for
    context (B, L, D); callback({"preview": videos, "nfe": k}) after each; an animated preview (one row per NFE,
    first 8 clips) to `preview_path` if given."""
    out, rows = {}, {}
    for nfe in cfg.eval_nfe:
        videos = sample_student(model, cfg, context, nfe)
        out[f"nfe{nfe}"] = score(videos)
        rows[f"{nfe} NFE"] = videos[:8].cpu()
        if callback is not None:
            callback({"preview": videos, "nfe": nfe})
    if preview_path:
        from .preview import save_gif
        save_gif(rows, preview_path)
    return out


def drift_slopes(model, cfg, captions, context, nfe: int, length_factor: int = 3,
                 window_frames: int = None) -> dict:
    """Per-frame oracle curves of a `length_factor`× longer rollout on a rolling cache with
    window-relative RoPE, and their least-squares slopes per frame {name: (curve (F,), slope)}."""
    from .metrics.oracle import drift_curves
    world = sprite_world(cfg.world)
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
