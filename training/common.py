"""Loop conventions shared by every Salt training job (teacher pre-training, ODE init, distillation).

- Each step is seeded from (seed, rank, step): resuming replays exactly the data and noise an
  uninterrupted run would have drawn; no RNG state needs saving.
- Checkpoints are written to a temp file in the same folder and renamed, so a kill never leaves a
  torn one; the newest complete checkpoint is found automatically on restart.
- Weights go to safetensors; optimizer state and counters to a weights-only torch file.
The loop itself is training/loop.py. Knows nothing of ComfyUI.
"""
import json
import logging
import math
import os
import re
import signal
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..salt_core.config import strict_from_dict

log = logging.getLogger("salt.training")


class RunError(RuntimeError):
    """A run folder that cannot be used as asked (locked by another process, no readable checkpoint)."""


_STOP = {"signal": None}


def _request_stop(signum, frame):
    """Signal handler: the first signal asks the loop to stop at the next step boundary; a second one stops now."""
    if _STOP["signal"] is not None:
        raise KeyboardInterrupt(f"signal {signum} (second)")
    _STOP["signal"] = signum
    log.info("signal %d: stopping after this step and saving a checkpoint (send it again to stop at once)", signum)


def install_stop_handlers() -> None:
    """Make SIGINT and SIGTERM stop a training loop cleanly at a step boundary (checkpoint saved, rerun resumes).

    Call from the main thread of a command-line job. Also catches a plain `kill` and Ctrl-C in shells that
    start background jobs with SIGINT ignored.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _request_stop)


def check_stop() -> None:
    """At a step boundary: raise KeyboardInterrupt if a stop signal arrived (the loops save, then re-raise)."""
    if _STOP["signal"] is not None:
        signum, _STOP["signal"] = _STOP["signal"], None
        raise KeyboardInterrupt(f"signal {signum}")


def step_seed(seed: int, rank: int, step: int, *extra: int) -> int:
    """A 63-bit seed unique to (seed, rank, step, *extra)."""
    return int(np.random.SeedSequence([seed, rank, step, *extra]).generate_state(2, dtype=np.uint32).astype(np.uint64)
               .dot(np.array([1 << 31, 1], dtype=np.uint64)) & np.uint64((1 << 63) - 1))


def step_generators(seed: int, rank: int, step: int, *extra: int):
    """(torch.Generator, numpy Generator) for one step (and sub-step `extra`, e.g. micro-batch)."""
    s = step_seed(seed, rank, step, *extra)
    return torch.Generator().manual_seed(s), np.random.default_rng(s)


def cosine_lr(step: int, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up then cosine decay to min_ratio·base: the learning rate of optimizer step `step` (0-based).

    Kept as a closed form rather than torch.optim.lr_scheduler: LambdaLR can only scale the base rate
    (base·((step+1)/warmup) rounds differently from base·(step+1)/warmup in 11 of the ODE preset's 50 warm-up
    steps, so the golden runs would change), CosineAnnealingLR updates recursively and drifts from the closed
    form, and a scheduler adds a state to checkpoint where the step number already determines the rate.
    """
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


config_from_dict = strict_from_dict  # dataclass from a dict, unknown keys rejected by name


class EMA:
    """Exponential moving average of a model's parameters, kept beside the model in its layout (FSDP2 shards stay
    shards: each rank averages its own).

    ema ← lerp(ema, θ, 1 − decay) after each `update` (torch's `_foreach_lerp_`, the op of torch's AveragedModel
    with get_ema_multi_avg_fn, bit for bit), starting from the parameters at construction. The average lives on
    the model's device in the model's dtype (fp32 in every Salt job). `state_dict()` holds full tensors under the
    model's own names, so checkpoints' ema.safetensors load into the bare model.
    """

    def __init__(self, model, decay: float):
        self.decay = decay
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.params = [p.detach().clone() for _, p in named]   # the first value: θ itself, not a lerp

    @torch.no_grad()
    def update(self, model):
        """One EMA step towards `model`'s current parameters."""
        torch._foreach_lerp_(self.params, [p.detach() for p in model.parameters()], 1 - self.decay)

    def state_dict(self) -> dict:
        """{parameter name: averaged full tensor} (a collective on every rank when the model is sharded)."""
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p) for n, p in zip(self.names, self.params)}

    def load_state_dict(self, tensors: dict) -> None:
        """Restore the average from `state_dict()`'s output (e.g. a checkpoint read on the CPU), in its layout."""
        if tensors.keys() != set(self.names):
            raise KeyError(f"EMA state: missing {sorted(set(self.names) - tensors.keys())}, "
                           f"unexpected {sorted(tensors.keys() - set(self.names))}")
        with torch.no_grad():
            for n, p in zip(self.names, self.params):
                t = tensors[n].to(device=p.device, dtype=p.dtype)
                if hasattr(p, "device_mesh"):
                    from torch.distributed.tensor import distribute_tensor
                    t = distribute_tensor(t, p.device_mesh, p.placements)
                p.copy_(t)

    def copy_to(self, model):
        """Load the average into a plain model with the same parameter names; returns it."""
        sd = model.state_dict()
        model.load_state_dict({**sd, **{k: v.to(sd[k].dtype) for k, v in self.state_dict().items()}})
        return model


class CheckpointManager:
    """`step_XXXXXXXX/` folders holding safetensors weights + a weights-only training-state file."""

    PATTERN = re.compile(r"^step_(\d{8})$")

    def __init__(self, folder: str, keep: int = 2):
        self.folder, self.keep = folder, keep
        os.makedirs(folder, exist_ok=True)

    def complete(self) -> list:
        """[(step, path)] of the complete checkpoints, newest first."""
        found = []
        for name in os.listdir(self.folder):
            m = self.PATTERN.match(name)
            if m and os.path.exists(os.path.join(self.folder, name, "COMPLETE")):
                found.append((int(m.group(1)), os.path.join(self.folder, name)))
        return sorted(found, reverse=True)

    def latest(self):
        """(step, path) of the newest complete checkpoint, or None."""
        found = self.complete()
        return found[0] if found else None

    def load_latest(self, names, optional=()) -> tuple:
        """(path, {name: state_dict}, state) of the newest checkpoint that reads back, or None if there is none.

        A checkpoint that does not read (a truncated file after a disk-full or a copy) is renamed to
        `<step>.unreadable` (kept for inspection, ignored from then on) and the next older one is tried,
        with a warning naming both; if none reads, the error names every file and the fix.
        """
        failures = []
        for step, path in self.complete():
            try:
                present = [n for n in optional if os.path.exists(os.path.join(path, f"{n}.safetensors"))]
                tensors, state = self.load(path, list(names) + present)
            except Exception as e:   # safetensors / torch report damage with several exception types
                failures.append(f"{path}: {type(e).__name__}: {str(e)[:160]}")
                log.warning("checkpoint %s does not read (%s: %s); falling back to an older one", path,
                            type(e).__name__, str(e)[:160])
                continue
            for bad in failures:
                bad_path = bad.split(": ")[0]
                os.replace(bad_path, bad_path + ".unreadable")
                log.warning("resuming from %s instead; the unreadable checkpoint was moved to %s.unreadable",
                            path, bad_path)
            return path, tensors, state
        if failures:
            raise RunError(f"no checkpoint in {self.folder} reads back: {'; '.join(failures)}. Move the damaged "
                               f"step folders away to start over from scratch, or restore them from a backup")
        return None

    def save(self, step: int, tensors: dict, state: dict, metadata: dict = None) -> str:
        """Write {name: state_dict} as name.safetensors and `state` as state.pt, atomically."""
        final = os.path.join(self.folder, f"step_{step:08d}")
        tmp = final + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        for name, sd in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, os.path.join(tmp, f"{name}.safetensors"), meta)
        torch.save(state, os.path.join(tmp, "state.pt"))
        open(os.path.join(tmp, "COMPLETE"), "w").close()
        if os.path.exists(final):
            import shutil
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._prune()
        return final

    @staticmethod
    def is_sharded(path: str) -> bool:
        """Whether a checkpoint folder was written by torch.distributed.checkpoint (a sharded run)."""
        return os.path.exists(os.path.join(path, ".metadata"))

    def save_sharded(self, step: int, tensors: dict, state: dict, rank: int, metadata: dict = None) -> str:
        """A sharded run's checkpoint, every rank writing its own shards with torch.distributed.checkpoint
        (`tensors`: nested state dicts of DTensors, the same keys on every rank), rank 0 the `state` and metadata;
        written in a temporary folder and renamed into place complete, so an interrupted save never replaces the
        last good checkpoint. A collective: every rank calls it."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        final = os.path.join(self.folder, f"step_{step:08d}")
        tmp = final + ".tmp_sharded"
        if rank == 0:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        dist.barrier()
        dcp.save(tensors, checkpoint_id=tmp)
        if rank == 0:
            torch.save(state, os.path.join(tmp, "state.pt"))
            with open(os.path.join(tmp, "metadata.json"), "w") as f:
                json.dump({k: str(v) for k, v in (metadata or {}).items()}, f)
            open(os.path.join(tmp, "COMPLETE"), "w").close()
            if os.path.exists(final):
                import shutil
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        dist.barrier()
        return final

    def load(self, path: str, names) -> tuple:
        """({name: state_dict}, state) from a checkpoint folder; a sharded one gives ({}, state): its tensors are
        read into the job's own layout (`Distiller.load_sharded`)."""
        if self.is_sharded(path):
            return {}, torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
        tensors = {n: load_file(os.path.join(path, f"{n}.safetensors")) for n in names}
        state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
        return tensors, state

    def _prune(self):
        """Keep the `keep` newest complete checkpoints; drop older ones, step folders without COMPLETE (never
        a finished save: those are renamed into place complete) and other processes' temp folders."""
        import shutil
        complete = {path for _, path in self.complete()}
        for _, path in self.complete()[self.keep:]:
            shutil.rmtree(path, ignore_errors=True)
        for n in os.listdir(self.folder):
            path = os.path.join(self.folder, n)
            if self.PATTERN.match(n) and path not in complete:
                shutil.rmtree(path, ignore_errors=True)
        for n in os.listdir(self.folder):
            if ".tmp" in n and not n.endswith(f".tmp{os.getpid()}"):   # rank 0 prunes after its sharded rename
                shutil.rmtree(os.path.join(self.folder, n), ignore_errors=True)


def logged_eval_steps(path: str, step_key: str = "gen_step") -> set:
    """Steps (the records' `step_key`) that have an `eval` record in a metrics.jsonl (torn or foreign lines skipped)."""
    steps = set()
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "eval" in record:
                    steps.add(record.get(step_key))
    return steps


class JsonlLog:
    """Append-only metrics log, one JSON object per line."""

    def __init__(self, path: str):
        self.path = path

    def write(self, **record):
        record.setdefault("time", time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def check_loss_terms(loss, stats: dict, tag: str, it: int, max_nonfinite_frac: float = 0.5) -> None:
    """FloatingPointError naming the term when a step's loss is non-finite or a loss term reports that more
    than `max_nonfinite_frac` of its entries were non-finite (`*_nonfinite_frac` stats, e.g. DMD's masked
    score): such a step would train on nothing while looking finite."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{tag} loss became {loss.item()} at iteration {it}")
    for key, value in stats.items():
        if key.endswith("_nonfinite_frac") and not value <= max_nonfinite_frac:
            term = key[:-len("_nonfinite_frac")]
            raise FloatingPointError(f"{term} loss: {value:.0%} of its entries were non-finite (NaN/Inf) at iteration "
                                     f"{it} ({tag} update; more than {max_nonfinite_frac:.0%} is a failed step)")
        if key.endswith("_loss") and isinstance(value, float) and not math.isfinite(value):
            raise FloatingPointError(f"{key} became {value} at iteration {it} ({tag} update)")
