"""Exact posterior of the lab world's clean frames given frames noised at per-frame levels.

Observation model (rectified flow, docs/method.md §0): y_f = a_f·x0_f + σ_f·ε_f, a_f = 1 - σ_f, one
level σ_f per frame: σ = 0 is a clean (teacher-forced) frame, σ = 1 carries no information (an
unobserved frame), so one formula covers the bidirectional denoiser, the causal conditional
p(chunk | clean past) and marginals over any frame subset. Per mode, y ~ N(a∘m, V Vᵀ + diag(d))
with V = a∘U and d_f = a_f²τ² + σ_f²; Woodbury and the determinant lemma keep everything at rank r:
    M = I + Vᵀ diag(d)⁻¹ V,  w = Vᵀ diag(d)⁻¹ (y - a∘m),  α = M⁻¹ w,
    E[x0 | y, k] = (σ²/d)∘(m + U α) + (τ² a/d)∘y,   log N(y) from rᵀ d⁻¹ r - wᵀα and log det M.
Per-frame Gram matrices UᵀU are cached by the world, so the cost is O(B·K·n·D·r). Float64 throughout.
Knows nothing of models, caches or captions beyond the prior log π (B, K).
"""
from dataclasses import dataclass
import math

import torch


@dataclass
class Posterior:
    """What the exact posterior gives for observations y (B, n, D)."""
    x0: torch.Tensor          # (B, n, D) E[x0 | y] under the mixture
    log_weight: torch.Tensor  # (B, K) log p(k | y), normalised
    log_evidence: torch.Tensor  # (B,) log p(y) (nats, all n·D dims)
    alpha: torch.Tensor       # (B, K, r) E[z | y, k]


def posterior(world, y: torch.Tensor, sigma: torch.Tensor, positions, log_prior: torch.Tensor) -> Posterior:
    """Exact posterior for y (B, n, D) at levels sigma (B, n) in [0, 1], frames at absolute `positions` (n,).

    log_prior (B, K): log π per mode (-inf excludes a mode), e.g. `world.log_prior(caption)`.
    Samples are grouped by their set of possible modes, so a caption costs only its own modes.
    """
    y = y.double()
    sigma = sigma.double().to(y.device)
    B, n, D = y.shape
    if sigma.shape != (B, n):
        raise ValueError(f"posterior: sigma of shape {tuple(sigma.shape)}; expected (B, n) = {(B, n)}")
    if len(positions) != n or len(set(int(p) for p in positions)) != n:
        raise ValueError(f"posterior: positions {list(positions)} must be {n} distinct frame indices")
    log_prior = log_prior.double().to(y.device)
    K, r = world.num_modes, world.cfg.rank
    out = Posterior(torch.empty_like(y), torch.full((B, K), -math.inf, dtype=y.dtype, device=y.device),
                    torch.empty(B, dtype=y.dtype, device=y.device), torch.zeros(B, K, r, dtype=y.dtype, device=y.device))
    active = torch.isfinite(log_prior)
    for row in active.unique(dim=0):
        idx = (active == row).all(1).nonzero().view(-1)
        modes = row.nonzero().view(-1).cpu()
        part = _posterior_modes(world, y[idx], sigma[idx], list(positions), log_prior[idx][:, modes.to(y.device)], modes)
        out.x0[idx] = part.x0
        out.log_evidence[idx] = part.log_evidence
        out.log_weight[idx.view(-1, 1), modes.to(y.device).view(1, -1)] = part.log_weight
        out.alpha[idx.view(-1, 1), modes.to(y.device).view(1, -1)] = part.alpha
    return out


def _posterior_modes(world, y, sigma, positions, log_prior, modes) -> Posterior:
    """The posterior over the modes `modes` (K',) only; log_prior (B, K'), all finite."""
    B, n, D = y.shape
    tau2 = world.cfg.tau ** 2
    mean, Uf, gram, um, mm = (t.to(y.device) for t in world.block(positions, modes))
    K, r = mean.shape[0], gram.shape[-1]
    a = 1.0 - sigma
    d = a ** 2 * tau2 + sigma ** 2                                     # (B, n) per-frame noise variance
    yn = y.transpose(0, 1)                                             # (n, B, D)
    uy = torch.bmm(yn, Uf).view(n, B, K, r).permute(1, 2, 0, 3)        # (B, K, n, r)
    ym = torch.einsum("bnd,knd->bkn", y, mean)                         # (B, K, n)
    yy = y.pow(2).sum(-1)                                              # (B, n)
    w = torch.einsum("bn,bknr->bkr", a / d, uy) - torch.einsum("bn,knr->bkr", a ** 2 / d, um)
    M = torch.eye(r, dtype=y.dtype, device=y.device) + torch.einsum("bn,knrq->bkrq", a ** 2 / d, gram)
    L = torch.linalg.cholesky(M)                                       # (B, K, r, r)
    alpha = torch.cholesky_solve(w.unsqueeze(-1), L).squeeze(-1)       # (B, K, r)
    quad = (((yy.unsqueeze(1) - 2 * a.unsqueeze(1) * ym + (a ** 2).unsqueeze(1) * mm) / d.unsqueeze(1)).sum(-1)
            - (w * alpha).sum(-1))                                     # (B, K)
    logdet = D * d.log().sum(-1, keepdim=True) + 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
    loglik = -0.5 * (quad + logdet + n * D * math.log(2 * math.pi))    # (B, K)
    joint = log_prior + loglik
    evidence = torch.logsumexp(joint, dim=1)
    log_weight = joint - evidence.unsqueeze(1)
    pi = log_weight.exp()                                              # (B, K)
    coef = (pi.unsqueeze(-1) * alpha).reshape(1, B, K * r).expand(n, B, K * r)
    mixed = torch.einsum("bk,knd->bnd", pi, mean) + torch.bmm(coef, Uf.transpose(1, 2)).transpose(0, 1)
    x0 = (sigma ** 2 / d).unsqueeze(-1) * mixed + (tau2 * a / d).unsqueeze(-1) * y
    return Posterior(x0, log_weight, evidence, alpha)


def clean_posterior(world, x: torch.Tensor, positions, log_prior: torch.Tensor) -> Posterior:
    """Posterior of clean frames x (B, n, D) (σ = 0 everywhere): exact mode weights and likelihood."""
    return posterior(world, x, torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device), positions, log_prior)
