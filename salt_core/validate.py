"""Validation rules for numbers, tensors and memory requests, written once and called at every front door.

Each check raises ValueError (MemoryError for sizes) whose message names the argument, the value
received, what was expected and how to fix it; `where` prefixes it with the caller (a function, a node,
a config class, a file). The checks are pure: they read values and tensors, never files or ComfyUI.
Knows nothing of models beyond the sizes a caller passes in.
"""
import math
import os

import torch

GIB = 1 << 30
MAX_ROPE_TABLE_BYTES = 256 << 20   # RoPE tables larger than this are a corrupt config, not a model (Wan: 0.5 MiB)


MAX_QUOTE = 60                     # characters of an input a message quotes; the rest is counted, not echoed


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def quote(value, limit: int = MAX_QUOTE) -> str:
    """repr(value) for a message, at most `limit` characters of it: a 4 MiB string sent by a client becomes its
    first characters and its length, never an error as large as the input (errors are stored and broadcast)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters shown"
    return f"{text[:limit]}… ({size})"


def check_choice(name: str, value, choices, *, where: str = "") -> str:
    """`value` if it is one of `choices` (strings: a combo widget's options, a dict's keys); a ValueError naming them
    otherwise, also for values that are not strings (a JSON object sent for a combo is not hashable)."""
    options = list(choices)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{_prefix(where)}{name}={quote(value)}; expected one of {options}")
    return value


# -- numbers ---------------------------------------------------------------------------------------------
def check_number(name: str, value, *, where: str = "", low=None, high=None, low_open: bool = False,
                 high_open: bool = False, integer: bool = False, fix: str = "") -> float:
    """`value` as a finite float (or int) inside [low, high] (bounds optional, open with *_open); else ValueError.

    NaN and ±Inf are always refused: comparisons with NaN are False, so range checks alone let it through.
    """
    expected = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        expected += f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        expected += f" {'>' if low_open else '>='} {low}"
    elif high is not None:
        expected += f" {'<' if high_open else '<='} {high}"
    try:
        if isinstance(value, bool):
            raise TypeError
        if integer and isinstance(value, int):
            number = value                       # exact: a float round trip would refuse 2**64 - 1
        elif integer and float(value) != int(value):
            raise TypeError
        else:
            number = int(value) if integer else float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{_prefix(where)}{name}={quote(value)}; expected {expected}{'; ' + fix if fix else ''}") from None
    bad = not math.isfinite(float(number))
    if not bad and low is not None:
        bad = number <= low if low_open else number < low
    if not bad and high is not None:
        bad = number >= high if high_open else number > high
    if bad:
        raise ValueError(f"{_prefix(where)}{name}={quote(value)}; expected {expected}{'; ' + fix if fix else ''}")
    return number


def check_count(name: str, value, *, where: str = "", minimum: int = 1, maximum: int = None, fix: str = "") -> int:
    """An integer count >= minimum (and <= maximum); zero and negative sizes end here, not in a division."""
    return check_number(name, value, where=where, low=minimum, high=maximum, integer=True, fix=fix)


def parse_bool(name: str, text, *, where: str = "") -> bool:
    """'true/false/1/0/yes/no/on/off' (any case) → bool; any other word is an error, never a silent False."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{_prefix(where)}{name}={quote(text)}; expected a boolean: true/false, yes/no, on/off or 1/0")


def check_device(name: str, value, *, where: str = "") -> torch.device:
    """A torch device this machine has, from a user's text: None → cuda where available, else cpu; a name torch
    does not know, or a CUDA device on a machine without one (or without that index), is a ValueError."""
    if value is None or value == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{_prefix(where)}{name}={quote(value)}; expected a device such as cpu, cuda or "
                         f"cuda:1") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise ValueError(f"{_prefix(where)}{name}={quote(value)}; this machine has {have}: use {name} cpu")
    if device.type not in ("cpu", "cuda") and not _backend_available(device.type):
        raise ValueError(f"{_prefix(where)}{name}={quote(value)}; this machine has no {device.type} device: use "
                         f"{name} cpu")
    return device


def _backend_available(kind: str) -> bool:
    """Whether torch reports a device backend (mps, xpu, ...) available here."""
    backend = getattr(torch, kind, None) or getattr(torch.backends, kind, None)
    return bool(getattr(backend, "is_available", lambda: False)())


# -- tensors ---------------------------------------------------------------------------------------------
FINITE_CHUNK = 1 << 24   # elements per pass of check_finite_tensor: its masks stay 16 MiB however large the tensor


def check_finite_tensor(name: str, t: torch.Tensor, *, where: str = "", fix: str = "") -> torch.Tensor:
    """Refuse a tensor holding NaN or ±Inf, with the count of bad entries. It is read in chunks of about FINITE_CHUNK
    elements (slices along its first axis, so a non-contiguous view is not copied whole either): the check takes no
    memory in proportion to a hostile size."""
    if t.is_floating_point() or t.is_complex():
        rows = t.reshape(1, -1) if t.ndim == 0 else t
        step = max(1, FINITE_CHUNK // max(1, rows[:1].numel()))
        bad = sum(int((~torch.isfinite(rows[i:i + step])).sum()) for i in range(0, rows.shape[0], step))
        if bad:
            raise ValueError(f"{_prefix(where)}{name} holds {bad} non-finite value(s) (NaN/Inf) out of {t.numel()}; "
                             f"expected finite numbers{'; ' + fix if fix else ''}")
    return t


def check_image(name: str, image, *, where: str = "") -> torch.Tensor:
    """A ComfyUI IMAGE: a float tensor (B, H, W, C) with C = 3 (RGB) or 4 (RGBA), values in [0, 1], finite; else a
    ValueError naming what is wrong (bytes 0-255, no batch axis, channels first, one channel) and the fix."""
    fix = "connect a Load Image (or any IMAGE) output"
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{_prefix(where)}{name} is a {type(image).__name__}; expected an IMAGE tensor "
                         f"(batch, height, width, 3); {fix}")
    shape = tuple(image.shape)
    if image.ndim == 3 and shape[-1] in (3, 4):
        raise ValueError(f"{_prefix(where)}{name} has shape {shape}, no batch axis; expected (batch, height, width, "
                         f"{shape[-1]}): add one with image.unsqueeze(0)")
    if image.ndim != 4 or shape[-1] not in (3, 4) or min(shape) < 1:
        hint = " (channels first? ComfyUI images are channels last)" if image.ndim == 4 and shape[1] in (1, 3, 4) else ""
        raise ValueError(f"{_prefix(where)}{name} has shape {shape}; expected (batch, height, width, 3 or 4) with "
                         f"RGB or RGBA channels last{hint}; a one-channel mask or greyscale image must be made RGB "
                         f"first (e.g. Convert Mask to Image)")
    if not image.is_floating_point():
        raise ValueError(f"{_prefix(where)}{name} holds {image.dtype} values; ComfyUI images are floats in [0, 1]: "
                         f"divide bytes 0-255 by 255")
    check_finite_tensor(name, image, where=where, fix=fix)
    low, high = float(image.min()), float(image.max())
    if low < -1e-3 or high > 1 + 1e-3:
        scale = " (bytes 0-255? divide by 255)" if high > 1.5 else ""
        raise ValueError(f"{_prefix(where)}{name} holds values in [{low:.3g}, {high:.3g}]; ComfyUI images are in "
                         f"[0, 1]{scale}")
    return image


def check_sigmas(sigmas, *, where: str = "", name: str = "sigmas", end_at_zero: bool = True) -> torch.Tensor:
    """Flow SIGMAS as a 1-D float64 CPU tensor: ≥ 2 finite levels in [0, 1], strictly decreasing, ending at 0
    (`end_at_zero=False` accepts a split schedule that stops above 0, as ComfyUI's SplitSigmas makes, and the
    lone [0] of a split at its last step: no step left, the latent is done; a lone level above 0 stays refused, as
    it would return its noisy input as the sample)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).detach().flatten().cpu()
    shown = [round(s, 4) for s in sig.tolist()][:12]
    done = not end_at_zero and sig.numel() == 1 and sig.item() == 0
    if not done and (sig.numel() < 2 or not bool(torch.isfinite(sig).all()) or bool((sig[1:] >= sig[:-1]).any())
                     or sig[0] > 1 or sig[-1] < 0 or (end_at_zero and sig[-1] != 0)):
        raise ValueError(f"{_prefix(where)}{name}={shown}; expected at least two finite noise levels in [0, 1]"
                         f"{'' if end_at_zero else ' (or the lone [0] of a finished split)'}, "
                         f"strictly decreasing{' and ending with 0' if end_at_zero else ''} (flow SIGMAS), e.g. "
                         f"get_sigmas_fewstep(4, shift) or SaltFewStepSigmas")
    return sig


def check_latent(name: str, x: torch.Tensor, in_dim: int, *, where: str = "", finite: bool = True) -> torch.Tensor:
    """A latent video (B, C=in_dim, F, H, W) with no empty axis, finite unless `finite=False` (shape only)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != in_dim or 0 in x.shape:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{_prefix(where)}{name} has shape {shape}; expected a latent video (B, C={in_dim}, F, H, W) "
                         f"with every size >= 1 (add the frame axis: x.unsqueeze(2) for one image)")
    if finite:
        check_finite_tensor(name, x, where=where, fix="draw the noise again (torch.randn) or check the input")
    return x


def check_context(name: str, ctx: torch.Tensor, text_dim: int, *, where: str = "", batch: int = None,
                  finite: bool = True, fix: str = "") -> torch.Tensor:
    """Text features (B, L, text_dim), L >= 1, B equal to `batch` or 1 when given; finite unless `finite=False`."""
    if not isinstance(ctx, torch.Tensor) or ctx.ndim != 3 or ctx.shape[-1] != text_dim or ctx.shape[1] < 1:
        shape = tuple(ctx.shape) if isinstance(ctx, torch.Tensor) else type(ctx).__name__
        raise ValueError(f"{_prefix(where)}{name} has shape {shape}; expected text features (B, L, {text_dim}) from "
                         f"the text encoder the model was trained with "
                         f"({fix or 'umT5-XXL, 4096 wide, for Wan 2.1; the toy encoder, 32 wide, for the toy model'})")
    if batch is not None and ctx.shape[0] not in (1, batch):
        raise ValueError(f"{_prefix(where)}{name} has batch {ctx.shape[0]}; expected "
                         + ("1 (one prompt for the one video)" if batch == 1 else
                            f"1 or {batch} (one prompt, or one per video)"))
    if finite:
        check_finite_tensor(name, ctx, where=where, fix="re-encode the prompt")
    return ctx


# -- memory ----------------------------------------------------------------------------------------------
MEMINFO = "/proc/meminfo"          # the host's memory counters (Linux)
SELF_CGROUP = "/proc/self/cgroup"  # this process's control groups (a container's memory limit is one)
CGROUP_ROOT = "/sys/fs/cgroup"     # where they are mounted: v2 at the root, v1's memory controller in memory/
UNLIMITED = 1 << 60                # a cgroup v1 limit at least this large is no limit (it writes 2^63 rounded)


def _cgroup_number(folder: str, name: str):
    """An integer cgroup file of `folder`, None where it is absent, unreadable or unlimited ("max", ≥ 2^60)."""
    try:
        with open(os.path.join(folder, name)) as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return value if value < UNLIMITED else None


def _file_cache(folder: str, names: tuple) -> int:
    """Bytes of page cache a cgroup's memory.stat counts under `names`: charged to it, but the kernel reclaims it
    before it kills anything (so not taken)."""
    try:
        with open(os.path.join(folder, "memory.stat")) as f:
            stat = {k: v for k, v in (line.split(None, 1) for line in f if line.strip()) if k in names}
        return sum(int(v) for v in stat.values())
    except (OSError, ValueError):
        return 0


def _memory_cgroups() -> list:
    """(folder, version) of every memory cgroup that may limit this process: v2 (`0::<path>`) and v1 (`<n>:memory:
    <path>`), from its mount's root (what a container sees as its own) down every folder of the path SELF_CGROUP
    names (a limit on a parent binds its children)."""
    try:
        with open(SELF_CGROUP) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and not parts[1]:
            base, version = CGROUP_ROOT, 2
        elif "memory" in parts[1].split(","):
            base, version = os.path.join(CGROUP_ROOT, "memory"), 1
        else:
            continue
        folder = os.path.normpath(base)
        for step in [""] + [p for p in parts[2].strip().split("/") if p not in ("", ".", "..")]:
            folder = os.path.join(folder, step) if step else folder
            if os.path.isdir(folder) and (folder, version) not in found:
                found.append((folder, version))
    return found


def _least(a, b):
    """The smaller of two optional bounds (None: no bound)."""
    return b if a is None else a if b is None else min(a, b)


def cgroup_room() -> tuple:
    """(memory, swap) bytes this process's memory cgroups (a container's limit) still let it take: their limit less
    what is charged to them, page cache left out (the kernel reclaims it first), the tightest of them; None where
    none limits it."""
    memory = swap = None
    for folder, version in _memory_cgroups():
        if version == 2:
            limit, used = _cgroup_number(folder, "memory.max"), _cgroup_number(folder, "memory.current")
            cache = _file_cache(folder, ("active_file", "inactive_file"))
            swap_limit = _cgroup_number(folder, "memory.swap.max")
            swap_here = None if swap_limit is None else max(
                swap_limit - (_cgroup_number(folder, "memory.swap.current") or 0), 0)
        else:   # v1: memsw is memory and swap together
            limit, used = (_cgroup_number(folder, "memory.limit_in_bytes"),
                           _cgroup_number(folder, "memory.usage_in_bytes"))
            cache = _file_cache(folder, ("total_active_file", "total_inactive_file"))
            both_limit = _cgroup_number(folder, "memory.memsw.limit_in_bytes")
            both = None if both_limit is None else both_limit - max(
                (_cgroup_number(folder, "memory.memsw.usage_in_bytes") or 0) - cache, 0)
        memory_here = None if limit is None else max(limit - max((used or 0) - cache, 0), 0)
        if version == 1:
            swap_here = None if both is None else max(both - (memory_here or 0), 0)
        memory, swap = _least(memory, memory_here), _least(swap, swap_here)
    return memory, swap


def available_memory(device, swap: bool = False) -> int:
    """Bytes free for a new allocation on `device`: CUDA's free memory plus what PyTorch's caching allocator holds
    unused there (it hands those blocks out first, and frees them to retry an allocation that fails), else the
    host's MemAvailable, plus its SwapFree where `swap` (what the host can give before the OS kills the process:
    the limit for a refusal that must never stop a load that would only be slow), each bounded by what the memory
    cgroups (a container's limit) leave this process (cgroup_room)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(int(cached), 0)
    host = host_swap = None
    try:
        with open(MEMINFO) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        if "MemAvailable" in fields:
            host = int(fields["MemAvailable"].split()[0]) * 1024
            host_swap = int(fields.get("SwapFree", "0 kB").split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            host = 1 << 62   # unknown platform: no limit we can measure
    memory, swap_room = cgroup_room()
    return _least(host, memory) + (_least(host_swap or 0, swap_room) if swap else 0)


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the host or a device running out of memory (Python's MemoryError, torch's CUDA
    OutOfMemoryError, its CPU allocator's RuntimeError, a memory map refused for want of memory: ENOMEM), not damage
    of what was being read."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and any(s in str(error) for s in ("can't allocate memory",
                                                                          "Cannot allocate memory")))


def format_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.1f} MiB"


def check_memory(what: str, need: int, limit: int, *, where: str = "", limit_what: str = "the limit",
                 fix: str = "") -> None:
    """MemoryError before allocating when `need` bytes exceed `limit`: the estimate, the limit and the fix."""
    if need > limit:
        raise MemoryError(f"{_prefix(where)}{what} needs about {format_bytes(need)}, more than "
                          f"{format_bytes(limit)} ({limit_what}); {fix}")


def rope_table_bytes(head_dim: int, max_len: int) -> int:
    """Bytes of a RotaryTable: float64 angles (max_len, D/2) plus cos/sin caches of the same size."""
    return 3 * 8 * max_len * (head_dim // 2)


def kv_cache_bytes(num_layers: int, batch: int, num_heads: int, head_dim: int, frame_tokens: int,
                   capacity_frames: int, dtype=torch.float32) -> int:
    """Bytes of a KVCache's self-attention K and V: 2 × (layers, B, N, capacity·tokens, D)."""
    item = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * batch * num_heads * capacity_frames * frame_tokens * head_dim * item
