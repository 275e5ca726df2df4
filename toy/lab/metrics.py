"""Exact, two-sided metrics of generated lab clips against the lab world (pure functions).

- mode assignment: argmax of the exact posterior p(k | clip, caption) (`assign_modes`);
- coverage: ‖p - π_c‖₂ between the mode frequencies p of the clips' source (assigned modes) and
  the true π_k|c, per caption, weighted by clips (0 = the data's weights);
- within-mode variance ratio: in each mode's whitened coordinates w = C^(-1/2) ẑ, ẑ = (UᵀU + τ²I)⁻¹Uᵀ(x - m_k),
  C = (UᵀU + τ²I)⁻¹UᵀU the data's exact Cov(ẑ) (so w ~ N(0, I_r)), the clips' unbiased sample
  variance per mode (mean over pairs of different clips, so bootstrap duplicates do not bias it)
  divided by the data's, pooled over modes — 1 = data, < 1 over-smoothed, > 1 noisy;
- per-mode mean error: RMS over pixels of E[x | assigned k] - m_k, pooled;
  coverage and mean error are estimated from pairs of different clips (U-statistics), so neither
  has a sampling floor that grows as clips get fewer, and bootstrap intervals are not biased by it;
- log-likelihood per dimension (nats; rewards under-dispersion, never report it alone);
- mode switches: each chunk's mode from its own frames (the chunk's exact marginal); a clip
  switches if consecutive chunks disagree — the same function measures drift along a long
  rolling-cache rollout (absolute frame positions from `start_frame`);
- the semigroup defect of any velocity model through salt_core.metrics.semigroup (`semigroup_hook`).
Clips are (B, 3, F, H, W) at absolute frames start_frame..; captions (B,) long ids (no -1 here).
Knows nothing of models or samplers (except the semigroup hook's callable).
"""
import torch

from ...salt_core.denoiser import FlowDenoiser
from .posterior import clean_posterior


def _check_captions(world, caption):
    caption = caption.reshape(-1).long()
    if (caption < 0).any() or (caption >= world.cfg.num_captions).any():
        raise ValueError(f"lab metrics: captions {caption.unique().tolist()} must be ids in "
                         f"[0, {world.cfg.num_captions}) (metrics are per caption)")
    return caption


def assign_modes(world, video, caption, start_frame: int = 0):
    """(mode (B,), log p(k | clip, caption) (B, K), log p(clip | caption) (B,)) by the exact posterior."""
    caption = _check_captions(world, caption)
    x = world.to_frames(video)
    post = clean_posterior(world, x, range(start_frame, start_frame + x.shape[1]), world.log_prior(caption))
    return post.log_weight.argmax(1), post.log_weight, post.log_evidence


def chunk_modes(world, video, caption, chunk_frames: int = None, start_frame: int = 0) -> torch.Tensor:
    """Mode of every chunk from its own frames, (B, num_chunks) long."""
    chunk_frames = chunk_frames or world.cfg.chunk_frames
    num_f = video.shape[2]
    if num_f % chunk_frames:
        raise ValueError(f"chunk_modes: {num_f} frames is not a multiple of chunk_frames={chunk_frames}")
    cols = [assign_modes(world, video[:, :, f:f + chunk_frames], caption, start_frame + f)[0]
            for f in range(0, num_f, chunk_frames)]
    return torch.stack(cols, 1)


def mode_switches(modes: torch.Tensor) -> torch.Tensor:
    """Per clip, the number of chunk boundaries where the mode changes: modes (B, n) → (B,) long."""
    return (modes[:, 1:] != modes[:, :-1]).sum(1)


def _pair_mean(vectors: torch.Tensor, counts: torch.Tensor) -> float:
    """Mean of u_i·u_j over ordered pairs of *different* items, items repeated `counts` times; NaN if none.
    An unbiased estimate of |E u|² that no sampling floor inflates and bootstrap duplicates do not bias."""
    pairs = counts.sum() ** 2 - (counts ** 2).sum()
    if pairs <= 0:
        return float("nan")
    total = (counts[:, None] * vectors).sum(0)
    return ((total.pow(2).sum() - (counts ** 2 * vectors.pow(2).sum(1)).sum()) / pairs).item()


def coverage_error(world, mode, caption, counts: torch.Tensor = None) -> float:
    """Clip-weighted mean over captions of ‖p - π_c‖₂, p the true mode frequencies of the clips'
    source, estimated without sampling floor (pairs of different clips); 0 = the data's weights.
    `counts` (B,) repeats clips (a bootstrap draw)."""
    caption = _check_captions(world, caption)
    c = torch.ones(len(mode), dtype=torch.float64) if counts is None else counts.double()
    total = weight = 0.0
    for cap in caption.unique().tolist():
        sel = (caption == cap) & (c > 0)
        truth = torch.where(world.mode_caption == cap, world.mode_weight, torch.zeros_like(world.mode_weight))
        onehot = torch.nn.functional.one_hot(mode[sel], world.num_modes).double() - truth   # (n, K)
        sq = _pair_mean(onehot, c[sel])                                 # ‖p - π‖² without the floor
        if sq == sq:
            total += max(sq, 0.0) ** 0.5 * c[sel].sum().item()
            weight += c[sel].sum().item()
    return total / weight if weight else float("nan")


def _whitening(world, positions, k):
    """(m (nD,), W (r, nD)) for mode k at `positions`: w = W (x - m) is N(0, I_r) for the mode's data."""
    mean, U = world.basis(positions)
    m, Uk = mean[k].reshape(-1), U[k].reshape(-1, U.shape[-1])          # (nD,), (nD, r)
    gram = Uk.T @ Uk
    G = gram + world.cfg.tau ** 2 * torch.eye(gram.shape[0], dtype=gram.dtype)
    C = torch.linalg.solve(G, gram)                                     # Cov(ẑ) of the data, ẑ = G⁻¹Uᵀ(x - m)
    evals, evecs = torch.linalg.eigh(0.5 * (C + C.T))
    inv_sqrt = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    return m, inv_sqrt @ torch.linalg.solve(G, Uk.T)


def whitened_coordinates(world, video, mode, start_frame: int = 0) -> torch.Tensor:
    """Per clip w = C^(-1/2) ẑ in its mode's coordinates (B, r); the mode's data has w ~ N(0, I_r)."""
    x = world.to_frames(video).flatten(1)                               # (B, nD)
    positions = range(start_frame, start_frame + video.shape[2])
    out = torch.empty(x.shape[0], world.cfg.rank, dtype=torch.float64)
    for k in mode.unique().tolist():
        sel = mode == k
        m, W = _whitening(world, positions, k)
        out[sel] = (x[sel] - m) @ W.T
    return out


def within_mode_variance(w: torch.Tensor, mode: torch.Tensor, counts: torch.Tensor = None) -> float:
    """Pooled within-mode variance ratio of whitened coordinates w (B, r): 1 = data.

    Per mode, the mean over pairs of *different* clips of |w_i - w_j|² / 2r (the unbiased sample
    variance), pooled over modes by pair counts. `counts` (B,) repeats clips (a bootstrap draw)
    without the downward bias of duplicated clips. NaN if no mode has two clips.
    """
    c = torch.ones(w.shape[0], dtype=torch.float64) if counts is None else counts.double()
    num = den = 0.0
    for k in mode.unique().tolist():
        sel = (mode == k) & (c > 0)
        ck, wk = c[sel], w[sel]
        n = ck.sum()
        pairs = n ** 2 - (ck ** 2).sum()
        if pairs <= 0:
            continue
        num += (n * (ck * wk.pow(2).sum(1)).sum() - (ck[:, None] * wk).sum(0).pow(2).sum()).item() / w.shape[1]
        den += pairs.item()
    return num / den if den else float("nan")


def mode_residuals(world, video, start_frame: int = 0) -> torch.Tensor:
    """Per clip and mode, x - m_k over all pixels: (B, K, nD) float64 (the input of the per-mode mean error)."""
    x = world.to_frames(video).flatten(1)
    mean = torch.stack([world.frame_basis(f)[0] for f in range(start_frame, start_frame + video.shape[2])], 1)
    return x[:, None] - mean.flatten(1)[None]


def residual_gram(world, video, mode, start_frame: int = 0) -> torch.Tensor:
    """G (B, B) float64, G_ij = (x_i - m_{k_i})·(x_j - m_{k_j}): all `mode_mean_error_gram` needs of the clips."""
    r = mode_residuals(world, video, start_frame)[torch.arange(len(mode)), mode]
    return r @ r.T


def mode_mean_error_gram(gram, mode, dims: int, counts: torch.Tensor = None) -> float:
    """`mode_mean_error` from the residual Gram matrix (B, B) of `residual_gram` and the pixels per clip `dims`."""
    c = torch.ones(len(mode), dtype=torch.float64) if counts is None else counts.double()
    gram = torch.as_tensor(gram, dtype=torch.float64)
    total = weight = 0.0
    for k in mode.unique().tolist():
        sel = ((mode == k) & (c > 0)).nonzero().view(-1)
        ck, g = c[sel], gram[sel][:, sel]
        pairs = ck.sum() ** 2 - (ck ** 2).sum()
        if pairs <= 0:
            continue
        sq = ((ck @ g @ ck - (ck ** 2 * g.diagonal()).sum()) / pairs).item()
        total += max(sq / dims, 0.0) ** 0.5 * ck.sum().item()
        weight += ck.sum().item()
    return total / weight if weight else float("nan")


def mode_mean_error(world, video, mode, start_frame: int = 0, counts: torch.Tensor = None) -> float:
    """Clip-weighted mean over modes of the RMS over pixels of E[x | mode k] - m_k, estimated without
    sampling floor (pairs of different clips); 0 = the data's means. `counts` repeats clips."""
    return mode_mean_error_gram(residual_gram(world, video, mode, start_frame), mode, video[0].numel(), counts)


def evaluate_clips(world, video, caption, start_frame: int = 0) -> dict:
    """All exact metrics of clips (B, 3, F, H, W) for captions (B,): a dict of floats."""
    caption = _check_captions(world, caption)
    mode, _, log_evidence = assign_modes(world, video, caption, start_frame)
    switches = mode_switches(chunk_modes(world, video, caption, start_frame=start_frame))
    dims = video[0].numel()
    return {"var_ratio": within_mode_variance(whitened_coordinates(world, video, mode, start_frame), mode),
            "mean_err": mode_mean_error(world, video, mode, start_frame),
            "coverage": coverage_error(world, mode, caption),
            "switch_clips": int((switches > 0).sum()), "num_clips": int(caption.numel()),
            "loglik_per_dim": (log_evidence / dims).mean().item()}


def semigroup_hook(model, context):
    """velocity_fn(x, σ) -> v for salt_core.metrics.semigroup on a bidirectional velocity model."""
    return FlowDenoiser(model, context).velocity

