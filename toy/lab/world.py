"""The method lab's world: per-caption mixtures of low-rank Gaussians over clips, so every
denoiser, likelihood and metric is exact.

A clip (C=3, F, H, W) of caption c is drawn as: pick a mode k of caption c with probability
π_k|c; x0 = m_k + U_k z + τ·n, z ~ N(0, I_r), n ~ N(0, I). The mode is a blob of the caption's
colour on a flat background that starts at one of the caption's start points and moves one pixel a
frame in one of `directions`, on a torus (it wraps at the edges, so any number of frames is
defined and a rolling-cache rollout can run past the training length). Within a mode, the r
columns of U_k are blob-attached patterns (per-channel colour, sub-pixel shifts in x and y, width)
times smooth temporal functions (a constant and a cosine/sine pair of period `period_frames`): the
blob's colour, position and size vary smoothly and stay correlated across frames. Amplitudes span
large (colour) to small (width) so that few-step samplers, which keep only what the last noise
level still shows, lose a measurable part of the within-mode variance.

Layout: frames are handled as (n, D) with D = C·H·W per frame; `frame_basis` gives the per-frame
mean (K, D) and columns (K, D, r) at any absolute frame index. Captions are context tensors
(B, Lc, text_dim): row 0 holds a one-hot caption id, all zeros is the empty prompt (CFG).
Knows nothing of models, samplers or files.
"""
from dataclasses import dataclass
import math

import torch

from ...salt_core.config import strict_from_dict

LAB_SHIFT = 3.0   # the lab's timestep shift (the toy world's, so grids and teacher training match)

DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}
PATTERNS = ("red", "green", "blue", "shift_x", "shift_y", "width")   # blob-attached spatial patterns


@dataclass(frozen=True)
class LabWorldConfig:
    height: int = 16                 # H in pixels
    width: int = 16                  # W in pixels
    num_frames: int = 12             # F of a training clip (the world itself is defined at any frame)
    chunk_frames: int = 3            # frames per causal chunk
    colours: tuple = ((0.9, -0.6, -0.6), (-0.6, 0.9, -0.6), (-0.6, -0.6, 0.9), (0.8, 0.8, -0.6))  # one per caption
    background: float = -0.5         # flat background value, all channels
    starts_per_caption: int = 2      # seeded start points per caption
    directions: tuple = ("right", "down")   # every caption has starts × directions modes
    blob_std: float = 1.6            # Gaussian blob width in pixels
    speed: float = 1.0               # pixels per frame
    period_frames: float = 12.0      # period of the temporal cosine/sine pair
    # per-frame amplitude of each pattern in PATTERNS (unit-norm pattern per frame times this)
    amplitudes: tuple = (0.9, 0.9, 0.9, 0.45, 0.45, 0.25)
    tau: float = 0.05                # isotropic noise std (keeps the covariance full rank)
    min_start_distance: float = 4.0  # start points of one caption at least this far apart (torus px)
    seed: int = 0                    # seeds starts and mode weights

    def __post_init__(self):
        object.__setattr__(self, "colours", tuple(tuple(float(v) for v in c) for c in self.colours))
        object.__setattr__(self, "directions", tuple(str(d) for d in self.directions))
        object.__setattr__(self, "amplitudes", tuple(float(a) for a in self.amplitudes))
        if not self.colours or any(len(c) != 3 for c in self.colours):
            raise ValueError(f"LabWorldConfig.colours={self.colours}: expected one (r, g, b) per caption")
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise ValueError(f"LabWorldConfig.directions={self.directions}: expected some of {list(DIRECTIONS)}")
        if len(self.amplitudes) != len(PATTERNS):
            raise ValueError(f"LabWorldConfig.amplitudes has {len(self.amplitudes)} values; expected one per "
                             f"pattern {PATTERNS}")
        if self.tau <= 0 or self.blob_std <= 0 or self.starts_per_caption < 1:
            raise ValueError(f"LabWorldConfig: need tau > 0, blob_std > 0, starts_per_caption >= 1; got "
                             f"{self.tau}, {self.blob_std}, {self.starts_per_caption}")
        if self.num_frames % self.chunk_frames:
            raise ValueError(f"LabWorldConfig: num_frames={self.num_frames} is not a multiple of "
                             f"chunk_frames={self.chunk_frames}")

    @property
    def num_captions(self) -> int:
        return len(self.colours)

    @property
    def frame_dim(self) -> int:
        """D = C·H·W, pixels per frame."""
        return 3 * self.height * self.width

    @property
    def rank(self) -> int:
        """r: columns of U_k (patterns × temporal functions)."""
        return len(PATTERNS) * 3


LAB_WORLD_PRESETS = {
    "default": LabWorldConfig(),
    # Small enough for dense reference linear algebra in tests (D·F = 3·8·8·6 = 1152).
    "tiny": LabWorldConfig(height=8, width=8, num_frames=6, colours=((0.9, -0.6, -0.6), (-0.6, -0.6, 0.9)),
                           blob_std=1.2, min_start_distance=3.0),
}


def get_lab_world(name_or_dict) -> LabWorldConfig:
    """A LabWorldConfig from a preset name or a dict of fields (unknown keys rejected)."""
    if isinstance(name_or_dict, LabWorldConfig):
        return name_or_dict
    if isinstance(name_or_dict, dict):
        return strict_from_dict(LabWorldConfig, name_or_dict)
    if name_or_dict not in LAB_WORLD_PRESETS:
        raise KeyError(f"unknown lab world {name_or_dict!r}; choose one of {sorted(LAB_WORLD_PRESETS)}")
    return LAB_WORLD_PRESETS[name_or_dict]


class LabWorld:
    """The mixture's parameters (modes, weights) and its per-frame basis, float64 on CPU."""

    def __init__(self, cfg: LabWorldConfig | str = "default"):
        self.cfg = cfg = get_lab_world(cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        starts = []
        for _ in range(cfg.num_captions):
            pts = []
            while len(pts) < cfg.starts_per_caption:
                p = torch.rand(2, generator=gen, dtype=torch.float64) * torch.tensor([cfg.width, cfg.height])
                if all(self._torus_dist(p, q) >= cfg.min_start_distance for q in pts):
                    pts.append(p)
            starts.append(pts)
        caption, start, velocity = [], [], []
        for c in range(cfg.num_captions):
            for p in starts[c]:
                for d in cfg.directions:
                    caption.append(c)
                    start.append(p)
                    velocity.append(torch.tensor(DIRECTIONS[d], dtype=torch.float64) * cfg.speed)
        self.mode_caption = torch.tensor(caption)                     # (K,) caption of each mode
        self.mode_start = torch.stack(start)                          # (K, 2) (x, y) at frame 0
        self.mode_velocity = torch.stack(velocity)                    # (K, 2) px / frame
        w = 0.5 + torch.rand(len(caption), generator=gen, dtype=torch.float64)
        for c in range(cfg.num_captions):
            sel = self.mode_caption == c
            w[sel] = w[sel] / w[sel].sum()
        self.mode_weight = w                                          # (K,) π_k|c, sums to 1 per caption
        self._frames = {}                                             # frame index -> (mean (K, D), U (K, D, r))
        self._stats = {}                                              # frame index -> (UᵀU, Uᵀm, mᵀm)
        self._blocks = {}                                             # (positions, modes) -> block(...)

    def _torus_dist(self, p, q) -> float:
        size = torch.tensor([self.cfg.width, self.cfg.height], dtype=torch.float64)
        d = (p - q).abs()
        return float(torch.minimum(d, size - d).norm())

    @property
    def num_modes(self) -> int:
        return len(self.mode_caption)

    # -- per-frame basis -------------------------------------------------------------------------
    def frame_basis(self, frame: int):
        """(mean (K, D), U (K, D, r)) at absolute frame index `frame`, float64, cached."""
        if frame not in self._frames:
            self._frames[frame] = self._build_frame(frame)
        return self._frames[frame]

    def frame_stats(self, frame: int):
        """(UᵀU (K, r, r), Uᵀm (K, r), mᵀm (K,)) at absolute frame index `frame`, cached."""
        if frame not in self._stats:
            mean, U = self.frame_basis(frame)
            self._stats[frame] = (U.transpose(1, 2) @ U, torch.einsum("kdr,kd->kr", U, mean), mean.pow(2).sum(-1))
        return self._stats[frame]

    def _build_frame(self, f: int):
        cfg = self.cfg
        K, H, W = self.num_modes, cfg.height, cfg.width
        centre = self.mode_start + f * self.mode_velocity                            # (K, 2)
        xs = torch.arange(W, dtype=torch.float64) + 0.5
        ys = torch.arange(H, dtype=torch.float64) + 0.5
        dx = torch.remainder(xs.view(1, -1) - centre[:, :1] + W / 2, W) - W / 2       # (K, W) torus offsets
        dy = torch.remainder(ys.view(1, -1) - centre[:, 1:] + H / 2, H) - H / 2       # (K, H)
        dx, dy = dx.view(K, 1, W), dy.view(K, H, 1)
        s2 = cfg.blob_std ** 2
        g = torch.exp(-(dx ** 2 + dy ** 2) / (2 * s2))                                # (K, H, W)
        colour = torch.tensor(cfg.colours, dtype=torch.float64)[self.mode_caption]     # (K, 3)
        contrast = (colour - cfg.background).view(K, 3, 1, 1)
        mean = cfg.background + contrast * g.unsqueeze(1)                            # (K, 3, H, W)
        eye = torch.eye(3, dtype=torch.float64).view(1, 3, 3, 1, 1)
        spatial = [eye[:, c] * g.view(K, 1, H, W) for c in range(3)]                  # per-channel colour
        spatial += [contrast * (g * dx / s2).unsqueeze(1), contrast * (g * dy / s2).unsqueeze(1),
                    contrast * (g * (dx ** 2 + dy ** 2) / (s2 * cfg.blob_std)).unsqueeze(1)]
        phase = 2 * math.pi * f / cfg.period_frames
        temporal = (1.0, math.cos(phase), math.sin(phase))
        cols = []
        for pat, amp in zip(spatial, cfg.amplitudes):
            unit = pat.flatten(1) / pat.flatten(1).norm(dim=1, keepdim=True)          # (K, D)
            cols += [amp * phi * unit for phi in temporal]
        return mean.flatten(1), torch.stack(cols, -1)                                # (K, D), (K, D, r)

    def basis(self, positions, modes=None):
        """(mean (K, n, D), U (K, n, D, r)) at absolute frame indices `positions` (n,), `modes` (K',) only."""
        parts = [self.frame_basis(int(f)) for f in positions]
        mean, U = torch.stack([m for m, _ in parts], 1), torch.stack([u for _, u in parts], 1)
        return (mean, U) if modes is None else (mean[modes], U[modes])

    def block(self, positions, modes):
        """Everything the posterior needs at `positions` (n,) for `modes` (K',), cached (a few dozen
        recent blocks): mean (K', n, D), Uf (n, D, K'·r) laid out for per-frame matmuls, UᵀU (K', n, r, r),
        Uᵀm (K', n, r), mᵀm (K', n)."""
        key = (tuple(int(f) for f in positions), tuple(int(k) for k in modes))
        if key not in self._blocks:
            if len(self._blocks) >= 48:
                self._blocks.pop(next(iter(self._blocks)))
            mean, U = self.basis(key[0], list(key[1]))
            stats = [self.frame_stats(f) for f in key[0]]
            gram, um, mm = (torch.stack([st[i] for st in stats], 1)[list(key[1])] for i in range(3))
            Uf = U.permute(1, 2, 0, 3).flatten(2).contiguous()          # (n, D, K'·r)
            self._blocks[key] = (mean.contiguous(), Uf, gram, um, mm)
        return self._blocks[key]

    # -- priors ----------------------------------------------------------------------------------
    def log_prior(self, caption: torch.Tensor) -> torch.Tensor:
        """log π over all K modes per sample (B, K); caption (B,) long, -1 = empty prompt (all captions)."""
        caption = caption.reshape(-1).long()
        joint = (self.mode_weight / self.cfg.num_captions).log()                     # p(k) = p(c) p(k|c)
        cond = torch.where(self.mode_caption.view(1, -1) == caption.view(-1, 1),
                           self.mode_weight.log().view(1, -1), torch.tensor(-math.inf, dtype=torch.float64))
        return torch.where(caption.view(-1, 1) < 0, joint.view(1, -1), cond)

    # -- sampling ----------------------------------------------------------------------------------
    def sample(self, caption: torch.Tensor, num_frames: int = None, generator: torch.Generator = None,
               start_frame: int = 0):
        """Clips (B, 3, F, H, W) float64 and their modes (B,) for captions (B,) (-1 draws a caption too)."""
        cfg = self.cfg
        num_frames = num_frames or cfg.num_frames
        caption = caption.reshape(-1).long()
        B = caption.numel()
        probs = self.log_prior(caption).exp()                                        # (B, K)
        mode = torch.multinomial(probs, 1, generator=generator).view(-1)
        mean, U = self.basis(range(start_frame, start_frame + num_frames))          # (K, n, D), (K, n, D, r)
        z = torch.randn(B, cfg.rank, generator=generator, dtype=torch.float64)
        noise = torch.randn(B, num_frames, cfg.frame_dim, generator=generator, dtype=torch.float64)
        x = cfg.tau * noise
        for k in mode.unique().tolist():                                           # per mode: no (B, n, D, r) gather
            sel = mode == k
            x[sel] += mean[k] + torch.einsum("ndr,br->bnd", U[k], z[sel])
        return self.to_video(x), mode

    def to_video(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, D) → (B, 3, n, H, W)."""
        return x.unflatten(-1, (3, self.cfg.height, self.cfg.width)).transpose(1, 2)

    def to_frames(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, n, H, W) → (B, n, D) float64."""
        return video.transpose(1, 2).flatten(2).double()

    # -- captions as context tensors ---------------------------------------------------------------
    def encode(self, caption: torch.Tensor, text_len: int = 8, text_dim: int = 32) -> torch.Tensor:
        """Context (B, text_len, text_dim): row 0 one-hot caption id, all zeros for -1 (empty prompt)."""
        if text_dim < self.cfg.num_captions or text_len < 1:
            raise ValueError(f"LabWorld.encode: text_dim={text_dim} must be >= num_captions="
                             f"{self.cfg.num_captions} and text_len={text_len} >= 1")
        caption = caption.reshape(-1).long()
        out = torch.zeros(caption.numel(), text_len, text_dim)
        keep = caption >= 0
        out[keep.nonzero().view(-1), 0, caption[keep]] = 1.0
        return out

    def decode(self, context: torch.Tensor) -> torch.Tensor:
        """Caption ids (B,) from contexts made by `encode` (-1 for the empty prompt)."""
        head = context[:, 0, :self.cfg.num_captions].double()
        rest = context.double().clone()
        rest[:, 0, :self.cfg.num_captions] = 0
        is_onehot = ((head == 0) | (head == 1)).all(1) & (head.sum(1) <= 1)
        if not bool(is_onehot.all()) or bool(rest.abs().amax() > 0):
            raise ValueError("LabWorld.decode: context is not a lab caption (row 0 one-hot over the "
                             f"{self.cfg.num_captions} captions or all zeros, nothing else); build it with "
                             "LabWorld.encode")
        return torch.where(head.sum(1) > 0, head.argmax(1), torch.full_like(head[:, 0], -1).long())


class LabTextEncoder:
    """Caption ids → lab contexts with ToyTextEncoder's interface (encode / empty / __call__), so a
    job written for the sprite world's captions runs on the lab's."""

    def __init__(self, world: LabWorld, text_dim: int = 32, max_tokens: int = 8):
        self.world, self.text_dim, self.max_tokens = world, text_dim, max_tokens

    def encode(self, captions, device=None, dtype=torch.float32) -> torch.Tensor:
        """Contexts (B, max_tokens, text_dim) for caption ids (a list or (B,) tensor; -1 = empty)."""
        ids = torch.as_tensor(captions, dtype=torch.long).reshape(-1)
        return self.world.encode(ids, self.max_tokens, self.text_dim).to(device=device, dtype=dtype)

    def empty(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """All-zero contexts (B, max_tokens, text_dim): the empty prompt."""
        return torch.zeros(batch, self.max_tokens, self.text_dim, device=device, dtype=dtype)

    def __call__(self, captions, device=None, dtype=torch.float32) -> torch.Tensor:
        return self.encode(captions, device=device, dtype=dtype)
