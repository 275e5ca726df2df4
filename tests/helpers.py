"""Shared test helpers: closeness with a useful report, tiny inputs."""
import torch


def assert_close(actual, expected, rtol=1e-5, what=""):
    """Relative max error (max|a-e| / max|e|) ≤ rtol; the message reports max and mean errors."""
    diff = (actual.double() - expected.double()).abs()
    scale = expected.double().abs().max().clamp_min(1e-12)
    rel = (diff.max() / scale).item()
    assert rel <= rtol, f"{what} relative max error {rel:.3e} > {rtol:.1e} (max abs {diff.max():.3e}, mean abs {diff.mean():.3e})"
    return rel


def tiny_inputs(cfg, batch=2, frames=6, hw=(8, 8), seed=0):
    """Random latent (B, C, F, H, W) and text context (B, Lc, text_dim)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_dim, frames, *hw, generator=g)
    ctx = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    return x, ctx
