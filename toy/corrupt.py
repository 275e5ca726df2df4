"""Known corruptions of toy-world clips, each aimed at one oracle metric (for validating the metrics).

blur → sharpness, noise → sharpness, freeze → dynamic degree, recolour → prompt adherence,
background flicker → flicker, collapse → diversity (Fréchet), jitter → motion smoothness.
All are deterministic given their seed. Knows nothing of models or of the metrics themselves.
"""
from dataclasses import replace
import numpy as np
import torch
import torch.nn.functional as F

from .world import ToyWorldConfig, reflect, render, render_centres, trajectory


def blur(videos: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian-blur every frame of videos (B, 3, F, H, W) spatially (reflect padding)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    num_b, c, num_f, h, w = videos.shape
    frames = videos.permute(0, 2, 1, 3, 4).reshape(num_b * num_f * c, 1, h, w)  # (B·F·3, 1, H, W)
    frames = F.conv2d(F.pad(frames, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    frames = F.conv2d(F.pad(frames, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return frames.reshape(num_b, num_f, c, h, w).permute(0, 2, 1, 3, 4).contiguous()


def freeze(videos: torch.Tensor) -> torch.Tensor:
    """Repeat the first frame of videos (B, 3, F, H, W) over all F frames."""
    return videos[:, :, :1].expand_as(videos).clone()


def add_noise(videos: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Videos (B, 3, F, H, W) plus Gaussian noise of `std`, clamped to [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return (videos + std * torch.randn(videos.shape, generator=gen)).clamp(-1, 1)


def pure_noise(shape: tuple, seed: int = 0) -> torch.Tensor:
    """Standard Gaussian noise of `shape` (B, 3, F, H, W) clamped to [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).clamp(-1, 1)


def recolour(cfg: ToyWorldConfig, params_list: list, num_frames: int | None = None) -> torch.Tensor:
    """Render each clip with its sprite in the next palette colour (captions keep the old one)."""
    names = cfg.colour_names
    if len(names) < 2:
        raise ValueError(f"recolour needs a palette of >= 2 colours; this world has {list(names)}")
    swapped = [replace(p, colour=names[(names.index(p.colour) + 1) % len(names)]) for p in params_list]
    return render(cfg, swapped, num_frames)


def background_flicker(cfg: ToyWorldConfig, videos: torch.Tensor, params_list: list, amplitude: float = 0.15,
                       seed: int = 0) -> torch.Tensor:
    """Shift the background pixels of each frame by a random brightness in ±amplitude (sprite untouched)."""
    bgs = cfg.background_tensor()
    bg = torch.stack([bgs[cfg.background_names.index(p.background)] for p in params_list])   # (B, 3)
    is_bg = ((videos - bg[:, :, None, None, None]).abs().amax(1, keepdim=True) < 1e-6)        # (B, 1, F, H, W)
    gen = torch.Generator().manual_seed(seed)
    shift = amplitude * (2 * torch.rand(videos.shape[0], 1, videos.shape[2], 1, 1, generator=gen) - 1)
    return (videos + shift * is_bg).clamp(-1, 1)


def collapse(videos: torch.Tensor) -> torch.Tensor:
    """A batch (B, 3, F, H, W) whose clips all equal the first one."""
    return videos[:1].expand_as(videos).clone()


def jitter(cfg: ToyWorldConfig, params_list: list, std: float = 1.0, seed: int = 0,
           num_frames: int | None = None) -> torch.Tensor:
    """Render clips with Gaussian per-frame offsets (std px) added to their centres, kept inside the frame."""
    rng = np.random.default_rng(seed)
    cents = []
    for p in params_list:
        path = trajectory(cfg, p, num_frames) + rng.normal(0.0, std, size=(num_frames or cfg.num_frames, 2))
        (lx, hx), (ly, hy) = cfg.bounds(p.shape)
        cents.append(reflect(path, np.array([lx, ly]), np.array([hx, hy])))
    return render_centres(cfg, params_list, np.stack(cents))
