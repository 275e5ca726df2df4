"""Oracle metrics of toy-world videos: exact scores computed from fitted sprite parameters.

Every metric is a pure function of videos (B, 3, F, H, W) in [-1, 1], F ≥ 3 (rollouts longer than
the world's clips are fine), plus captions where the prompt matters. Each takes an optional
precomputed `fit` (from `fit_sprites`) so a full pass fits once. Per-clip results are float64
numpy arrays (B,); curves over frames are (B, F).

- sharpness error: mean |frame − clean re-rendering of its fitted sprite| (blur, noise, mush);
- prompt adherence: share of {colour, shape, direction, background} that match the caption;
- motion smoothness: RMS distance (px) of the centroids from the best bouncing constant-velocity path;
- dynamic degree: mean centroid speed (px/frame), ~0 for a frozen clip;
- flicker: mean |frame-to-frame change| of background pixels;
- first-frame agreement (image-to-video): share of frames whose colour / shape / background match a given
  first frame's, and how far the sprite starts from where that frame has it.
Knows nothing of models or samplers; the semigroup defect (which needs the model) lives elsewhere.
"""
import numpy as np
import torch
import torch.nn.functional as F

from ..world import DIRECTION_VECTORS, ToyWorldConfig, parse_caption
from .fit import SpriteFit, check_videos, clip_shape_bounds, fit_bounce_path, fit_sprites

BACKGROUND_MARGIN = 2        # px around the fitted sprite excluded from the flicker's background
MIN_DIRECTION_TRAVEL = 0.25  # fraction of the expected early travel below which no direction is read


def _fit(videos, cfg: ToyWorldConfig, fit: SpriteFit | None) -> SpriteFit:
    """The given fit, or a fresh one of videos (B, 3, F, H, W)."""
    return fit_sprites(videos, cfg) if fit is None else fit


def _pad_first(steps: torch.Tensor) -> torch.Tensor:
    """Per-step values (B, F-1) → per-frame (B, F): frame t holds step t-1→t, frame 0 copies frame 1."""
    return torch.cat([steps[:, :1], steps], 1)


def sharpness_curve(videos, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> np.ndarray:
    """Mean abs error (B, F) of each frame to the clean rendering of its fitted sprite (0 = crisp)."""
    fit = _fit(videos, cfg, fit)
    return (check_videos(videos, cfg) - fit.render).abs().mean((1, 3, 4)).double().numpy()


def sharpness_error(videos, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> np.ndarray:
    """Imaging-quality error (B,): `sharpness_curve` averaged over frames, in [-1, 1] pixel units."""
    return sharpness_curve(videos, cfg, fit).mean(1)


def _targets(captions: list, cfg: ToyWorldConfig, num_b: int) -> dict:
    """Caption slots as index tensors {'colour', 'shape', 'direction', 'background'} each (B,)."""
    if len(captions) != num_b:
        raise ValueError(f"captions has {len(captions)} entries; expected one per video (B={num_b})")
    parsed = [parse_caption(cfg, c) for c in captions]
    names = {"colour": cfg.colour_names, "shape": cfg.shape_names,
             "direction": tuple(DIRECTION_VECTORS), "background": cfg.background_names}
    return {k: torch.tensor([names[k].index(p[k]) for p in parsed]) for k in names}


def fitted_direction(fit: SpriteFit, cfg: ToyWorldConfig) -> torch.Tensor:
    """Index into DIRECTION_VECTORS (B,) of the centroid motion over frames 0..clear_frames-1; -1 if still.

    The world guarantees no bounce in those frames, so the motion there is the caption's direction.
    """
    k = min(cfg.clear_frames - 1, fit.centre.shape[1] - 1)
    travel = fit.centre[:, k] - fit.centre[:, 0]                               # (B, 2)
    dirs = torch.tensor(list(DIRECTION_VECTORS.values()), dtype=torch.float32)  # (4, 2)
    idx = (travel @ dirs.T).argmax(1)
    still = travel.norm(dim=1) < MIN_DIRECTION_TRAVEL * k * cfg.speed
    return torch.where(still, torch.full_like(idx, -1), idx)


def _clip_mode(index: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Most frequent per-frame index (B,) over frames (B, F), counting frames without a sprite as -1."""
    return torch.where(present, index, torch.full_like(index, -1)).mode(dim=1).values


def prompt_adherence(videos, captions: list, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> dict:
    """Per-clip adherence (B,) in [0, 1] = mean of colour/shape/direction/background matches, plus each match.

    Colour, shape and background are majority votes over frames; direction is read from the early
    centroid motion (`fitted_direction`). Returns {'adherence', 'colour_ok', 'shape_ok',
    'direction_ok', 'background_ok'}, each float64 (B,).
    """
    fit = _fit(videos, cfg, fit)
    target = _targets(captions, cfg, fit.centre.shape[0])
    ok = {
        "colour_ok": _clip_mode(fit.colour_index, fit.present) == target["colour"],
        "shape_ok": _clip_mode(fit.shape_index, fit.present) == target["shape"],
        "direction_ok": fitted_direction(fit, cfg) == target["direction"],
        "background_ok": fit.background_index.mode(dim=1).values == target["background"],
    }
    out = {k: v.double().numpy() for k, v in ok.items()}
    out["adherence"] = np.mean([out[k] for k in ok], axis=0)
    return out


def first_frame_agreement(videos, first_frame, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> dict:
    """How well videos (B, 3, F, H, W) continue a given first frame (B, 3, 1, H, W) (image-to-video).

    The first frame is fitted like any frame. Per clip (B,): 'colour_ok', 'shape_ok', 'background_ok' =
    share of the videos' frames (with a sprite, for colour and shape) whose fitted index equals the first
    frame's; 'start_px' = distance (px) of the first video frame's sprite centre from the first frame's, ≈
    the world's speed for a video that continues the frame, larger for one that ignores it.
    """
    fit = _fit(videos, cfg, fit)
    ref = fit_sprites(first_frame[:, :, :1].repeat(1, 1, 3, 1, 1), cfg)   # the fit wants >= 3 frames: a still clip
    same = lambda a, b: (a == b[:, :1]).double()   # noqa: E731  (B, F) vs the first frame's (B, 1)
    present = fit.present.double()
    out = {
        "colour_ok": (same(fit.colour_index, ref.colour_index) * present).sum(1) / present.sum(1).clamp_min(1),
        "shape_ok": (same(fit.shape_index, ref.shape_index) * present).sum(1) / present.sum(1).clamp_min(1),
        "background_ok": same(fit.background_index, ref.background_index).mean(1),
        "start_px": (fit.centre[:, 0] - ref.centre[:, 0]).norm(dim=-1),
    }
    return {k: v.double().numpy() for k, v in out.items()}


def adherence_curves(videos, captions: list, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> dict:
    """Per-frame matches (B, F) of colour, shape and background with the caption, and their mean."""
    fit = _fit(videos, cfg, fit)
    target = _targets(captions, cfg, fit.centre.shape[0])
    out = {
        "colour_ok": ((fit.colour_index == target["colour"][:, None]) & fit.present).double().numpy(),
        "shape_ok": ((fit.shape_index == target["shape"][:, None]) & fit.present).double().numpy(),
        "background_ok": (fit.background_index == target["background"][:, None]).double().numpy(),
    }
    out["adherence"] = (out["colour_ok"] + out["shape_ok"] + out["background_ok"]) / 3
    return out


def path_deviation(videos, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> np.ndarray:
    """Distance (B, F) in px of each fitted centroid from the clip's best bouncing constant-velocity path."""
    fit = _fit(videos, cfg, fit)
    num_b = fit.centre.shape[0]
    lo, hi = clip_shape_bounds(fit, cfg)                                       # (B, 2) each
    pos = fit.centre.double().numpy().transpose(2, 0, 1).reshape(2 * num_b, -1)  # (2B, F): x rows then y rows
    vmax = max(2.5, 2.5 * cfg.speed)
    path, _, _ = fit_bounce_path(pos, lo.T.reshape(-1), hi.T.reshape(-1), vmax=vmax)
    dev = (path - pos).reshape(2, num_b, -1)                                   # (2, B, F)
    return np.sqrt((dev ** 2).sum(0))


def motion_smoothness(videos, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> np.ndarray:
    """RMS deviation (B,) in px of centroids from the best constant-velocity path with bounces (0 = smooth)."""
    return np.sqrt((path_deviation(videos, cfg, fit) ** 2).mean(1))


def speed_curve(videos, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> np.ndarray:
    """Centroid displacement (B, F) in px between consecutive frames (frame 0 copies frame 1)."""
    fit = _fit(videos, cfg, fit)
    return _pad_first((fit.centre[:, 1:] - fit.centre[:, :-1]).norm(dim=-1)).double().numpy()


def dynamic_degree(videos, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> np.ndarray:
    """Mean centroid speed (B,) in px/frame; ≈ cfg.speed for real clips (a bounce step can be shorter), ~0 frozen."""
    fit = _fit(videos, cfg, fit)
    return (fit.centre[:, 1:] - fit.centre[:, :-1]).norm(dim=-1).mean(1).double().numpy()


def flicker_curve(videos, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> np.ndarray:
    """Mean abs change (B, F) of background pixels from the previous frame (frame 0 copies frame 1).

    Background = pixels farther than BACKGROUND_MARGIN px from the fitted sprite in both frames.
    """
    fit = _fit(videos, cfg, fit)
    videos = check_videos(videos, cfg)
    k = 2 * BACKGROUND_MARGIN + 1
    near = F.max_pool2d((fit.coverage > 0).float(), k, stride=1, padding=BACKGROUND_MARGIN) > 0  # (B, F, H, W)
    bg = ~(near[:, 1:] | near[:, :-1])                                         # (B, F-1, H, W)
    change = (videos[:, :, 1:] - videos[:, :, :-1]).abs().mean(1)             # (B, F-1, H, W)
    steps = (change * bg).sum((2, 3)) / bg.sum((2, 3)).clamp_min(1)
    return _pad_first(steps).double().numpy()


def flicker(videos, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> np.ndarray:
    """Temporal flicker (B,): mean abs frame-to-frame change of background pixels (0 = steady)."""
    return flicker_curve(videos, cfg, fit)[:, 1:].mean(1)


def evaluate(videos, captions: list, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> dict:
    """All per-clip oracle metrics (each float64 (B,)) from one sprite fit; see the module docstring."""
    fit = _fit(videos, cfg, fit)
    out = {"sharpness_error": sharpness_error(videos, cfg, fit)}
    out.update(prompt_adherence(videos, captions, cfg, fit))
    out["smoothness_px"] = motion_smoothness(videos, cfg, fit)
    out["dynamic_px"] = dynamic_degree(videos, cfg, fit)
    out["flicker"] = flicker(videos, cfg, fit)
    out["area_px"] = fit.area.mean(1).double().numpy()
    return out


def drift_curves(videos, captions: list, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> dict:
    """Per-frame scores (each (B, F)) for drift over long rollouts: sharpness, flicker, adherence, path, speed, area."""
    fit = _fit(videos, cfg, fit)
    out = {"sharpness_error": sharpness_curve(videos, cfg, fit), "flicker": flicker_curve(videos, cfg, fit)}
    out.update(adherence_curves(videos, captions, cfg, fit))
    out["path_px"] = path_deviation(videos, cfg, fit)
    out["speed_px"] = speed_curve(videos, cfg, fit)
    out["area_px"] = fit.area.double().numpy()
    return out
