"""The toy world: procedural sprite videos whose every clip is described exactly by its params.

A clip is one sprite (square, disc or bar) of one palette colour on a flat dark or light
background, moving at constant speed left/right/up/down and bouncing off the frame edges.
Videos are float32 in [-1, 1], laid out (B, C=3, F, H, W) like a ComfyUI/diffusers video latent.

Coordinates: pixel (row i, column j) covers [j, j+1) × [i, i+1), so its centre is (j+0.5, i+0.5);
positions are (x, y) with y pointing down ("up" means decreasing y). A sprite centre moves in
[lo, hi] per axis with lo = half-extent and hi = size - half-extent, so the shape never leaves
the frame; a step that would cross a bound is reflected (a bounce).

Rendering is deterministic anti-aliasing by coverage: boxes (square, bar) use the exact overlap of
each pixel with the box; discs use the usual one-pixel distance ramp, coverage =
clip(r + 0.5 - |p - c|, 0, 1), whose total is within 3% of πr² depending on the sub-pixel offset.
With the default integer speed and pixel-centred starts, square and bar stay pixel-aligned (hard
edges) through bounces too (their bounds are half-integers); discs have soft rims and land
off-grid after a bounce.

Extending to two sprites: `_sprites_of` lists the sprites of a clip and `render_centres` composites
them in order; a second sprite needs a field in `ClipParams` and one more entry there.
Knows nothing of models, text encoders or metrics.
"""
from dataclasses import dataclass, replace
import numpy as np
import torch

from ..salt_core.config import TOY_SHIFT, strict_from_dict  # noqa: F401 (TOY_SHIFT: the world's shift, defined
                                                           # beside the toy model preset so training may read it)

DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SHAPE_KINDS = ("box", "disc")


@dataclass(frozen=True)
class ToyWorldConfig:
    height: int = 16                 # H: frame height in pixels
    width: int = 16                  # W: frame width in pixels
    num_frames: int = 12             # F: frames per clip
    speed: float = 1.0               # sprite speed in px/frame (before bounces)
    # (name, (r, g, b)) sprite colours in [-1, 1]; each contrasts with every background (≥ 1.5 L2)
    palette: tuple = (("red", (0.9, -0.8, -0.8)), ("green", (-0.8, 0.8, -0.8)),
                      ("blue", (-0.8, -0.6, 0.9)), ("yellow", (0.9, 0.8, -0.8)))
    # (name, (r, g, b)) flat background colours
    backgrounds: tuple = (("dark", (-0.7, -0.7, -0.7)), ("light", (0.7, 0.7, 0.7)))
    # (name, kind, half_width, half_height) in px; a disc's radius is its half_width
    shapes: tuple = (("square", "box", 2.5, 2.5), ("disc", "disc", 2.6, 2.6), ("bar", "box", 1.5, 3.5))
    directions: tuple = ("left", "right", "up", "down")  # initial directions to sample from
    clear_frames: int = 3            # frames 0..clear_frames-1 move without a bounce (direction is readable)
    subpixel_starts: bool = False    # False: start centres snapped to pixel centres (k + 0.5)

    def __post_init__(self):
        """Normalise sequences to tuples and reject impossible worlds with the field and a fix."""
        object.__setattr__(self, "palette", tuple((str(n), tuple(float(v) for v in c)) for n, c in self.palette))
        object.__setattr__(self, "backgrounds",
                           tuple((str(n), tuple(float(v) for v in c)) for n, c in self.backgrounds))
        object.__setattr__(self, "shapes", tuple((str(n), str(k), float(a), float(b)) for n, k, a, b in self.shapes))
        object.__setattr__(self, "directions", tuple(str(d) for d in self.directions))
        for label, names in (("palette", self.colour_names), ("backgrounds", self.background_names),
                             ("shapes", self.shape_names), ("directions", self.directions)):
            if not names or len(set(names)) != len(names):
                raise ValueError(f"ToyWorldConfig: {label} names {names} must be non-empty and unique")
        for d in self.directions:
            if d not in DIRECTION_VECTORS:
                raise ValueError(f"ToyWorldConfig: direction {d!r} unknown; expected some of {list(DIRECTION_VECTORS)}")
        for name, kind, hw, hh in self.shapes:
            if kind not in SHAPE_KINDS:
                raise ValueError(f"ToyWorldConfig: shape {name!r} has kind {kind!r}; expected one of {SHAPE_KINDS}")
            if kind == "disc" and hw != hh:
                raise ValueError(f"ToyWorldConfig: disc {name!r} needs half_width == half_height, got {hw}, {hh}")
            if not (0 < hw and 0 < hh and 2 * hw < self.width and 2 * hh < self.height):
                raise ValueError(f"ToyWorldConfig: shape {name!r} ({2*hw}×{2*hh} px) must fit inside "
                                 f"{self.width}×{self.height} with room to move; shrink it or enlarge the frame")
        if self.speed <= 0 or self.num_frames < 3 or self.clear_frames < 2:
            raise ValueError(f"ToyWorldConfig: need speed > 0, num_frames >= 3, clear_frames >= 2; got "
                             f"speed={self.speed}, num_frames={self.num_frames}, clear_frames={self.clear_frames}")
        run = self.speed * (self.clear_frames - 1)
        for name, _, hw, hh in self.shapes:
            if min(self.width - 2 * hw, self.height - 2 * hh) < run:
                raise ValueError(f"ToyWorldConfig: shape {name!r} cannot move {run} px before bouncing; "
                                 f"lower speed={self.speed} or clear_frames={self.clear_frames}")

    @property
    def colour_names(self) -> tuple:
        """Palette colour names in index order."""
        return tuple(n for n, _ in self.palette)

    @property
    def background_names(self) -> tuple:
        """Background names in index order."""
        return tuple(n for n, _ in self.backgrounds)

    @property
    def shape_names(self) -> tuple:
        """Shape names in index order."""
        return tuple(s[0] for s in self.shapes)

    def palette_tensor(self) -> torch.Tensor:
        """Sprite colours (P, 3) float32."""
        return torch.tensor([c for _, c in self.palette], dtype=torch.float32)

    def background_tensor(self) -> torch.Tensor:
        """Background colours (G, 3) float32."""
        return torch.tensor([c for _, c in self.backgrounds], dtype=torch.float32)

    def bounds(self, shape: str) -> tuple:
        """((lo_x, hi_x), (lo_y, hi_y)) range of the centre of `shape` so it stays inside the frame."""
        _, _, hw, hh = self.shapes[self.shape_index(shape)]
        return (hw, self.width - hw), (hh, self.height - hh)

    def shape_index(self, shape: str) -> int:
        """Index of a shape name, with an error listing the choices."""
        return _index(self.shape_names, shape, "shape")

    @classmethod
    def from_dict(cls, d: dict) -> "ToyWorldConfig":
        """Build from a dict, rejecting unknown keys by name."""
        return strict_from_dict(cls, d)


TOY_WORLD_PRESETS = {
    "default": ToyWorldConfig(),
    # Twice the speed: bounces happen within a 12-frame clip for most starts.
    "fast": ToyWorldConfig(speed=2.0),
    # One yellow square on dark moving right: a sanity / curriculum world.
    "sanity": ToyWorldConfig(palette=(("yellow", (0.9, 0.8, -0.8)),), backgrounds=(("dark", (-0.7, -0.7, -0.7)),),
                             shapes=(("square", "box", 2.5, 2.5),), directions=("right",)),
}


def sprite_world(name: str) -> ToyWorldConfig:
    """The ToyWorldConfig of a sprite-world preset, KeyError listing the choices (toy.worlds.get_world is the one
    lookup of a world by its name; this is its sprite half)."""
    if name not in TOY_WORLD_PRESETS:
        raise KeyError(f"unknown toy-world preset {name!r}; choose one of {sorted(TOY_WORLD_PRESETS)}")
    return TOY_WORLD_PRESETS[name]


@dataclass(frozen=True)
class ClipParams:
    shape: str                       # a name from cfg.shape_names
    colour: str                      # a name from cfg.colour_names
    background: str                  # a name from cfg.background_names
    start: tuple                     # (x, y) sprite centre at frame 0, px
    direction: str                   # initial direction: left / right / up / down
    speed: float = 1.0               # px/frame along `direction`

    def velocity(self) -> np.ndarray:
        """Initial velocity (2,) as (vx, vy) px/frame."""
        return np.asarray(DIRECTION_VECTORS[self.direction], dtype=np.float64) * self.speed


def _index(names: tuple, name: str, what: str) -> int:
    """Position of `name` in `names`, or a ValueError naming the choices."""
    if name not in names:
        raise ValueError(f"unknown {what} {name!r}; expected one of {list(names)}")
    return names.index(name)


def _as_generator(rng) -> np.random.Generator:
    """A numpy Generator from a Generator or an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng={rng!r}: expected a numpy Generator or an int seed")


def reflect(u: np.ndarray, lo, hi) -> np.ndarray:
    """Fold unbounded positions u into [lo, hi] by mirror reflection (a triangle wave); broadcasts."""
    length = np.asarray(hi, dtype=np.float64) - lo
    m = np.mod(np.asarray(u, dtype=np.float64) - lo, 2 * length)
    return lo + np.where(m <= length, m, 2 * length - m)


def trajectory(cfg: ToyWorldConfig, params: ClipParams, num_frames: int | None = None) -> np.ndarray:
    """Sprite centre per frame (F, 2) as (x, y), constant velocity with bounces off the frame edges."""
    num_frames = cfg.num_frames if num_frames is None else num_frames
    t = np.arange(num_frames, dtype=np.float64)[:, None]                      # (F, 1)
    unbounded = np.asarray(params.start, dtype=np.float64)[None] + t * params.velocity()[None]
    (lx, hx), (ly, hy) = cfg.bounds(params.shape)
    return reflect(unbounded, np.array([lx, ly]), np.array([hx, hy]))       # (F, 2)


def sample_params(cfg: ToyWorldConfig, rng, n: int) -> list:
    """n random ClipParams, reproducible from a numpy Generator or int seed."""
    rng = _as_generator(rng)
    run = cfg.speed * (cfg.clear_frames - 1)   # guaranteed bounce-free travel along the motion axis
    out = []
    for _ in range(n):
        shape = cfg.shape_names[rng.integers(len(cfg.shapes))]
        colour = cfg.colour_names[rng.integers(len(cfg.palette))]
        background = cfg.background_names[rng.integers(len(cfg.backgrounds))]
        direction = cfg.directions[rng.integers(len(cfg.directions))]
        vel = DIRECTION_VECTORS[direction]
        start = []
        for axis, (lo, hi) in enumerate(cfg.bounds(shape)):
            if vel[axis] > 0:
                hi = hi - run
            elif vel[axis] < 0:
                lo = lo + run
            if cfg.subpixel_starts:
                start.append(float(rng.uniform(lo, hi)))
            else:  # pixel centres k + 0.5 inside [lo, hi]
                k_lo, k_hi = int(np.ceil(lo - 0.5)), int(np.floor(hi - 0.5))
                start.append(float(rng.integers(k_lo, k_hi + 1)) + 0.5)
        out.append(ClipParams(shape, colour, background, tuple(start), direction, float(cfg.speed)))
    return out


def coverage(cfg: ToyWorldConfig, shape: str, centres: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] (N, H, W) of `shape` centred at centres (N, 2) = (x, y)."""
    _, kind, hw, hh = cfg.shapes[cfg.shape_index(shape)]
    centres = torch.as_tensor(centres, dtype=torch.float32)
    xs = torch.arange(cfg.width, dtype=torch.float32)                          # pixel left edges
    ys = torch.arange(cfg.height, dtype=torch.float32)
    cx, cy = centres[:, 0:1], centres[:, 1:2]                                  # (N, 1)
    if kind == "box":   # exact overlap of [j, j+1) with [cx - hw, cx + hw], separable in x and y
        ox = (torch.minimum(xs + 1, cx + hw) - torch.maximum(xs, cx - hw)).clamp(0, 1)   # (N, W)
        oy = (torch.minimum(ys + 1, cy + hh) - torch.maximum(ys, cy - hh)).clamp(0, 1)   # (N, H)
        return oy[:, :, None] * ox[:, None, :]
    dx = (xs + 0.5) - cx                                                       # (N, W)
    dy = (ys + 0.5) - cy                                                       # (N, H)
    dist = torch.sqrt(dy[:, :, None] ** 2 + dx[:, None, :] ** 2)
    return (hw + 0.5 - dist).clamp(0, 1)


def _sprites_of(params: ClipParams) -> list:
    """The (shape, colour) sprites of a clip in compositing order; one today."""
    return [(params.shape, params.colour)]


def render_centres(cfg: ToyWorldConfig, params_list: list, centres) -> torch.Tensor:
    """Render clips with explicit sprite centres (B, F, 2) instead of their trajectories → (B, 3, F, H, W)."""
    centres = torch.as_tensor(np.asarray(centres), dtype=torch.float32)
    if centres.ndim != 3 or centres.shape[0] != len(params_list) or centres.shape[2] != 2:
        raise ValueError(f"centres has shape {tuple(centres.shape)}; expected (B={len(params_list)}, F, 2)")
    num_b, num_f = centres.shape[:2]
    palette, bgs = cfg.palette_tensor(), cfg.background_tensor()
    out = torch.empty(num_b, 3, num_f, cfg.height, cfg.width)
    for b, p in enumerate(params_list):
        bg = bgs[_index(cfg.background_names, p.background, "background")]
        frames = bg[:, None, None, None].expand(3, num_f, cfg.height, cfg.width).clone()   # (3, F, H, W)
        for shape, colour in _sprites_of(p):
            alpha = coverage(cfg, shape, centres[b])[None]                    # (1, F, H, W)
            rgb = palette[_index(cfg.colour_names, colour, "colour")][:, None, None, None]
            frames = frames * (1 - alpha) + rgb * alpha
        out[b] = frames
    return out


def render(cfg: ToyWorldConfig, params_list: list, num_frames: int | None = None) -> torch.Tensor:
    """Render clips from their params → videos (B, 3, F, H, W) float32 in [-1, 1]."""
    if not params_list:
        raise ValueError("render: params_list is empty; pass at least one ClipParams")
    cents = np.stack([trajectory(cfg, p, num_frames) for p in params_list])  # (B, F, 2)
    return render_centres(cfg, params_list, cents)


def caption(params: ClipParams) -> str:
    """Caption of a clip, e.g. 'a red disc moving left on a dark background' (direction = initial one)."""
    return f"a {params.colour} {params.shape} moving {params.direction} on a {params.background} background"


def parse_caption(cfg: ToyWorldConfig, text: str) -> dict:
    """Inverse of `caption`: {'colour', 'shape', 'direction', 'background'} names read from the words."""
    words = text.lower().replace(".", " ").split()
    slots = {"colour": cfg.colour_names, "shape": cfg.shape_names,
             "direction": tuple(DIRECTION_VECTORS), "background": cfg.background_names}
    out = {}
    for slot, names in slots.items():
        found = [w for w in words if w in names]
        if len(found) != 1:
            raise ValueError(f"caption {text!r}: expected exactly one {slot} word from {list(names)}, found {found}")
        out[slot] = found[0]
    return out


def sample_batch(cfg: ToyWorldConfig, rng, n: int) -> tuple:
    """(videos (B, 3, F, H, W), captions list[str], params list[ClipParams]) reproducible from a seed."""
    params = sample_params(cfg, rng, n)
    return render(cfg, params), [caption(p) for p in params], params


def with_frames(cfg: ToyWorldConfig, num_frames: int) -> ToyWorldConfig:
    """The same world with clips of `num_frames` frames (e.g. long rollouts)."""
    return replace(cfg, num_frames=num_frames)
