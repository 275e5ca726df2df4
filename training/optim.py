"""The optimiser's side of every Salt training job: per-step seeds, the learning-rate schedule and the EMA.

- Each step is seeded from (seed, rank, step, *extra): resuming replays exactly the data and noise an uninterrupted
  run would have drawn; no RNG state needs saving.
- The learning rate is a closed form of the step number (no scheduler state to checkpoint).
- The EMA keeps its average beside the model, in the model's layout (shards stay shards).
"""
import math

import numpy as np
import torch


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
