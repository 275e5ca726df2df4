"""Wan's 3-axis rotary position embedding (time, height, width) as real cos/sin tables.

The head dim D is split into D/2 complex pairs: [D/2 - 2·(D/2)//3 (time), (D/2)//3 (height),
(D/2)//3 (width)], theta 10000, rotating *adjacent* channel pairs — the layout of original Wan
(`rope_params` / `rope_apply`) and of diffusers' `WanRotaryPosEmbed(repeat_interleave_real=True)`.
Knows nothing of caches: callers pass the frame positions they want.
"""
import torch


def rope_axis_pairs(head_dim: int) -> tuple:
    """Complex pairs per axis (time, height, width) for a head dim D (D=128 → (22, 21, 21))."""
    c = head_dim // 2
    return (c - 2 * (c // 3), c // 3, c // 3)


class RotaryTable:
    """Angle tables for positions 0..max_len-1 on each axis, computed once in float64."""

    def __init__(self, head_dim: int, max_len: int = 1024, theta: float = 10000.0):
        self.head_dim, self.max_len = head_dim, max_len
        self._recent = {}   # (positions, grid, device, dtype) -> (cos, sin): streams ask for the same few again
        self.axis_angles = []  # per axis (max_len, pairs) float64
        for pairs in rope_axis_pairs(head_dim):
            dim = 2 * pairs
            inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
            self.axis_angles.append(torch.outer(torch.arange(max_len, dtype=torch.float64), inv))

    def token_angles(self, frame_pos: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """Angles (F·Hp·Wp, D/2) float64 for tokens of frames at `frame_pos` (F,), row-major in (f, h, w)."""
        frame_pos = frame_pos.to(torch.long).cpu()
        top = max(int(frame_pos.max()) if frame_pos.numel() else 0, grid_h - 1, grid_w - 1)
        if top >= self.max_len or (frame_pos.numel() and int(frame_pos.min()) < 0):
            raise ValueError(
                f"RoPE position {top} is outside the table of length {self.max_len} (absolute frame "
                f"positions must stay below {self.max_len}); for long streaming use a rolling/sink cache "
                f"with relative_rope=True, which keeps positions inside the window")
        t_ang, h_ang, w_ang = self.axis_angles
        num_f = frame_pos.numel()
        parts = [
            t_ang[frame_pos].view(num_f, 1, 1, -1).expand(num_f, grid_h, grid_w, -1),
            h_ang[:grid_h].view(1, grid_h, 1, -1).expand(num_f, grid_h, grid_w, -1),
            w_ang[:grid_w].view(1, 1, grid_w, -1).expand(num_f, grid_h, grid_w, -1),
        ]
        return torch.cat(parts, dim=-1).reshape(num_f * grid_h * grid_w, -1)

    def cos_sin(self, frame_pos, grid_h, grid_w, device, dtype=torch.float32):
        """(cos, sin) each (L, D/2) in `dtype` on `device` for `apply_rope` (the last few kept: a stream's
        denoising steps reuse one chunk's positions, and rebuilding them is host work plus a copy)."""
        key = (tuple(torch.as_tensor(frame_pos).tolist()), grid_h, grid_w, str(device), dtype,
               torch.is_inference_mode_enabled())   # inference tensors must not reach autograd
        if key not in self._recent:
            ang = self.token_angles(frame_pos, grid_h, grid_w)
            if len(self._recent) >= 8:
                self._recent.pop(next(iter(self._recent)))
            self._recent[key] = (ang.cos().to(device, dtype), ang.sin().to(device, dtype))
        return self._recent[key]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x (B, N, L, D) by per-token angles (L, D/2); float32 math."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, N, L, D/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
