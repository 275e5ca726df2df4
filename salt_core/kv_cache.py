"""Preallocated per-layer KV cache for chunk-by-chunk (autoregressive) inference and rollouts.

Policies use LongLive's meaning of the sizes so release configs map one to one (`window_frames` is
LongLive's `local_attn_size`, `sink_frames` its `sink_size`; the same names from the widget to the cache):
- `full`:    every frame since the cache origin is attended; capacity `max_frames`.
- `rolling`: `window_frames` W most recent frames (the current chunk included).
- `sink`:    the first `sink_frames` S frames since the origin stay forever, plus the W - S most
             recent ones (W counts the sink, as in LongLive).
The chunk size is not part of a policy: one cache serves chunks of any size that fits the window
(first frames, re-cache pieces and generated chunks may differ); `KVCache.step` checks each.
Storage is a ring of frame slots: slots [0, S) hold the sink, slots [S, C) are a ring over later
frames, C = W (or max_frames). A chunk attends to every valid slot, so with no grad a step writes
its K/V and attends to a contiguous prefix of the buffer — no copies. With grad enabled the
previous frames are gathered before the blocks run, the chunk's own fresh K/V are concatenated,
and writes are deferred to `commit` — so activation-checkpoint recomputation never reads or writes
a cache that later chunks have changed.

RoPE: `relative_rope=False` stores K rotated at absolute frame positions (Self Forcing layout);
`relative_rope=True` stores un-rotated K and rotates the window at attention time with positions
relative to the window (sink frames keep 0..S-1), so positions never exceed C and streams can be
unbounded. With no sink, relative and absolute give identical scores. Zero-copy steps keep the
rotated keys in a second buffer `k_rot` and rotate only the slots whose (frame, position) changed
plus the chunk's own: a window's positions move once per chunk, so its keys are rotated once per
chunk, not once per denoising step and layer.

Knows nothing of the model beyond shapes: the model asks for a `CacheStep` per forward and for the
cross-attention K/V of a layer (`cross_kv`), which the cache computes once per prompt and owns.
"""
from dataclasses import dataclass
import torch

from .rope import apply_rope
from .validate import available_memory, check_memory, kv_cache_bytes


@dataclass(frozen=True)
class CachePolicy:
    window_frames: int = -1       # W: frames attended incl. sink (LongLive local_attn_size); -1 = global
    sink_frames: int = 0          # S: first frames kept forever (LongLive sink_size)
    max_frames: int = 21          # capacity of a global cache, in latent frames
    relative_rope: bool = False   # store un-rotated K and rotate inside the window

    def __post_init__(self):
        if self.window_frames != -1 and self.window_frames < 1:
            raise ValueError(f"CachePolicy: window_frames={self.window_frames}; use -1 (global) or >= 1")
        if self.sink_frames < 0:
            raise ValueError(f"CachePolicy: sink_frames={self.sink_frames} must be >= 0")
        if self.window_frames != -1 and self.sink_frames >= self.window_frames:
            raise ValueError(
                f"CachePolicy: sink_frames={self.sink_frames} must be smaller than window_frames="
                f"{self.window_frames} (the window counts the sink, as LongLive's local_attn_size)")
        if self.window_frames == -1 and self.sink_frames:
            raise ValueError("CachePolicy: a sink needs a window (window_frames >= 1); a global cache keeps all frames")
        if self.max_frames < 1:
            raise ValueError(f"CachePolicy: max_frames={self.max_frames} must be >= 1")

    @classmethod
    def full(cls, max_frames: int = 21, relative_rope: bool = False) -> "CachePolicy":
        return cls(-1, 0, max_frames, relative_rope)

    @classmethod
    def rolling(cls, window_frames: int, relative_rope: bool = False) -> "CachePolicy":
        return cls(window_frames, 0, window_frames, relative_rope)

    @classmethod
    def sink(cls, window_frames: int, sink_frames: int, relative_rope: bool = False) -> "CachePolicy":
        return cls(window_frames, sink_frames, window_frames, relative_rope)

    @property
    def kind(self) -> str:
        return "full" if self.window_frames == -1 else ("sink" if self.sink_frames else "rolling")

    @property
    def capacity_frames(self) -> int:
        """Frame slots the cache stores: the window W, or `max_frames` for a global cache."""
        return self.max_frames if self.window_frames == -1 else self.window_frames


class KVCache:
    """Self-attention K/V for every layer, (num_layers, B, N, C·T, D), plus per-prompt cross K/V."""

    def __init__(self, num_layers: int, batch: int, num_heads: int, head_dim: int, frame_tokens: int,
                 policy: CachePolicy, dtype=torch.float32, device="cpu", memory_limit: int = None):
        """Allocate the storage, refused first (MemoryError) if it would exceed `memory_limit` bytes
        (default: the free memory of `device`)."""
        self.policy, self.frame_tokens = policy, frame_tokens
        self.num_layers = num_layers
        cap = policy.capacity_frames
        need = kv_cache_bytes(num_layers, batch, num_heads, head_dim, frame_tokens, cap, dtype)
        free = memory_limit is None
        check_memory(f"a KV cache of {cap} frames × {frame_tokens} tokens × batch {batch}", need,
                     available_memory(device) if free else memory_limit, where="KVCache",
                     limit_what=f"free memory on {device}" if free else "memory_limit",
                     fix="use fewer frames per cache (a rolling / sink window), a smaller size or batch, or raise "
                         "memory_limit if you know more will be free")
        shape = (num_layers, batch, num_heads, cap * frame_tokens, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # Relative RoPE: the rotated keys of every slot, allocated on the first zero-copy step.
        self.k_rot = None
        self.cross_k = [None] * num_layers   # (B, N, Lc, D) per layer, filled once per prompt
        self.cross_v = [None] * num_layers
        self._context = None
        self.reset()

    # -- bookkeeping -------------------------------------------------------------------------
    def reset(self, start_frame: int = 0):
        """Forget everything; the next chunk must start at `start_frame` (the new origin)."""
        self.origin = self.end = int(start_frame)
        self.slot_frame = [-1] * self.policy.capacity_frames  # absolute frame held by each slot
        self.slot_rotated = [None] * self.policy.capacity_frames  # (frame, position) k_rot holds per slot
        self.reset_cross()

    def reset_cross(self):
        """Forget the cross-attention K/V (call on prompt change; done automatically on a new context)."""
        self.cross_k = [None] * self.num_layers
        self.cross_v = [None] * self.num_layers
        self._context = None

    def bind_context(self, context: torch.Tensor) -> None:
        """Keep cross K/V only while the same context tensor (same object, unmodified) is passed."""
        # Inference-mode tensors (ComfyUI runs nodes under torch.inference_mode) cannot be modified in
        # place and have no version counter: their identity alone is the key.
        version = 0 if context.is_inference() else context._version
        key = (context.data_ptr(), tuple(context.shape), version)
        if self._context is None or self._context[0] is not context or self._context[1] != key:
            self.reset_cross()
            self._context = (context, key)

    @property
    def has_cross_kv(self) -> bool:
        """Whether the bound context's cross K/V are computed (then the model need not embed the text)."""
        return self.num_layers > 0 and self.cross_k[0] is not None

    def cross_kv(self, layer: int, project, text: torch.Tensor = None) -> tuple:
        """Cross-attention (K, V) (B, N, Lc, D) of `layer`: `project(text)` once per bound context, then kept."""
        if self.cross_k[layer] is None:
            self.cross_k[layer], self.cross_v[layer] = project(text)
        return self.cross_k[layer], self.cross_v[layer]

    @property
    def num_frames(self) -> int:
        """Frames generated since the origin (the high-water mark)."""
        return self.end - self.origin

    def slot_of(self, frame: int) -> int:
        """Slot index holding absolute frame `frame` (sink first, then a ring)."""
        rel, sink = frame - self.origin, self.policy.sink_frames
        if rel < sink:
            return rel
        ring = self.policy.capacity_frames - sink
        return sink + (rel - sink) % ring

    def _attended_frames(self, stop: int) -> list:
        """Absolute frames a chunk ending at `stop` (exclusive) attends to, the chunk itself included."""
        return attended_frames(self.policy, self.origin, stop)

    def _position(self, frame: int, stop: int) -> int:
        """RoPE time position of `frame` when the newest frame attended is stop-1."""
        if not self.policy.relative_rope:
            return frame
        rel = frame - self.origin
        if rel < self.policy.sink_frames:
            return rel
        return rel - max(0, (stop - self.origin) - self.policy.capacity_frames)

    def step(self, start_frame: int, num_frames: int, write: bool) -> "CacheStep":
        """Validate a forward over frames [start_frame, start_frame+num_frames) and plan its attention."""
        f0, n, p = int(start_frame), int(num_frames), self.policy
        stop = f0 + n
        if not (self.origin <= f0 <= self.end and stop >= self.end):
            raise ValueError(
                f"KVCache: a chunk at frames [{f0}, {stop}) does not continue the cache, which holds frames "
                f"[{self.origin}, {self.end}); generate chunks in order (re-running the newest chunk is "
                f"allowed) or call reset(start_frame)")
        ring = p.capacity_frames - p.sink_frames
        if p.window_frames != -1 and n > ring:
            raise ValueError(
                f"KVCache: chunk of {n} frames does not fit the window: window_frames={p.window_frames} "
                f"minus sink_frames={p.sink_frames} leaves {ring}; use a window of at least sink + chunk frames")
        if p.window_frames == -1 and stop - self.origin > p.capacity_frames:
            raise ValueError(
                f"KVCache: global cache is full ({p.capacity_frames} frames) and frame {stop - 1} was requested; "
                f"build the cache with a larger max_frames or use a rolling / sink policy")
        return CacheStep(self, f0, n, write)


def attended_frames(policy: CachePolicy, origin: int, stop: int) -> list:
    """Absolute frames a chunk ending at `stop` (exclusive) attends to under `policy`, the chunk itself included, in
    a cache whose first frame is `origin`: all of them (global), or the sink frames and the newest ring."""
    if policy.window_frames == -1:
        return list(range(origin, stop))
    sink_end = origin + policy.sink_frames
    ring_start = max(sink_end, stop - (policy.capacity_frames - policy.sink_frames))
    return list(range(origin, min(sink_end, stop))) + list(range(ring_start, stop))


class CacheStep:
    """One forward's view of a KVCache: key positions, the K/V to attend to, deferred writes."""

    def __init__(self, cache: KVCache, start_frame: int, num_frames: int, write: bool):
        self.cache, self.start, self.n, self.write = cache, start_frame, num_frames, write
        self.stop = start_frame + num_frames
        c, T = cache, cache.frame_tokens
        self.zero_copy = write and not torch.is_grad_enabled()
        self.query_positions = torch.tensor([c._position(f, self.stop) for f in range(self.start, self.stop)])
        cur_slots = [c.slot_of(f) for f in range(self.start, self.stop)]
        self.cur_tokens = _token_index(cur_slots, T, c.k.device)
        if self.zero_copy:
            # After writing, the valid slots are always a prefix: the ring fills in order.
            filled = min(self.stop - c.origin, c.policy.capacity_frames)
            frames = list(c.slot_frame[:filled])
            for s, f in zip(cur_slots, range(self.start, self.stop)):
                frames[s] = f
            self.prefix_tokens = filled * T
            positions = [c._position(f, self.stop) for f in frames]
            self.key_positions = torch.tensor(positions)
            self.prev_k = self.prev_v = None
            if c.policy.relative_rope:
                # Rotate the chunk's own slots (rewritten every step) and slots whose position moved.
                self.rotated = {s: (f, p) for s, (f, p) in enumerate(zip(frames, positions))}
                todo = [s for s in range(filled) if s in cur_slots or c.slot_rotated[s] != self.rotated[s]]
                self.rotate_tokens = _token_index(todo, T, c.k.device)
                self.rope_positions = torch.tensor([positions[s] for s in todo], dtype=torch.long)
        else:
            prev = [f for f in c._attended_frames(self.stop) if f < self.start]
            idx = _token_index([c.slot_of(f) for f in prev], T, c.k.device)
            # Gathered once per forward (a copy), so later cache writes cannot reach saved tensors.
            self.prev_k = c.k.index_select(3, idx)  # (layers, B, N, P, D)
            self.prev_v = c.v.index_select(3, idx)
            self.key_positions = torch.tensor([c._position(f, self.stop) for f in prev + list(range(self.start, self.stop))])
        if not (self.zero_copy and c.policy.relative_rope):
            self.rotate_tokens, self.rotated = None, None
            self.rope_positions = self.key_positions   # relative RoPE rotates every attended key
        elif c.k_rot is None:
            with torch.inference_mode(c.k.is_inference()):   # usable wherever the cache itself is
                c.k_rot = torch.empty_like(c.k)
        self.layers = []                                # the LayerSteps handed out, for their deferred writes
        self.committed = False

    def layer(self, index: int) -> "LayerStep":
        """Layer `index`'s part of this step (what that layer's attention reads and writes)."""
        out = LayerStep(self, index)
        self.layers.append(out)
        return out

    def commit(self):
        """Apply deferred writes and advance the cache's high-water mark (once)."""
        if self.committed:
            return
        c = self.cache
        if self.write:
            if not self.zero_copy:
                with torch.no_grad():
                    for layer in self.layers:
                        if layer.pending is not None:
                            layer.k.index_copy_(2, self.cur_tokens, layer.pending[0].to(layer.k.dtype))
                            layer.v.index_copy_(2, self.cur_tokens, layer.pending[1].to(layer.v.dtype))
            for f in range(self.start, self.stop):
                c.slot_frame[c.slot_of(f)] = f
                c.slot_rotated[c.slot_of(f)] = None     # raw K rewritten: its rotation is stale
            c.end = max(c.end, self.stop)
        for layer in self.layers:                       # a checkpointed block keeps its LayerStep until the backward
            layer.pending = None
        if self.rotated is not None:                    # every layer rotated these slots in this forward
            for s, key in self.rotated.items():
                c.slot_rotated[s] = key
        self.layers = []
        self.committed = True


class LayerStep:
    """One layer's view of a CacheStep: the layer's cache tensors held as attributes, not reached by its index.

    A compiled block then sees tensors of the same shape at every layer and compiles once; torch.compile
    specialises on an integer used to index, which cost one graph per layer (and eager layers past its
    recompile limit of 8: found on an H100, where compiling gave no speed)."""

    def __init__(self, step: CacheStep, index: int):
        c = step.cache
        self.step = step
        self.k, self.v = c.k[index], c.v[index]                        # (B, N, slots·T, D) views of the cache
        self.k_rot = None if step.rotate_tokens is None else c.k_rot[index]
        self.prev_k = None if step.prev_k is None else step.prev_k[index]   # (B, N, P, D) gathered copies
        self.prev_v = None if step.prev_v is None else step.prev_v[index]
        self.pending = None                                           # (k, v) to write at commit (grad steps)

    def keys_values(self, k: torch.Tensor, v: torch.Tensor):
        """K/V (B, N, S, D) this chunk attends to, given its own k, v (B, N, n·T, D), in k's dtype.

        The cache stores its own dtype: under autocast k and v arrive in the autocast dtype, whatever the cache
        was allocated with (`new_cache` picks the autocast dtype when autocast is on); casts are no-ops otherwise."""
        s = self.step
        if s.zero_copy:
            self.k.index_copy_(2, s.cur_tokens, k.to(self.k.dtype))
            self.v.index_copy_(2, s.cur_tokens, v.to(self.v.dtype))
            return self.k[:, :, :s.prefix_tokens].to(k.dtype), self.v[:, :, :s.prefix_tokens].to(v.dtype)
        if s.write and not s.committed:
            self.pending = (k.detach(), v.detach())
        return (torch.cat([self.prev_k.to(k.dtype), k], dim=2),
                torch.cat([self.prev_v.to(v.dtype), v], dim=2))

    def rotated_keys(self, k_all: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Relative RoPE: `k_all` (B, N, S, D) from `keys_values` rotated at the window positions;
        cos, sin (L, D/2) are the angles of `rope_positions`' tokens."""
        s = self.step
        if s.rotate_tokens is None:
            return apply_rope(k_all, cos, sin)
        self.k_rot.index_copy_(2, s.rotate_tokens, apply_rope(self.k.index_select(2, s.rotate_tokens), cos, sin))
        return self.k_rot[:, :, :s.prefix_tokens].to(k_all.dtype)


def _token_index(slots, frame_tokens: int, device) -> torch.Tensor:
    """Token indices (len(slots)·T,) of frame slots, in slot-list order."""
    s = torch.as_tensor(slots, dtype=torch.long, device=device).view(-1, 1)
    return (s * frame_tokens + torch.arange(frame_tokens, device=device)).view(-1)
