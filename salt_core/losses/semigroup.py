"""SC-DMD (docs/method.md §2): the triplet rule and the semigroup (self-consistency) regulariser.

The exact flow satisfies Φ^{t_s→t_e} = Φ^{t_m→t_e} ∘ Φ^{t_s→t_m}; the student's one-step Euler operator
Ψ^{a→b}(x) = x - (σ_a - σ_b)·v_θ(x, a) generally does not, and L_SC penalises the gap at the on-policy
rollout state x_{t_s}. Grids are k-diffusion SIGMAS (K+1,) descending and ending with 0, so the end point
0 has index K. Knows nothing of models, KV caches or chunking: the caller supplies `velocity_fn`.
"""
from dataclasses import dataclass

import torch

from ..schedules import get_sigmas_fewstep
from ..validate import check_sigmas


def default_training_sigmas() -> torch.Tensor:
    """The warped 8-step training grid at shift 5 as SIGMAS (9,) float64: [1, .9722, …, .4167, 0]."""
    return get_sigmas_fewstep(8, 5.0)


@dataclass(frozen=True)
class Triplet:
    """One SC triplet t_s > t_m > t_e as grid indices into SIGMAS (K+1,) and their σ (e_index = K means σ_e = 0)."""
    s_index: int      # i, the exit step
    m_index: int
    e_index: int
    sigma_s: float
    sigma_m: float
    sigma_e: float


def _uniform_choice(options: list, generator: torch.Generator):
    """One element of `options`, uniformly, drawn with `generator` (identical on every seeded rank)."""
    device = generator.device if generator is not None else None
    k = torch.randint(0, len(options), (1,), generator=generator, device=device).item()
    return options[k]


def _sc_candidates(exit_index: int, sigmas, where: str):
    """(grid (K+1,), ends): the end indices sc_triplet chooses t_e from for exit step i (empty for i = K-1)."""
    s = check_sigmas(default_training_sigmas() if sigmas is None else sigmas, where=where)
    num_steps = s.numel() - 1                                    # K
    if not isinstance(exit_index, int) or not 0 <= exit_index < num_steps:
        raise ValueError(f"exit_index={exit_index!r}: expected an integer step index in 0..{num_steps - 1}")
    if exit_index == num_steps - 1:
        return s, []                                             # the last step has nothing below to compose
    ends = sorted(set(range(0, num_steps, 2)) | {num_steps})     # ascending index = descending σ
    return s, [k for k in ends if s[k] < s[exit_index + 1]][:2]  # the two largest allowed ends


def sc_triplet(exit_index: int, generator: torch.Generator = None, sigmas=None):
    """The SC triplet for exit step i on grid SIGMAS s_0 > … > s_{K-1} > s_K = 0, or None when i = K-1.

    docs/method.md §2: t_s = s_i; candidate ends are the every-other grid points {s_0, s_2, …} ∪ {0}
    (the 4-step inference grid ∪ {0} for K = 8); keep those strictly below s_{i+1}; t_e is uniform
    among the two largest; t_m is uniform among grid points with t_e < s_k < t_s.
    `sigmas` defaults to the warped 8-step grid at shift 5; pass another grid for other shifts.
    """
    s, ends = _sc_candidates(exit_index, sigmas, "sc_triplet")
    if not ends:
        return None
    e = _uniform_choice(ends, generator)
    m = _uniform_choice(list(range(exit_index + 1, e)), generator)
    return Triplet(exit_index, m, e, s[exit_index].item(), s[m].item(), s[e].item())


def sc_triplet_distribution(exit_index: int, sigmas=None) -> list:
    """Every triplet sc_triplet can draw for exit step i, with its probability: [(Triplet, p), ...] summing to 1
    ([] when i = K-1, where SC does not act). What L_SC trains at that exit, for measuring the defect there."""
    s, ends = _sc_candidates(exit_index, sigmas, "sc_triplet_distribution")
    out = []
    for e in ends:
        mids = range(exit_index + 1, e)
        for m in mids:
            trip = Triplet(exit_index, m, e, s[exit_index].item(), s[m].item(), s[e].item())
            out.append((trip, 1.0 / (len(ends) * len(mids))))
    return out


class SemigroupLoss:
    """L_SC = mean_batch[(1 - σ_s)·mean((x̂_e - x̄_e)²)] (docs/method.md §2), returned UNWEIGHTED.

    The caller adds `self.weight · L_SC` (λ_SC = 0.2) to L_DMD. Direct branch (with grad):
    x̂_e = x_s - (σ_s - σ_e)·v1. Composed branch: x_m = x_s - (σ_s - σ_m)·sg(v1), v2 = v_θ(x_m, t_m)
    under no_grad, x̄_e = x_m - (σ_m - σ_e)·v2 — all stop-grad (the released code). With
    symmetric=True (the paper's reading) x_m uses v1 with grad and v2 is computed with grad.
    """

    def __init__(self, weight: float = 0.2, symmetric: bool = False):
        """weight: λ_SC, exposed for the caller (not applied here); symmetric: gradients through both branches."""
        self.weight = float(weight)
        self.symmetric = bool(symmetric)

    def __call__(self, x_s: torch.Tensor, v1: torch.Tensor, velocity_fn, triplet: Triplet):
        """(unweighted L_SC float64 scalar, stats) for the rollout state x_s (B, ...) at σ_s and v1 = v_θ(x_s, t_s)
        (B, ...) WITH grad; `velocity_fn(x_m, sigma_m) -> v2` (B, ...) runs the model at t_m = 1000·σ_m with
        the same KV cache and chunk position (x_m in x_s's dtype, sigma_m a float).
        """
        if not isinstance(triplet, Triplet):
            raise TypeError(f"triplet={triplet!r}: expected a Triplet from sc_triplet(); skip SC when it is None")
        if x_s.ndim < 2:
            raise ValueError(f"x_s has shape {tuple(x_s.shape)}: expected (B, ...) with at least one non-batch dim")
        if v1.shape != x_s.shape:
            raise ValueError(f"v1 has shape {tuple(v1.shape)}: expected the shape of x_s {tuple(x_s.shape)}")
        ss, sm, se = triplet.sigma_s, triplet.sigma_m, triplet.sigma_e
        v1d, x_sd = v1.double(), x_s.double()
        if self.symmetric:
            x_m = (x_sd - (ss - sm) * v1d).to(x_s.dtype)
            v2 = velocity_fn(x_m, sm)
        else:
            x_m = (x_sd - (ss - sm) * v1d).detach().to(x_s.dtype)
            with torch.no_grad():
                v2 = velocity_fn(x_m, sm)
        if v2.shape != x_s.shape:
            raise ValueError(f"velocity_fn returned shape {tuple(v2.shape)}: expected x_s's shape {tuple(x_s.shape)}")
        # x̂_e - x̄_e with the x_s terms cancelled analytically; same value and gradient as the two-branch
        # form, and exactly 0 when v2 == v1 bitwise (no rounding from subtracting large x_s terms):
        #   symmetric: (σ_m - σ_e)(v2 - v1)
        #   default:   (σ_m - σ_e)(v2 - v1) + (σ_s - σ_m)(sg(v1) - v1) + (x_s - sg(x_s))
        residual = (sm - se) * (v2.double() - v1d)                                              # (B, ...)
        if not self.symmetric:
            residual = residual + (ss - sm) * (v1d.detach() - v1d) + (x_sd - x_sd.detach())
        dims = tuple(range(1, residual.ndim))
        per_sample = residual.pow(2).mean(dim=dims)                                            # (B,)
        loss = ((1.0 - ss) * per_sample).mean()
        with torch.no_grad():
            step = ((ss - se) * v1d).flatten(1).norm(dim=1).clamp_min(1e-12)                    # ‖x̂_e - x_s‖
            rel = (residual.flatten(1).norm(dim=1) / step).mean()
        stats = {"sc_loss": loss.item(), "sc_rel_defect": rel.item(),
                 "sc_sigma_s": ss, "sc_sigma_m": sm, "sc_sigma_e": se}
        return loss, stats
