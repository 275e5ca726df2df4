"""Semigroup defect of a few-step student (docs/method.md §4; our definition, the paper's formula is unpublished).

D = E[ ‖Ψ^{t_s→t_e}(x) - Ψ^{t_m→t_e}(Ψ^{t_s→t_m}(x))‖ / ‖Ψ^{t_s→t_e}(x) - x‖ ] over consecutive grid
triplets (s_k, s_{k+1}, s_{k+2}) at real rollout states x, with the Euler operator
Ψ^{a→b}(x) = x - (σ_a - σ_b)·v(x, a). Norms per sample over all non-batch dims. The caller's
`velocity_fn(x, sigma) -> v` owns the model, its KV cache and chunk position.
"""
import torch

from ..validate import check_sigmas


def _grid_index(sigma: float, grid: torch.Tensor) -> int:
    """Index of `sigma` in the grid (tolerance 1e-6), or a ValueError naming the grid."""
    hits = (grid - sigma).abs() < 1e-6
    if not hits.any():
        raise ValueError(f"state sigma={sigma}: not a point of the grid {grid.tolist()}; "
                         f"pass the rollout states at the grid's noise levels")
    return int(hits.nonzero()[0, 0])


@torch.no_grad()
def semigroup_defects(velocity_fn, states, sigmas=None) -> torch.Tensor:
    """Per-triplet, per-sample defects (T, B) float64 for rollout `states` [(σ, x (B, ...)), ...].

    Each state at grid point s_k with two further grid points gives the triplet (s_k, s_{k+1}, s_{k+2}).
    `sigmas`: the grid SIGMAS (K+1,) ending with 0; default = the states' σ (descending) followed by 0.
    """
    states = list(states)
    if not states:
        raise ValueError("states=[]: expected rollout states [(sigma, x), ...] at the grid levels")
    if sigmas is None:
        levels = [float(s) for s, _ in states]
        if any(b >= a for a, b in zip(levels, levels[1:])) or levels[-1] <= 0:
            raise ValueError(f"state sigmas {levels}: expected strictly decreasing positive levels, "
                             f"or pass the grid as sigmas=")
        grid = torch.tensor(levels + [0.0], dtype=torch.float64)
    else:
        grid = check_sigmas(sigmas, where="semigroup_defects")
    rows = []
    for sigma, x in states:
        k = _grid_index(float(sigma), grid)
        if k + 2 >= grid.numel():
            continue                                             # needs two further grid points
        ss, sm, se = (grid[k + j].item() for j in range(3))
        rows.append(state_defects(velocity_fn, x, ss, [(sm, se)])[0])
    if not rows:
        raise ValueError(f"no state has two further grid points on {grid.tolist()}: "
                         f"pass states at σ ≥ the third-to-last grid level")
    return torch.stack(rows)


@torch.no_grad()
def state_defects(velocity_fn, x: torch.Tensor, sigma_s: float, targets) -> torch.Tensor:
    """Defects (T, B) float64 of the triplets (σ_s, σ_m, σ_e) for each (σ_m, σ_e) in `targets`, all at the state
    x (B, ...) at σ_s, with one velocity evaluation at x shared by every triplet (σ_s > σ_m > σ_e ≥ 0)."""
    targets = [(float(sm), float(se)) for sm, se in targets]
    if not targets or any(not sigma_s > sm > se >= 0 for sm, se in targets):
        raise ValueError(f"targets={targets} at sigma_s={sigma_s}: expected (sigma_m, sigma_e) pairs with "
                         f"sigma_s > sigma_m > sigma_e >= 0")
    xd = x.double()
    v_s = velocity_fn(x, sigma_s).double()                       # shared by every Ψ^{s→e} and Ψ^{s→m}
    rows = []
    for sm, se in targets:
        direct = xd - (sigma_s - se) * v_s
        x_m = xd - (sigma_s - sm) * v_s
        composed = x_m - (sm - se) * velocity_fn(x_m.to(x.dtype), sm).double()
        gap = (direct - composed).flatten(1).norm(dim=1)         # (B,)
        step = (direct - xd).flatten(1).norm(dim=1)              # (B,)
        rows.append(gap / step.clamp_min(1e-12))
    return torch.stack(rows)


def semigroup_defect(velocity_fn, states, sigmas=None) -> float:
    """The semigroup defect D (float): mean of semigroup_defects over triplets and samples."""
    return semigroup_defects(velocity_fn, states, sigmas).mean().item()
