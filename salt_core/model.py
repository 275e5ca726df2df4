"""The Wan 2.1 video transformer (weight-compatible, original parameter names), three ways:

- bidirectional: every token sees every token (Wan 2.1 T2V);
- block-causal over a whole clip: `BlockCausal(chunk_frames, policy)` masks frames as the KV-cached
  stream with that CachePolicy would see them (training / teacher forcing);
- chunk by chunk on a `KVCache` (streaming inference and Self-Forcing rollouts).

Timesteps t are (B,) or per frame (B, F) (per-frame modulation, as Self Forcing's causal Wan).
The model predicts the flow velocity v = ε - x0 for latents x (B, C, F, H, W).
Knows nothing of files, layouts, samplers or ComfyUI.
"""
from dataclasses import dataclass
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .config import WanConfig
from .kv_cache import KVCache, CachePolicy, LayerStep
from .rope import RotaryTable, apply_rope
from .validate import check_context, check_latent


@dataclass(frozen=True)
class BlockCausal:
    """Block-causal attention over a whole clip, frame sets as a KV-cached stream with `policy` would attend
    (None or a full policy: every earlier frame; its max_frames does not limit a mask)."""
    chunk_frames: int = 3                  # frames generated per chunk (1 = frame-wise)
    policy: CachePolicy = None             # window W (incl. sink) and sink S of the stream

    def frame_mask(self, num_frames: int) -> torch.Tensor:
        """(F, F) bool, True where query frame may attend key frame."""
        f = torch.arange(num_frames)
        stop = (f // self.chunk_frames + 1) * self.chunk_frames  # end of each query's chunk
        q_stop, k = stop.view(-1, 1), f.view(1, -1)
        allow = k < q_stop
        p = self.policy
        if p is not None and p.window_frames != -1:
            ring = p.window_frames - p.sink_frames
            allow &= (k < p.sink_frames) | (k >= q_stop - ring)
        return allow


class RMSNorm(nn.Module):
    """Wan's RMSNorm over the full width (q/k norm), computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (Wan's WanLayerNorm)."""

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class Attention(nn.Module):
    """q/k/v/o projections with q/k RMSNorm (original Wan names: self_attn.* / cross_attn.*)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def heads(self, x):
        return rearrange(x, "b l (n d) -> b n l d", n=self.num_heads)

    def self_attention(self, x, cos, sin, mask=None, step: LayerStep = None, key_rope=None):
        """x (B, L, dim) → (B, L, dim); RoPE on q (and k); dense, masked or cached attention."""
        q = apply_rope(self.heads(self.norm_q(self.q(x))), cos, sin)  # (B, N, L, D)
        k = self.heads(self.norm_k(self.k(x)))
        v = self.heads(self.v(x))
        if step is not None and key_rope is not None:       # relative RoPE: K stored un-rotated
            k_all, v_all = step.keys_values(k, v)
            k_all = step.rotated_keys(k_all, *key_rope)
        else:
            k = apply_rope(k, cos, sin)
            k_all, v_all = (k, v) if step is None else step.keys_values(k, v)
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        return self.o(rearrange(out, "b n l d -> b l (n d)"))

    def cross_attention(self, x, context=None, kv=None):
        """x (B, L, dim) attends to embedded text context (B, Lc, dim) or cached (k, v)."""
        q = self.heads(self.norm_q(self.q(x)))
        if kv is None:
            kv = self.context_kv(context)
        out = F.scaled_dot_product_attention(q, *kv)
        return self.o(rearrange(out, "b n l d -> b l (n d)"))

    def context_kv(self, context):
        return self.heads(self.norm_k(self.k(context))), self.heads(self.v(context))


class WanBlock(nn.Module):
    """norm1 → self-attn (mod 0,1, gate 2) → norm3 → cross-attn → norm2 → FFN (mod 3,4, gate 5)."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(d, cfg.num_heads, cfg.eps)
        self.norm3 = LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = Attention(d, cfg.num_heads, cfg.eps)
        self.norm2 = LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)

    def context_kv(self, context):
        """The cross-attention's text keys and values (B, heads, Lc, head_dim) each: the block's entry for a KV
        cache's text cache, so a sharded block gathers its weights for it (FSDP2 forward method)."""
        return self.cross_attn.context_kv(context)

    def forward(self, x, e, frames, cos, sin, context=None, cross_kv=None, mask=None, step=None, key_rope=None):
        """x (B, L, dim) with L = F·T tokens; e (B, F, 6, dim) float32 per-frame modulation."""
        mod = (self.modulation.float().unsqueeze(0) + e).unbind(2)  # 6 × (B, F, dim)
        shift1, scale1, gate1, shift2, scale2, gate2 = (m.unsqueeze(2) for m in mod)  # (B, F, 1, dim)

        def per_frame(t):  # (B, L, dim) <-> (B, F, T, dim)
            return t.unflatten(1, (frames, -1))

        h = (per_frame(self.norm1(x)).float() * (1 + scale1) + shift1).flatten(1, 2).to(x.dtype)
        y = self.self_attn.self_attention(h, cos, sin, mask, step, key_rope)
        x = (per_frame(x).float() + per_frame(y).float() * gate1).flatten(1, 2).to(x.dtype)
        x = x + self.cross_attn.cross_attention(self.norm3(x), context, cross_kv)
        h = (per_frame(self.norm2(x)).float() * (1 + scale2) + shift2).flatten(1, 2).to(x.dtype)
        y = self.ffn(h)
        return (per_frame(x).float() + per_frame(y).float() * gate2).flatten(1, 2).to(x.dtype)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding: cat(cos, sin) of t·10000^(-k/(dim/2)), float64. t (...,) → (..., dim)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = t.to(torch.float64).unsqueeze(-1) * freqs
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


def fit_context(ctx: torch.Tensor, text_len: int) -> tuple:
    """Text features (B, L, D) → ((B, text_len, D), dropped): cut after `text_len` tokens, or zero-padded to it as
    Wan pads umT5's output. `dropped` is the most tokens cut from one row that hold any non-zero feature: the words of
    a text longer than Wan reads (an encoder's own zeroed padding is not counted), 0 when nothing is lost."""
    tail = ctx[:, text_len:]
    dropped = int((tail != 0).any(-1).sum(1).max()) if tail.shape[1] else 0
    ctx = ctx[:, :text_len]
    return F.pad(ctx, (0, 0, 0, text_len - ctx.shape[1])), dropped


class WanModel(nn.Module):
    """Wan 2.1 T2V transformer; parameter names are the original Wan names."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.rope = RotaryTable(cfg.head_dim, cfg.rope_max_len, cfg.rope_theta)
        self.gradient_checkpointing = False

    def init_weights(self):
        """Training-from-scratch init (Wan's recipe): xavier linears, zero biases, small embeddings, zero head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        return self

    # -- construction helpers ------------------------------------------------------------------
    def new_cache(self, batch: int, policy: CachePolicy, grid_hw: tuple, dtype=None, device=None,
                  memory_limit: int = None) -> KVCache:
        """A preallocated cache for latents whose (H, W) is `grid_hw` (in latent pixels); refused before
        allocating when larger than `memory_limit` bytes (default: the device's free memory).

        dtype: default the weights' dtype, or the autocast dtype where autocast is on for the cache's device (the
        dtype K and V are computed in there: bf16 training of fp32 weights keeps a bf16 cache, half the memory)."""
        p = self.cfg.patch_size
        tokens = (grid_hw[0] // p[1]) * (grid_hw[1] // p[2])
        ref = self.patch_embedding.weight
        device = torch.device(device) if device is not None else ref.device
        if dtype is None:
            dtype = torch.get_autocast_dtype(device.type) if _autocast_on(device.type) else ref.dtype
        return KVCache(self.cfg.num_layers, batch, self.cfg.num_heads, self.cfg.head_dim, tokens, policy,
                       dtype, device, memory_limit)

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Text features (B, Lc, text_dim) → (B, Lc, dim)."""
        return self.text_embedding(context.to(self.patch_embedding.weight.dtype))

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x, t, context, *, block_causal: BlockCausal = None, attn_mask=None,
                cache: KVCache = None, start_frame: int = 0, write_cache: bool = True,
                frame_positions: torch.Tensor = None, return_features_at: int = None, features_only: bool = False):
        """Velocity prediction.

        x (B, C, F, H, W); t (B,) or (B, F) in [0, 1000]; context (B, Lc, text_dim) text features.
        `block_causal` or a raw token mask `attn_mask` ((L, L) bool, True = attend) for full-clip
        forwards; or `cache` with this chunk's absolute `start_frame` for incremental ones
        (`write_cache` stores the chunk's K/V). Without a cache, `start_frame` offsets RoPE positions,
        or `frame_positions` (F,) sets them (teacher forcing: a clean and a noisy copy share positions). Returns v (B, C_out, F, H, W), and with
        `return_features_at=i` also the tokens (B, L, dim) after block i; with `features_only` as well, (None,
        tokens), the blocks after i and the head not run (a forward that writes a cache runs them all).
        """
        cfg = self.cfg
        check_latent("x", x, cfg.in_dim, where="WanModel", finite=False)   # shapes only: no sync per forward
        check_context("context", context, cfg.text_dim, where="WanModel", finite=False)
        B, C, num_f, H, W = x.shape
        pt, ph, pw = cfg.patch_size
        if C != cfg.in_dim or num_f % pt or H % ph or W % pw:
            raise ValueError(f"WanModel: latent of shape {tuple(x.shape)} does not fit in_dim={cfg.in_dim} "
                             f"and patch {cfg.patch_size}")
        gf, gh, gw = num_f // pt, H // ph, W // pw
        dtype = self.patch_embedding.weight.dtype
        # Patchify as a matmul: (B, C, F, H, W) -> (B, L, C·pt·ph·pw), then the conv weight as a linear map.
        patches = rearrange(x.to(dtype), "b c (f p) (h q) (w r) -> b (f h w) (c p q r)", p=pt, q=ph, r=pw)
        tokens = F.linear(patches, self.patch_embedding.weight.flatten(1), self.patch_embedding.bias)

        t = t.reshape(B, -1).to(x.device)
        if t.shape[1] not in (1, num_f):
            raise ValueError(f"WanModel: t of shape {tuple(t.shape)}; expected (B,) or (B, F={num_f})")
        t = t[:, ::pt] if t.shape[1] > 1 else t
        e = self.time_embedding(sinusoidal_embedding(t, cfg.freq_dim).to(dtype)).float()  # (B, Ft, dim)
        e_blocks = self.time_projection(e.to(dtype)).float().unflatten(-1, (6, cfg.dim))    # (B, Ft, 6, dim)
        if e_blocks.shape[1] == 1:
            e_blocks, e = e_blocks.expand(-1, gf, -1, -1), e.expand(-1, gf, -1)

        step, key_rope, mask = None, None, attn_mask
        if cache is not None:
            if pt != 1:
                raise ValueError("WanModel: KV-cached forward needs temporal patch size 1")
            step = cache.step(start_frame, gf, write_cache)
            positions = step.query_positions
            if cache.policy.relative_rope:
                key_rope = self.rope.cos_sin(step.rope_positions, gh, gw, x.device)
            cache.bind_context(context)
        else:
            positions = torch.arange(gf) + start_frame if frame_positions is None else frame_positions.cpu()
            if block_causal is not None:
                fm = block_causal.frame_mask(gf).to(x.device)
                mask = fm.repeat_interleave(gh * gw, 0).repeat_interleave(gh * gw, 1)
        cos, sin = self.rope.cos_sin(positions, gh, gw, x.device)

        ctx = None
        if cache is None or not cache.has_cross_kv:
            ctx = self.embed_text(context)
        features = None
        for i, block in enumerate(self.blocks):
            cross_kv = None if cache is None else cache.cross_kv(i, block.context_kv, ctx)
            layer_step = None if step is None else step.layer(i)
            args = (tokens, e_blocks, gf, cos, sin, ctx, cross_kv, mask, layer_step, key_rope)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                tokens = block(*args)
            if return_features_at == i:
                features = tokens
                if features_only and step is None:
                    return None, features
        if step is not None:
            step.commit()

        # Head: per-frame shift/scale from the time embedding e (B, F, dim).
        shift, scale = (self.head.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        h = self.head.norm(tokens).unflatten(1, (gf, -1)).float() * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)
        out = self.head.head(h.flatten(1, 2).to(dtype))
        v = rearrange(out, "b (f h w) (p q r c) -> b c (f p) (h q) (w r)", f=gf, h=gh, w=gw, p=pt, q=ph, r=pw)
        return (v, features) if return_features_at is not None else v


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for `device_type` (False for a type autocast does not know, e.g. meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def build_model(preset_or_config, dtype=torch.float32, device="cpu", seed: int = None) -> WanModel:
    """A randomly initialised WanModel from a preset name or a WanConfig (seeded if `seed` is given)."""
    from .config import get_config
    cfg = get_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = WanModel(cfg)
    else:
        model = WanModel(cfg)
    return model.to(device=device, dtype=dtype)
