"""Wan 2.1 transformer configuration: one typed dataclass and named presets (MODEL_PRESETS); and the one
unknown-key check every config dataclass uses (check_keys / strict_from_dict).

Knows nothing of files, ComfyUI or training. Field names follow the original Wan config.
"""
from dataclasses import dataclass, fields, asdict
import difflib
import json

from .validate import MAX_ROPE_TABLE_BYTES, check_count, check_memory, check_number, quote, rope_table_bytes


def check_keys(cls, keys, *, where: str = "", renamed: dict | None = None) -> None:
    """Refuse keys that are not fields of the dataclass `cls`: a renamed key names its new name (`renamed`:
    {old: "new, and how to convert"}), an unknown one its closest fields (did you mean) and every known field."""
    keys = list(keys)
    where = where or cls.__name__
    old = sorted(k for k in set(keys) if renamed and k in renamed)
    if old:
        raise ValueError(f"{where}: " + "; ".join(f"{k} was renamed to {renamed[k]}" for k in old))
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(keys) - set(known))
    if unknown:
        longest = max(len(k) for k in known)   # a key far longer than any field has no close match (and is not echoed)
        close = {k: difflib.get_close_matches(k, known, n=3, cutoff=0.6) if len(k) <= 2 * longest else []
                 for k in unknown[:5]}
        hint = "; ".join(f"{k}: did you mean {' or '.join(c)}?" for k, c in close.items() if c)
        shown = ", ".join(quote(k) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{where}: unknown keys [{shown}]{'; ' + hint if hint else ''}; known keys: {sorted(known)}")


def strict_from_dict(cls, d: dict, *, where: str = "", renamed: dict | None = None):
    """A dataclass `cls` from a dict, unknown keys rejected by check_keys."""
    check_keys(cls, d, where=where, renamed=renamed)
    return cls(**d)


@dataclass(frozen=True)
class WanConfig:
    dim: int = 1536                      # model width
    ffn_dim: int = 8960                  # hidden width of each block's FFN
    num_heads: int = 12                  # attention heads (head dim = dim / num_heads)
    num_layers: int = 30                 # transformer blocks
    patch_size: tuple = (1, 2, 2)        # (pt, ph, pw) patchify of the latent
    in_dim: int = 16                     # latent channels in
    out_dim: int = 16                    # latent channels out
    text_dim: int = 4096                 # text-encoder width (umT5-XXL: 4096)
    freq_dim: int = 256                  # sinusoidal timestep-embedding width
    eps: float = 1e-6                    # norm epsilon
    text_len: int = 512                  # context length the original model pads text to
    rope_max_len: int = 1024             # RoPE table length (positions per axis must stay below it)
    rope_theta: float = 10000.0          # RoPE base

    def __post_init__(self):
        validate_wan_config(self)
        if self.dim % self.num_heads:
            raise ValueError(f"WanConfig: dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"WanConfig: head_dim={self.head_dim} must be even for RoPE")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_json(self) -> str:
        """Serialise for safetensors metadata (our own files store their config)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        """Build from a dict, rejecting unknown keys by name."""
        return strict_from_dict(cls, d)

    @classmethod
    def from_json(cls, s: str) -> "WanConfig":
        return cls.from_dict(json.loads(s))


MAX_LAYERS = 512          # transformer blocks a config may have (Wan 2.1: 30 and 40)
MAX_TEXT_LEN = 8192       # text tokens a config may pad to (Wan 2.1: 512)


def validate_wan_config(cfg: "WanConfig") -> None:
    """Every WanConfig field a usable size or number (configs come from user code and file metadata alike)."""
    where = "WanConfig"
    for name in ("dim", "ffn_dim", "num_heads", "in_dim", "out_dim", "text_dim", "freq_dim", "rope_max_len"):
        check_count(name, getattr(cfg, name), where=where)
    # bounded: a checker builds the model on the meta device (about 125 KiB and 3 ms a layer) before any weight is
    # compared, and the text context is padded to text_len per prompt
    check_count("num_layers", cfg.num_layers, where=where, maximum=MAX_LAYERS,
                fix="Wan 2.1 has 30 (1.3B) or 40 (14B) blocks; a larger value in a file's metadata is a corrupt "
                    "config")
    check_count("text_len", cfg.text_len, where=where, maximum=MAX_TEXT_LEN,
                fix="Wan 2.1 reads 512 umT5 tokens; a larger value in a file's metadata is a corrupt config")
    if not isinstance(cfg.patch_size, (tuple, list)) or len(cfg.patch_size) != 3:
        raise ValueError(f"{where}: patch_size={cfg.patch_size!r}; expected three sizes (pt, ph, pw), e.g. (1, 2, 2)")
    for p in cfg.patch_size:
        check_count("patch_size", p, where=where)
    check_number("eps", cfg.eps, where=where, low=0, low_open=True, high=1)
    check_number("rope_theta", cfg.rope_theta, where=where, low=1, low_open=True)
    check_memory(f"the RoPE table for rope_max_len={cfg.rope_max_len}", rope_table_bytes(cfg.dim // cfg.num_heads,
                 cfg.rope_max_len), MAX_ROPE_TABLE_BYTES, where=where, limit_what="the most a RoPE table may take",
                 fix="rope_max_len is the number of positions per axis (Wan 2.1: 1024); a larger value in a file's "
                     "metadata is a corrupt config: fix the salt_config metadata or pass a preset")


# The toy world's timestep shift, fixed once and used everywhere in the toy world (teacher training
# σ distribution, sampling grids, few-step grids, distillation presets). Real-scale Wan keeps 5.
# Measured on the teacher: see docs/toy_world.md (40-step samples at shifts 1, 2, 3). It lives beside the
# toy preset, not in the toy wing (comfyui_salt.toy), so training's config defaults can read it.
TOY_SHIFT = 3.0

MODEL_PRESETS = {
    "wan2.1-t2v-1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Tiny configs for tests: Wan-shaped, seconds on a CPU.
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_dim=4, out_dim=4,
                      text_dim=32, freq_dim=32, text_len=8),
    # Head dim 128 like real Wan (so foreign-file loading can infer the head count).
    "tiny-hd128": WanConfig(dim=256, ffn_dim=256, num_heads=2, num_layers=2, in_dim=16, out_dim=16,
                            text_dim=64, freq_dim=32, text_len=8),
    # A small Wan-shaped config for CPU benchmarks (head dim 128 like Wan).
    "small": WanConfig(dim=384, ffn_dim=1024, num_heads=3, num_layers=4, in_dim=16, out_dim=16,
                       text_dim=64, freq_dim=64, text_len=16),
    # The toy world's model (pixel latents 3×16×16); see comfyui_salt/toy.
    "toy": WanConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=4, patch_size=(1, 4, 4), in_dim=3,
                     out_dim=3, text_dim=32, freq_dim=64, text_len=8),
    # The GPU teacher recipe (bench/gpu_teacher.py): finer 2×2 patches, wider and deeper; 3.9M params, 14.8 MB in fp32.
    "toy-gpu": WanConfig(dim=192, ffn_dim=768, num_heads=4, num_layers=6, patch_size=(1, 2, 2), in_dim=3,
                         out_dim=3, text_dim=32, freq_dim=64, text_len=8),
}


def get_config(name: str) -> WanConfig:
    """Look up a preset by name with an error listing the choices."""
    if name not in MODEL_PRESETS:
        raise KeyError(f"unknown model preset {quote(name)}; choose one of {sorted(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]
