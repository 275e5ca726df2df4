"""Distribution matching (DMD, docs/method.md §1): the generator's DMD loss, the critic's flow loss, score timesteps.

Notation (docs/method.md §0): x_t = (1-σ)·x + σ·ε, t = 1000·σ, velocity v = ε - x0.
Every loss here takes the networks' predictions as tensors: the caller runs the teacher (real score),
the critic (fake score) and the student. Knows nothing of models, caches or rollouts.
"""
import torch

from ..denoiser import apply_cfg
from ..schedules import shift_sigma


def _sample_shape_check(name: str, tensor: torch.Tensor, like: torch.Tensor, like_name: str = "x"):
    """Raise a ValueError naming `name` when `tensor` does not have `like`'s shape."""
    if tensor.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}: expected the shape of {like_name} "
                         f"{tuple(like.shape)}; pass predictions made at the same x_t as {like_name}")


def _per_sample(value, like: torch.Tensor) -> torch.Tensor:
    """A scalar, (B,) or broadcastable value as float64 shaped to broadcast against `like` (B, ...)."""
    v = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    if v.ndim == 1 and like.ndim > 1 and v.shape[0] == like.shape[0]:
        v = v.view(-1, *([1] * (like.ndim - 1)))  # (B,) -> (B, 1, ..., 1)
    return v


def _non_batch_dims(x: torch.Tensor) -> tuple:
    """All dims but the first, for per-sample reductions."""
    return tuple(range(1, x.ndim))


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Rectified-flow loss mean((v_pred - (ε - x0))²) in float32; all inputs (B, ...) of one shape."""
    _sample_shape_check("noise", noise, x0, "x0")
    _sample_shape_check("v_pred", v_pred, x0, "x0")
    return (v_pred.float() - (noise.float() - x0.float())).pow(2).mean()


def sample_dmd_timesteps(batch: int, generator: torch.Generator = None, shift: float = 5.0,
                         min_t: float = 20.0, max_t: float = 980.0) -> torch.Tensor:
    """Score-network timesteps t (B,) float64: u ~ U{0..999}, t = 1000·shift(u/1000), clamped to [min_t, max_t].

    As Self Forcing: one integer draw per sample on the unshifted 1000-step grid, then the flow shift
    (docs/method.md §1). Pass a seeded `generator` for reproducible draws; its device is used.
    """
    if batch < 1:
        raise ValueError(f"batch={batch}: expected a positive number of samples")
    if not 0 <= min_t <= max_t <= 1000:
        raise ValueError(f"min_t={min_t}, max_t={max_t}: expected 0 <= min_t <= max_t <= 1000")
    device = generator.device if generator is not None else None
    u = torch.randint(0, 1000, (batch,), generator=generator, device=device).to(torch.float64)
    return (1000.0 * shift_sigma(u / 1000.0, shift)).clamp(min_t, max_t)


def real_x0_with_cfg(x0_cond: torch.Tensor, x0_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Standard-form classifier-free guidance on x0 predictions: uncond + g·(cond - uncond), float64.

    Self Forcing / CausVid write `cond + g_SF·(cond - uncond)`, which is this with g = g_SF + 1
    (Self Forcing's guidance_scale 3.0 is standard CFG 4.0; docs/method.md §1).
    """
    _sample_shape_check("x0_uncond", x0_uncond, x0_cond, "x0_cond")
    return apply_cfg(x0_cond.double(), x0_uncond.double(), guidance_scale)


class DMDLoss:
    """Generator DMD loss (DMD eq. 7-8 as Self Forcing): L = 0.5·mean((x - sg(x - grad))²), float64.

    grad = (x0_fake - x0_real) / mean_{non-batch}|x - x0_real| (per sample), so ∂L/∂x = grad / N with
    N = x.numel(): backprop moves the generator along -grad without differentiating the score networks.
    """

    def __init__(self, guidance_scale: float = 4.0, normaliser_min: float = 1e-5):
        """guidance_scale: STANDARD CFG scale g of the real score (Self Forcing's 3.0 → 4.0);
        normaliser_min: lower clamp on the per-sample normaliser (rCM uses 1e-5)."""
        if normaliser_min <= 0:
            raise ValueError(f"normaliser_min={normaliser_min}: expected a small positive float such as 1e-5")
        self.guidance_scale = float(guidance_scale)
        self.normaliser_min = float(normaliser_min)

    def __call__(self, x: torch.Tensor, x0_real_cond: torch.Tensor, x0_real_uncond: torch.Tensor,
                 x0_fake: torch.Tensor):
        """(loss float64 scalar, stats) for the student sample x (B, ...) WITH grad and the teacher's cond /
        uncond and the critic's x0 predictions (B, ...), all made at one noised x_t of x.

        A non-finite score (NaN/±inf in grad) contributes zero: such entries carry no direction, and
        Self Forcing's plain nan_to_num would turn +inf into float max and overflow the loss.
        """
        _sample_shape_check("x0_real_cond", x0_real_cond, x)
        _sample_shape_check("x0_real_uncond", x0_real_uncond, x)
        _sample_shape_check("x0_fake", x0_fake, x)
        x64 = x.double()
        with torch.no_grad():
            real = real_x0_with_cfg(x0_real_cond.detach(), x0_real_uncond.detach(), self.guidance_scale)
            dims = _non_batch_dims(x64)
            normaliser = (x64.detach() - real).abs().mean(dim=dims, keepdim=True).clamp_min(self.normaliser_min)
            grad = (x0_fake.detach().double() - real) / normaliser           # (B, ...)
            nonfinite = ~torch.isfinite(grad)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        loss = 0.5 * (x64 - (x64 - grad).detach()).pow(2).mean()
        stats = {
            "dmd_loss": loss.item(),
            "dmd_grad_norm": grad.abs().mean().item(),        # mean |grad|, Self Forcing's logged "gradient norm"
            "dmd_normaliser": normaliser.mean().item(),
            "dmd_nonfinite_frac": nonfinite.double().mean().item(),
        }
        return loss, stats


def critic_flow_loss(x0_fake_pred: torch.Tensor, x_t: torch.Tensor, x_student_detached: torch.Tensor,
                     noise: torch.Tensor, sigma) -> torch.Tensor:
    """Fake-score (critic) flow loss as Self Forcing: v_fake = (x_t - x0_fake)/σ, L = mean((v_fake - (ε - x))²).

    Tensors are (B, ...) of one shape, x_t = (1-σ)·x + σ·ε; σ is a scalar, (B,) or broadcastable, > 0.
    Algebra: v_fake - (ε - x) = ((1-σ)x + σε - x0_fake)/σ - ε + x = (x - x0_fake)/σ, so this is the x0
    regression mean((x - x0_fake)²/σ²), i.e. an x0 loss weighted by 1/σ² (heavier at low noise).
    The x0→v conversion is done in float64, the mean in float32.
    """
    _sample_shape_check("x_t", x_t, x0_fake_pred, "x0_fake_pred")
    _sample_shape_check("x_student_detached", x_student_detached, x0_fake_pred, "x0_fake_pred")
    _sample_shape_check("noise", noise, x0_fake_pred, "x0_fake_pred")
    s = _per_sample(sigma, x_t)
    if (s <= 0).any():
        raise ValueError(f"sigma={sigma}: expected noise levels > 0 (the critic is trained on noised samples)")
    v_fake = ((x_t.double() - x0_fake_pred.double()) / s).float()
    target = noise.float() - x_student_detached.detach().float()
    return (v_fake - target).pow(2).mean()
