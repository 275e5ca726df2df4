"""Animated previews of video batches (GIF via Pillow). Knows nothing of models."""
import numpy as np
import torch


def video_grid_frames(rows: dict, scale: int = 4, pad: int = 2) -> list:
    """{label: videos (B, 3, F, H, W) in [-1, 1]} → list of PIL frames, one row per label, clips side by side."""
    from PIL import Image
    labels = list(rows)
    num_f = max(v.shape[2] for v in rows.values())
    tiles = []
    for label in labels:
        v = rows[label].detach().float().clamp(-1, 1)
        v = torch.nn.functional.pad(v, (pad, pad, pad, pad), value=1.0)            # white separators
        row = torch.cat(list(v), dim=-1)                                          # (3, F, H', B·W')
        if row.shape[1] < num_f:                                                  # hold the last frame
            row = torch.cat([row, row[:, -1:].expand(-1, num_f - row.shape[1], -1, -1)], 1)
        tiles.append(row)
    width = max(t.shape[-1] for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=1.0) for t in tiles]
    grid = torch.cat(tiles, dim=-2)                                               # (3, F, rows·H', W)
    arr = ((grid.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    return [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in arr]


def save_gif(rows: dict, path: str, fps: int = 6, scale: int = 4) -> str:
    """Write an animated GIF of `video_grid_frames(rows)`; returns the path."""
    frames = video_grid_frames(rows, scale)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path
