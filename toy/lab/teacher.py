"""The exact teacher: the lab world's closed-form velocity behind WanModel's forward signature, so
samplers, rollouts, ScoreNet (both kinds), CFG and the semigroup metric run on it unchanged.

`forward(x, t, context, ...)` returns v = (x - E[x0 | what the frames may see]) / σ per frame:
- no mask: every frame sees every frame (the bidirectional teacher), at per-frame levels t (B,) or
  (B, F); frame positions are `start_frame + arange(F)` or `frame_positions`;
- `block_causal` or a token `attn_mask` (the teacher-forcing layout of salt_core.scorenet): each
  query frame is denoised given exactly the frames its mask row lets it see (at their own levels;
  clean copies at t = 0 are exact conditioning). This is the conditional a perfect masked network
  computes; rows are decoded at the frame level (mask[::T, ::T], T = tokens per frame);
- `cache` (a `FrameCache` from `new_cache`): the chunk is denoised given the frames the cache's
  policy lets it attend to — the frames shown in cache-writing forwards, at the level they were
  shown (clean context writes at t = 0 are exact conditioning, `context_noise` > 0 is a noisy
  observation, handled exactly too). `write_cache=True` stores the chunk; the last write of a frame
  wins, as with WanModel's K/V. Positions are absolute frames even with `relative_rope` (the world
  is defined by absolute frame index; a rolling window marginalises the evicted frames).
At σ = 0 the velocity is returned as 0 (x0 = x exactly). No features (`return_features_at`), no
gradients wanted (it has no parameters). Captions are contexts from `LabWorld.encode`.
Knows nothing of samplers, losses or files.
"""
import torch
import torch.nn as nn

from ...salt_core.config import WanConfig, get_config
from ...salt_core.kv_cache import CachePolicy, KVCache
from .posterior import posterior
from .world import LabWorld


class FrameCache(KVCache):
    """A KVCache's policy and bookkeeping (window, sink, order checks) holding frames instead of K/V:
    frames (B, S, D) float64 and their noise levels (B, S) per slot."""

    def __init__(self, batch: int, frame_dim: int, policy: CachePolicy, device="cpu"):
        super().__init__(0, batch, 1, 1, 1, policy, torch.float64, device)   # no layers: bookkeeping only
        self.frames = torch.zeros(batch, policy.capacity_frames, frame_dim, dtype=torch.float64, device=device)
        self.levels = torch.ones(batch, policy.capacity_frames, dtype=torch.float64, device=device)
        self.batch = batch


class ExactTeacher(nn.Module):
    """Closed-form velocity of a LabWorld with WanModel's call signature (see the module docstring)."""

    def __init__(self, world: LabWorld, cfg: WanConfig = None):
        super().__init__()
        self.world = world
        self.cfg = cfg if cfg is not None else get_config("toy")   # shapes only: in_dim, patch, text dims
        if self.cfg.in_dim != 3 or self.cfg.out_dim != 3:
            raise ValueError(f"ExactTeacher: cfg has in_dim={self.cfg.in_dim}, out_dim={self.cfg.out_dim}; "
                             f"the lab world has 3 channels")

    def new_cache(self, batch: int, policy: CachePolicy, grid_hw: tuple, dtype=None, device=None,
                  memory_limit: int = None) -> FrameCache:
        """A FrameCache for `batch` clips of the world's frame size (`grid_hw` must match it); `memory_limit` is
        accepted for WanModel's signature (a frame cache of the lab's size is a few MiB)."""
        h, w = self.world.cfg.height, self.world.cfg.width
        if tuple(grid_hw) != (h, w):
            raise ValueError(f"ExactTeacher.new_cache: grid_hw={tuple(grid_hw)}; the lab world's frames are {(h, w)}")
        return FrameCache(batch, self.world.cfg.frame_dim, policy, device or "cpu")

    def forward(self, x, t, context, *, block_causal=None, attn_mask=None, cache: FrameCache = None,
                start_frame: int = 0, write_cache: bool = True, frame_positions: torch.Tensor = None,
                return_features_at: int = None):
        """Exact velocity v (B, 3, F, H, W) for x (B, 3, F, H, W), t (B,) or (B, F) in [0, 1000]."""
        if return_features_at is not None:
            raise ValueError("ExactTeacher: return_features_at is not supported (the exact teacher has no features)")
        B, C, num_f, H, W = x.shape
        wc = self.world.cfg
        if (C, H, W) != (3, wc.height, wc.width):
            raise ValueError(f"ExactTeacher: x of shape {tuple(x.shape)}; expected (B, 3, F, {wc.height}, {wc.width})")
        t = torch.as_tensor(t).reshape(B, -1).double().cpu()
        if t.shape[1] not in (1, num_f):
            raise ValueError(f"ExactTeacher: t of shape {tuple(t.shape)}; expected (B,) or (B, F={num_f})")
        sigma = (t / 1000.0).expand(B, num_f).clamp(0.0, 1.0)
        log_prior = self.world.log_prior(self.world.decode(context.detach().cpu()))
        y = self.world.to_frames(x.detach().cpu())                      # (B, F, D)
        if cache is not None:
            x0 = self._cached(y, sigma, log_prior, cache, int(start_frame), write_cache)
        else:
            positions = (list(range(start_frame, start_frame + num_f)) if frame_positions is None
                         else [int(p) for p in frame_positions.reshape(-1).tolist()])
            visible = None
            if block_causal is not None:
                visible = block_causal.frame_mask(num_f)
            elif attn_mask is not None:
                visible = self._frame_mask(attn_mask, num_f, H, W)
            x0 = self._masked(y, sigma, log_prior, positions, visible)
        s = sigma.unsqueeze(-1)
        v = torch.where(s > 0, (y - x0) / s.clamp_min(1e-300), torch.zeros_like(y))
        return self.world.to_video(v).to(device=x.device, dtype=x.dtype)

    def _frame_mask(self, attn_mask, num_f, H, W) -> torch.Tensor:
        ph, pw = self.cfg.patch_size[1:]
        T = (H // ph) * (W // pw)
        if attn_mask.shape != (num_f * T, num_f * T):
            raise ValueError(f"ExactTeacher: attn_mask of shape {tuple(attn_mask.shape)}; expected "
                             f"({num_f * T}, {num_f * T}) tokens for {num_f} frames of {T} tokens")
        return attn_mask[::T, ::T].cpu().bool()

    def _masked(self, y, sigma, log_prior, positions, visible):
        """x0 (B, F, D): every frame given all frames, or each query given its visible frames."""
        if visible is None:
            return posterior(self.world, y, sigma, positions, log_prior).x0
        out = torch.empty_like(y)
        rows = {}
        for q in range(y.shape[1]):
            rows.setdefault(tuple(visible[q].tolist()), []).append(q)
        for row, queries in rows.items():
            seen = [i for i, v in enumerate(row) if v]
            if not set(queries) <= set(seen):
                raise ValueError(f"ExactTeacher: frames {queries} may not see themselves in the mask")
            x0 = posterior(self.world, y[:, seen], sigma[:, seen], [positions[i] for i in seen], log_prior).x0
            out[:, queries] = x0[:, [seen.index(q) for q in queries]]
        return out

    def _cached(self, y, sigma, log_prior, cache: FrameCache, start: int, write: bool):
        """x0 (B, n, D) of a chunk at frames [start, start+n) given the frames its cache lets it see."""
        if not isinstance(cache, FrameCache) or cache.batch != y.shape[0]:
            raise ValueError(f"ExactTeacher: cache must be a FrameCache of batch {y.shape[0]} from new_cache; got "
                             f"{type(cache).__name__} of batch {getattr(cache, 'batch', '?')}")
        n = y.shape[1]
        step = cache.step(start, n, write)                              # validates order and window
        past = [f for f in cache._attended_frames(start + n) if f < start]
        slots = [cache.slot_of(f) for f in past]
        ys = torch.cat([cache.frames[:, slots], y], 1)
        ss = torch.cat([cache.levels[:, slots], sigma], 1)
        x0 = posterior(self.world, ys, ss, past + list(range(start, start + n)), log_prior).x0[:, len(past):]
        if write:
            cur = [cache.slot_of(f) for f in range(start, start + n)]
            cache.frames[:, cur] = y
            cache.levels[:, cur] = sigma
        step.commit()
        return x0
