"""Shared test helpers: closeness with a useful report, tiny inputs."""
import torch

# Shipped workflows that use core nodes of newer ComfyUI only (0.16+): the server and browser tests skip them, saying
# why, where ComfyUI lacks those nodes (0.3.75); the 0.33 line runs them.
NEEDS_CORE_NODES = {"salt_wan_ar_side_by_side.json": ("SamplerARVideo", "EmptyARVideoLatent")}


def missing_core_nodes(name: str, object_info: dict) -> list:
    """The core nodes workflow `name` needs (NEEDS_CORE_NODES) that a server's /object_info lacks."""
    return [n for n in NEEDS_CORE_NODES.get(name, ()) if n not in object_info]


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


def brute_force_rollout(model, noise, ctx, sigmas, chunk, generator=None, switches=None, window=None,
                        exit_index=None, step_noise=None):
    """Chunk-by-chunk few-step generation without a cache, written out by hand: each forward re-runs the clean
    history (t=0) plus the current chunk with a frame mask built pair by pair.

    Per chunk, steps i = 0..exit (default: the last step, σ_{i+1} = 0) and the chunk's output is the x0 of the
    exit step. Between steps x = (1-σ')·x0 + σ'·ε with ε = step_noise(chunk, i, x) (default: a fresh draw from
    `generator`, in the streamer's order), or the Euler step x0 + (σ'/σ)·(x - x0) when step_noise returns None.
    `switches` {chunk: context} changes prompt; with `window`, a switch re-caches only the last `window` frames.
    """
    switches = switches or {}
    B, C, F, H, W = noise.shape
    tokens = (H // model.cfg.patch_size[1]) * (W // model.cfg.patch_size[2])
    clean, sig = [], [float(s) for s in sigmas]
    last = len(sig) - 2 if exit_index is None else exit_index
    origin = 0
    for c in range(F // chunk):
        if c in switches:
            ctx = switches[c]
            if window is not None:
                origin = max(0, c * chunk - window)
        x = noise[:, :, c * chunk:(c + 1) * chunk]
        for i in range(last + 1):
            hist = torch.cat(clean[origin // chunk:] + [x], 2) if clean else x
            nf = hist.shape[2]
            frame_t = torch.zeros(B, nf, dtype=torch.float64)
            frame_t[:, -chunk:] = 1000 * sig[i]
            allow = torch.zeros(nf, nf, dtype=torch.bool)
            for q in range(nf):
                allow[q, : (q // chunk + 1) * chunk] = True
            mask = allow.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)
            v = model(hist, frame_t, ctx, attn_mask=mask, start_frame=origin)[:, :, -chunk:]
            x0 = (x.double() - sig[i] * v.double()).float()
            if i == last:
                x = x0
                break
            eps = torch.randn(x.shape, generator=generator) if step_noise is None else step_noise(c, i, x)
            if eps is None:
                x = (x0.double() + sig[i + 1] / sig[i] * (x.double() - x0.double())).float()
            else:
                x = ((1 - sig[i + 1]) * x0.double() + sig[i + 1] * eps.double()).float()
        clean.append(x)
    return torch.cat(clean, 2)


def tiny_taehv_state_dict(seed: int = 4) -> dict:
    """Random weights for ComfyUI's own TAEHV class with 16 latent channels in fp32 (what ComfyUI's VAE detection
    reads as a Wan 2.1 tiny decoder, lighttaew2_1): biases small, weights N(0, 1/fan_in)."""
    from comfy_import import import_comfy
    import_comfy()
    from comfy.taesd.taehv import TAEHV
    shapes = {k: v.shape for k, v in TAEHV(latent_channels=16).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    return {key: (0.1 * torch.randn(shape, generator=g) if key.endswith("bias") else
                  torch.randn(shape, generator=g) / (shape.numel() / shape[0]) ** 0.5) for key, shape in shapes.items()}


def tiny_wan_vae_state_dict(dim: int = 8, seed: int = 3) -> dict:
    """Random weights for ComfyUI's own Wan 2.1 VAE class (its keys are what ComfyUI's VAE detection reads).

    ComfyUI builds its layers without initialising them, so every tensor is drawn here: RMS-norm gains 1,
    biases 0, weights N(0, 1/fan_in).
    """
    from comfy_import import import_comfy
    import_comfy()
    from comfy.ldm.wan.vae import WanVAE
    shapes = {k: v.shape for k, v in WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                             temperal_downsample=[False, True, True]).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("gamma"):
            out[key] = torch.ones(shape)
        elif key.endswith("bias"):
            out[key] = torch.zeros(shape)
        else:
            out[key] = torch.randn(shape, generator=g) / (shape.numel() / shape[0]) ** 0.5
    return out
