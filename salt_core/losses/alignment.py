"""Cache-conditioned feature alignment (docs/method.md §3): the spatial token-relation hinge loss.

The caller noises the student output (with grad) and the reference rollout (detached) to one t_f with a
shared ε, runs both through the frozen teacher and hands over the tokens after a middle block. Per latent
frame the tokens' cosine matrix G_f (S×S) is compared; no cross-frame terms. Knows nothing of models.
"""
import torch
import torch.nn.functional as F
from einops import rearrange

from ..schedules import shift_sigma


def sample_alignment_timesteps(batch: int, generator: torch.Generator = None, shift: float = 5.0,
                               min_t: float = 20.0, max_t_raw: int = 200) -> torch.Tensor:
    """Alignment timesteps t_f (B,) float64: u ~ U{0..max_t_raw-1}, t = 1000·shift(u/1000) (≈ [0, 555)), clamped ≥ min_t.

    Integer draws on the unshifted 1000-step grid, as the DMD score timesteps (sample_dmd_timesteps).
    """
    if batch < 1:
        raise ValueError(f"batch={batch}: expected a positive number of samples")
    if not 0 < max_t_raw <= 1000:
        raise ValueError(f"max_t_raw={max_t_raw}: expected an integer in 1..1000 (raw, unshifted units)")
    device = generator.device if generator is not None else None
    u = torch.randint(0, int(max_t_raw), (batch,), generator=generator, device=device).to(torch.float64)
    return (1000.0 * shift_sigma(u / 1000.0, shift)).clamp_min(min_t)


def _per_frame_tokens(features: torch.Tensor, frames, name: str) -> torch.Tensor:
    """Features (B, F, S, dim), or (B, F·S, dim) with `frames` = F, as (B, F, S, dim)."""
    if features.ndim == 4:
        if frames is not None and frames != features.shape[1]:
            raise ValueError(f"frames={frames}: {name} is (B, F, S, dim) with F={features.shape[1]}; "
                             f"pass frames=None or the matching count")
        return features
    if features.ndim == 3:
        if frames is None or frames < 1 or features.shape[1] % frames:
            raise ValueError(f"{name} has shape {tuple(features.shape)} (B, L, dim) and frames={frames!r}: "
                             f"expected frames to divide L = F·S; pass frames=F (latent frames)")
        return rearrange(features, "b (f s) d -> b f s d", f=frames)
    raise ValueError(f"{name} has shape {tuple(features.shape)}: expected (B, F, S, dim) or (B, F·S, dim)")


def token_relations(features: torch.Tensor) -> torch.Tensor:
    """Per-frame cosine matrices G (B, F, S, S) in float32 of token features (B, F, S, dim)."""
    tokens = F.normalize(features.float(), dim=-1)                       # (B, F, S, dim), unit rows
    return tokens @ tokens.transpose(-1, -2)                             # (B, F, S, S)


class FeatureAlignmentLoss:
    """L_align = mean(ReLU(|G_f^stu - G_f^ref| - δ)) over batch, frames and token pairs (docs/method.md §3).

    Returned UNWEIGHTED; the caller adds `self.weight · L_align` (0.1). The reference is detached, so
    gradients reach only the student features; differences within ±δ cost nothing.
    """

    def __init__(self, delta: float = 0.1, weight: float = 0.1):
        """delta: hinge margin δ on cosine differences; weight: the loss weight, exposed for the caller."""
        if delta < 0:
            raise ValueError(f"delta={delta}: expected a margin >= 0 (the release uses 0.1)")
        self.delta = float(delta)
        self.weight = float(weight)

    def __call__(self, student: torch.Tensor, reference: torch.Tensor, frames: int = None):
        """(loss float32 scalar, stats) for student / reference tokens (B, F, S, dim), or (B, F·S, dim) with `frames`."""
        stu = _per_frame_tokens(student, frames, "student")
        ref = _per_frame_tokens(reference.detach(), frames, "reference")
        if stu.shape != ref.shape:
            raise ValueError(f"reference tokens {tuple(ref.shape)} differ from student tokens {tuple(stu.shape)}: "
                             f"take both features at the same block for latents of the same size")
        diff = (token_relations(stu) - token_relations(ref)).abs()      # (B, F, S, S)
        loss = F.relu(diff - self.delta).mean()
        with torch.no_grad():
            stats = {"align_loss": loss.item(), "align_mean_abs_diff": diff.mean().item(),
                     "align_active_frac": (diff > self.delta).float().mean().item()}
        return loss, stats
