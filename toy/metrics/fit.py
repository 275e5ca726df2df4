"""Fit the toy world's sprite model to every frame of a video, and a bouncing path to its centroids.

Per frame (vectorised over all B·F frames): background = per-channel median colour (the sprite
covers < 10% of the frame); sprite colour = mean of the pixels at least 80% as far from the
background as the farthest one (the sprite's interior); alpha = each pixel's projection on the
background→sprite colour line, clipped to [0, 1] (for a clean frame it equals the rendered
coverage). The sprite is located at the densest 5×5 patch of alpha and its centre and area are
the alpha moments inside a window around it, so stray speckle elsewhere does not move them. The
shape is the one whose clean coverage at that centre is nearest (L2) to the alpha map, and
`render` re-renders the fitted frame cleanly. A frame whose sprite/background contrast is below
`min_contrast` has no sprite (`present` False, alpha 0, centre at the window's guess).

Knows the world's geometry and palette (from its config) but nothing of captions or scores.
"""
from dataclasses import dataclass
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ..world import ToyWorldConfig, coverage, reflect

MIN_CONTRAST = 0.3      # sprite/background colour distance below which a frame has no sprite
INTERIOR_FRACTION = 0.8  # pixels this close to the farthest one (relative) count as sprite interior
REFINE_STEPS = 4         # closed-form refinements of the bounce-path fit (each may fix the bounce pattern)


@dataclass
class SpriteFit:
    """Per-frame fitted sprite parameters of a batch of videos."""
    background: torch.Tensor        # (B, F, 3) background colour
    colour: torch.Tensor            # (B, F, 3) sprite colour
    centre: torch.Tensor            # (B, F, 2) sprite centre (x, y) in px
    area: torch.Tensor              # (B, F) sum of alpha in the sprite window, px
    present: torch.Tensor           # (B, F) bool: a sprite with enough contrast was found
    shape_index: torch.Tensor       # (B, F) long, index into cfg.shapes
    colour_index: torch.Tensor      # (B, F) long, nearest palette entry
    background_index: torch.Tensor  # (B, F) long, nearest background entry
    coverage: torch.Tensor          # (B, F, H, W) clean coverage of the fitted sprite
    render: torch.Tensor            # (B, 3, F, H, W) clean re-rendering of each fitted frame


def check_videos(videos: torch.Tensor, cfg: ToyWorldConfig) -> torch.Tensor:
    """Validate videos (B, 3, F≥3, H, W) against the world's frame size; return them as float32 on CPU."""
    if not torch.is_tensor(videos) or videos.ndim != 5 or videos.shape[1] != 3:
        shape = tuple(videos.shape) if hasattr(videos, "shape") else type(videos).__name__
        raise ValueError(f"videos has shape {shape}; expected a tensor (B, 3, F, H, W) in [-1, 1]")
    if videos.shape[3:] != (cfg.height, cfg.width) or videos.shape[2] < 3:
        raise ValueError(f"videos has shape {tuple(videos.shape)}; expected (B, 3, F>=3, {cfg.height}, "
                         f"{cfg.width}) for this world config (fix the world config or crop the frames)")
    return videos.detach().to("cpu", torch.float32)


def _pixel_centres(cfg: ToyWorldConfig) -> tuple:
    """Pixel-centre coordinates (xs (1, 1, W), ys (1, H, 1))."""
    xs = torch.arange(cfg.width, dtype=torch.float32).view(1, 1, -1) + 0.5
    ys = torch.arange(cfg.height, dtype=torch.float32).view(1, -1, 1) + 0.5
    return xs, ys


def _window_moments(alpha: torch.Tensor, guess: torch.Tensor, radius: float, cfg) -> tuple:
    """(centre (N, 2), area (N,), windowed alpha (N, H, W)) of alpha (N, H, W) near guess (N, 2)."""
    xs, ys = _pixel_centres(cfg)
    win = ((xs - guess[:, 0, None, None]).abs() <= radius) & ((ys - guess[:, 1, None, None]).abs() <= radius)
    a = alpha * win
    area = a.sum((1, 2))
    safe = area.clamp_min(1e-6)
    cx = (a * xs).sum((1, 2)) / safe
    cy = (a * ys).sum((1, 2)) / safe
    centre = torch.where((area > 1e-3)[:, None], torch.stack([cx, cy], -1), guess)
    return centre, area, a


def fit_sprites(videos: torch.Tensor, cfg: ToyWorldConfig, min_contrast: float = MIN_CONTRAST) -> SpriteFit:
    """Fit background, sprite colour, centre, area and shape to every frame of videos (B, 3, F, H, W)."""
    videos = check_videos(videos, cfg)
    num_b, _, num_f, h, w = videos.shape
    x = rearrange(videos, "b c f h w -> (b f) (h w) c")                       # (N, P, 3)
    bg = x.median(dim=1).values                                               # (N, 3)
    diff = x - bg[:, None]                                                    # (N, P, 3)
    dist = diff.norm(dim=-1)                                                  # (N, P)
    interior = (dist >= INTERIOR_FRACTION * dist.max(1, keepdim=True).values).float()
    colour = (x * interior[..., None]).sum(1) / interior.sum(1, keepdim=True).clamp_min(1)   # (N, 3)
    sb = colour - bg                                                          # (N, 3)
    contrast2 = (sb ** 2).sum(-1)                                             # (N,)
    present = contrast2 >= min_contrast ** 2
    alpha = ((diff * sb[:, None]).sum(-1) / contrast2.clamp_min(1e-6)[:, None]).clamp(0, 1)
    alpha = rearrange(alpha * present[:, None], "n (h w) -> n h w", h=h, w=w)

    # Densest 5×5 patch → rough centre; two windowed-moment passes refine it.
    dens = F.avg_pool2d(alpha[:, None], 5, stride=1, padding=2)[:, 0]          # (N, H, W)
    flat = dens.flatten(1).argmax(1)
    guess = torch.stack([(flat % w).float() + 0.5, (flat // w).float() + 0.5], -1)   # (N, 2)
    radius = max(max(s[2], s[3]) for s in cfg.shapes) + 2.0
    centre, _, _ = _window_moments(alpha, guess, radius, cfg)
    centre, area, a_win = _window_moments(alpha, centre, radius, cfg)

    covs = torch.stack([coverage(cfg, name, centre) for name in cfg.shape_names], 1)  # (N, S, H, W)
    shape_index = ((covs - a_win[:, None]) ** 2).sum((2, 3)).argmin(1)        # (N,)
    cov = covs[torch.arange(covs.shape[0]), shape_index] * present[:, None, None]     # (N, H, W)
    render = bg[:, :, None, None] + cov[:, None] * sb[:, :, None, None]       # (N, 3, H, W)

    colour_index = torch.cdist(colour, cfg.palette_tensor()).argmin(1)
    background_index = torch.cdist(bg, cfg.background_tensor()).argmin(1)
    per_frame = lambda t: rearrange(t, "(b f) ... -> b f ...", b=num_b, f=num_f)   # noqa: E731
    return SpriteFit(
        background=per_frame(bg), colour=per_frame(colour), centre=per_frame(centre),
        area=per_frame(area), present=per_frame(present), shape_index=per_frame(shape_index),
        colour_index=per_frame(colour_index), background_index=per_frame(background_index),
        coverage=per_frame(cov), render=rearrange(render, "(b f) c h w -> b c f h w", b=num_b, f=num_f))


def clip_shape_bounds(fit: SpriteFit, cfg: ToyWorldConfig) -> tuple:
    """(lo (B, 2), hi (B, 2)) centre bounds of each clip's most frequent fitted shape."""
    mode = fit.shape_index.mode(dim=1).values.tolist()
    bounds = [cfg.bounds(cfg.shape_names[i]) for i in mode]
    lo = np.array([[bx[0], by[0]] for bx, by in bounds], dtype=np.float64)
    hi = np.array([[bx[1], by[1]] for bx, by in bounds], dtype=np.float64)
    return lo, hi


def _fold_pattern(p0, v, t, lo, hi) -> tuple:
    """Sign s and offset o (M, F) with reflect(p0 + v t) = s (p0 + v t) + o on each frame."""
    length = (hi - lo)[:, None]
    u = p0[:, None] - lo[:, None] + v[:, None] * t                            # (M, F)
    q = np.floor(u / (2 * length))
    m = u - 2 * length * q
    up = m <= length
    s = np.where(up, 1.0, -1.0)
    o = np.where(up, -2 * length * q, 2 * lo[:, None] + 2 * length * (q + 1))
    return s, o


def _refine(pos, t, p0, v, lo, hi) -> tuple:
    """Closed-form refinement of (p0, v) (M,) on their own bounce pattern, REFINE_STEPS times; returns (p0, v, err)."""
    def sq_err(p0_, v_):
        """Squared error (M,) of the reflected path with (p0_, v_)."""
        return ((reflect(p0_[:, None] + v_[:, None] * t, lo[:, None], hi[:, None]) - pos) ** 2).sum(1)

    best_err = sq_err(p0, v)
    t_c = t - t.mean()
    for _ in range(REFINE_STEPS):
        s, o = _fold_pattern(p0, v, t, lo, hi)
        z = s * (pos - o)                                                      # = p0 + v t on this pattern
        v_new = (z * t_c).sum(1) / (t_c ** 2).sum()
        p0_new = z.mean(1) - v_new * t.mean()
        new_err = sq_err(p0_new, v_new)
        better = new_err < best_err
        p0, v, best_err = np.where(better, p0_new, p0), np.where(better, v_new, v), np.minimum(new_err, best_err)
    return p0, v, best_err


def fit_bounce_path(pos: np.ndarray, lo: np.ndarray, hi: np.ndarray, vmax: float = 2.5,
                    num_starts: int = 10, chunk: int = 32) -> tuple:
    """Least-squares constant-velocity path with reflections in [lo, hi] per row of pos (M, F).

    Returns (path (M, F), p0 (M,), v (M,)). A grid over (p0, v) proposes the `num_starts` best
    bounce patterns per row (p0 also at the observed first position; v denser near 0, where a slow
    sprite's bounce time is sensitive to it). With a pattern fixed the path is linear in (p0, v),
    so a closed-form regression refines each, and the candidate with the smallest error wins.
    """
    pos = np.asarray(pos, dtype=np.float64)
    num_m, num_f = pos.shape
    t = np.arange(num_f, dtype=np.float64)
    slow = 0.25 * np.geomspace(0.01, 0.7, 10)
    v_grid = np.unique(np.concatenate([np.linspace(-vmax, vmax, 2 * int(np.ceil(vmax / 0.25)) + 1),
                                       slow, -slow]))                                     # (Gv,)
    frac = np.linspace(0.0, 1.0, 23)                                          # (G0,)
    k = min(num_starts, (len(frac) + 1) * len(v_grid))
    p0 = np.empty((num_m, k))
    v = np.empty((num_m, k))
    for i in range(0, num_m, chunk):
        sl = slice(i, i + chunk)
        lo_c, hi_c = lo[sl, None, None, None], hi[sl, None, None, None]
        p_grid = lo[sl, None] + (hi[sl] - lo[sl])[:, None] * frac              # (m, G0)
        p_grid = np.concatenate([p_grid, np.clip(pos[sl, :1], lo[sl, None], hi[sl, None])], 1)  # (m, G0+1)
        cand = reflect(p_grid[:, :, None, None] + v_grid[None, None, :, None] * t, lo_c, hi_c)  # (m, G0+1, Gv, F)
        err = ((cand - pos[sl, None, None]) ** 2).sum(-1).reshape(len(p_grid), -1)
        best = np.argpartition(err, k - 1, axis=1)[:, :k]                      # (m, k) grid indices
        p0[sl] = np.take_along_axis(p_grid, best // len(v_grid), axis=1)
        v[sl] = v_grid[best % len(v_grid)]
    # Refine all M·k candidates at once: row r·k + j is candidate j of row r.
    p0_r, v_r, err = _refine(np.repeat(pos, k, axis=0), t, p0.reshape(-1), v.reshape(-1),
                             np.repeat(lo, k), np.repeat(hi, k))
    pick = err.reshape(num_m, k).argmin(1)
    p0 = p0_r.reshape(num_m, k)[np.arange(num_m), pick]
    v = v_r.reshape(num_m, k)[np.arange(num_m), pick]
    path = reflect(p0[:, None] + v[:, None] * t, lo[:, None], hi[:, None])
    return path, p0, v
