"""Score networks for distillation: x0 predictions of noised student clips, bidirectional or
teacher-forced causal.

- `bidirectional` (Wan 2.1 teachers and critics, Self Forcing's setting): one forward over the
  whole noised clip with full attention.
- `teacher_forcing` (Causal Forcing's AR teacher; our toy teacher): the clip is fed as
  [clean context | noisy clip]; noisy chunk c sees the clean chunks < c and itself. With the
  student's own clean output as context this scores each chunk *given its past*, i.e. the
  conditional p(x_c | x_<c), whose KL terms sum to the KL of the whole clip (chain rule).
Knows nothing of losses, optimisers or ComfyUI.
"""
from functools import lru_cache

import torch

from .schedules import sigma_to_t, x0_from_velocity

KINDS = ("bidirectional", "teacher_forcing")


@lru_cache(maxsize=16)
def teacher_forcing_mask(num_frames: int, chunk: int, tokens: int) -> torch.Tensor:
    """Token mask (True = attend) over [clean frames 0..F-chunk-1 | noisy frames 0..F-1].

    The clean copy is block-causal among itself; noisy chunk c sees clean chunks < c and itself.
    The last clean chunk is dropped: no noisy chunk attends to it.
    """
    c = torch.arange(num_frames) // chunk
    cc = c[: num_frames - chunk]
    clean_clean = cc.view(-1, 1) >= cc.view(1, -1)
    noisy_clean = c.view(-1, 1) > cc.view(1, -1)
    noisy_noisy = c.view(-1, 1) == c.view(1, -1)
    top = torch.cat([clean_clean, torch.zeros(len(cc), num_frames, dtype=torch.bool)], 1)
    frames = torch.cat([top, torch.cat([noisy_clean, noisy_noisy], 1)], 0)
    return frames.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)


def teacher_forcing_forward(model, clean, noisy, t_noisy, context, chunk: int, features_at: int = None,
                            features_only: bool = False):
    """Velocity of the noisy clip (B, C, F, H, W) given clean context frames (B, C, F, H, W).

    t_noisy (B,) or (B, F). Returns v (B, C, F, H, W), and with `features_at=i` also the noisy
    copy's tokens after block i, (B, F·T, dim); with `features_only` (None, those tokens), later blocks not run.
    """
    B, _, F, H, W = noisy.shape
    ph, pw = model.cfg.patch_size[1:]
    tokens = (H // ph) * (W // pw)
    Fc = F - chunk
    t_noisy = t_noisy.reshape(B, -1).to(torch.float64)
    t_noisy = t_noisy.expand(B, F) if t_noisy.shape[1] == 1 else t_noisy
    t = torch.cat([torch.zeros(B, Fc, dtype=torch.float64, device=noisy.device), t_noisy], 1)
    pos = torch.cat([torch.arange(Fc), torch.arange(F)])
    mask = teacher_forcing_mask(F, chunk, tokens).to(noisy.device)
    out = model(torch.cat([clean[:, :, :Fc], noisy], 2), t, context, attn_mask=mask, frame_positions=pos,
                return_features_at=features_at, **({"features_only": True} if features_only else {}))
    if features_at is None:
        return out[:, :, Fc:]
    v, feats = out
    return (None if v is None else v[:, :, Fc:]), feats[:, Fc * tokens:]


class ScoreNet:
    """x0 predictions of a velocity model on noised clips, in one of KINDS."""

    def __init__(self, model, kind: str, chunk_frames: int = 3):
        if kind not in KINDS:
            raise ValueError(f"ScoreNet kind={kind!r}; expected one of {KINDS}")
        self.model, self.kind, self.chunk = model, kind, chunk_frames

    def velocity(self, x_t, sigma, context, clean=None, features_at=None, features_only=False):
        """v (B, C, F, H, W) at per-sample noise level sigma (B,); `clean` context for teacher forcing. With
        `features_at=i`: (v, tokens after block i); with `features_only` as well (None, tokens), sooner."""
        t = sigma_to_t(sigma)
        if self.kind == "bidirectional":   # features_only passed only when asked: the lab's exact teacher lacks it
            return self.model(x_t, t, context, return_features_at=features_at,
                              **({"features_only": True} if features_only else {}))
        if clean is None:
            raise ValueError("ScoreNet(teacher_forcing) needs `clean`: the clip's clean frames as context")
        return teacher_forcing_forward(self.model, clean, x_t, t, context, self.chunk, features_at, features_only)

    def x0(self, x_t, sigma, context, clean=None):
        """x0 prediction (B, C, F, H, W) in x_t's dtype (conversion in float64)."""
        v = self.velocity(x_t, sigma, context, clean)
        return x0_from_velocity(x_t, v, sigma.to(torch.float64).view(-1, 1, 1, 1, 1))
