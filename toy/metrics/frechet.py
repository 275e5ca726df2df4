"""Diversity / mode coverage: Fréchet distance between fitted clip parameters of two batches.

Each clip becomes a feature vector of its fitted parameters (one-hot colour, shape, direction and
background, mean speed, mean position); the Fréchet distance between the Gaussians fitted to two
sets of such vectors (generated vs real) is small when the generator covers the world's modes in
the right proportions and large for a collapsed batch. Knows nothing of models.
"""
import numpy as np
import torch

from ..world import DIRECTION_VECTORS, ToyWorldConfig, sample_batch
from .fit import SpriteFit, fit_sprites
from .oracle import _clip_mode, fitted_direction


def _one_hot(index: torch.Tensor, num: int) -> np.ndarray:
    """One-hot rows (B, num) of indices (B,); index -1 gives a zero row."""
    out = np.zeros((index.shape[0], num))
    rows = np.nonzero(index.numpy() >= 0)[0]
    out[rows, index.numpy()[rows]] = 1.0
    return out


def feature_names(cfg: ToyWorldConfig) -> list:
    """Names of the columns of `clip_features`."""
    return ([f"colour={n}" for n in cfg.colour_names] + [f"shape={n}" for n in cfg.shape_names]
            + [f"direction={n}" for n in DIRECTION_VECTORS] + [f"background={n}" for n in cfg.background_names]
            + ["speed_px", "x_mean/width", "y_mean/height"])


def clip_features(videos, cfg: ToyWorldConfig, fit: SpriteFit | None = None) -> np.ndarray:
    """Fitted-parameter features (B, D) float64 of videos (B, 3, F, H, W); columns in `feature_names`."""
    fit = fit_sprites(videos, cfg) if fit is None else fit
    speed = (fit.centre[:, 1:] - fit.centre[:, :-1]).norm(dim=-1).mean(1).double().numpy()
    mean_pos = fit.centre.mean(1).double().numpy() / np.array([cfg.width, cfg.height])
    return np.concatenate([
        _one_hot(_clip_mode(fit.colour_index, fit.present), len(cfg.palette)),
        _one_hot(_clip_mode(fit.shape_index, fit.present), len(cfg.shapes)),
        _one_hot(fitted_direction(fit, cfg), len(DIRECTION_VECTORS)),
        _one_hot(fit.background_index.mode(dim=1).values, len(cfg.backgrounds)),
        speed[:, None], mean_pos], axis=1)


def reference_features(cfg: ToyWorldConfig, n: int = 512, seed: int = 12345) -> np.ndarray:
    """Features (n, D) of n freshly sampled real clips, the reference for `frechet_distance`."""
    videos, _, _ = sample_batch(cfg, seed, n)
    return clip_features(videos, cfg)


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (D, D) by eigendecomposition (negatives clipped)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance ‖μa−μb‖² + tr(A + B − 2(A B)^½) between feature sets (Na, D) and (Nb, D).

    tr (A B)^½ is computed as tr (A^½ B A^½)^½, which has the same eigenvalues but is symmetric PSD,
    so numpy's `eigh` is stable and no scipy is needed.
    """
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance: feature sets have shapes {a.shape} and {b.shape}; expected "
                         "(Na >= 2, D) and (Nb >= 2, D) with the same D (use clip_features for both)")
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    tr_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    dist = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt
    return float(max(dist, 0.0))
