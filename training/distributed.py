"""Multi-process training through accelerate (DDP-style replicas; FSDP via an accelerate config).

Every rank draws the same K / exit index / SC triplet (seeded from (seed, step), no broadcast
needed) so all ranks run the same number of forwards; data and noise differ per rank (seeded
from (seed, rank, step)). Gradients are averaged explicitly after each accumulated step: a Self
Forcing iteration runs several grad-carrying, KV-cached forwards per backward, which a DDP
wrapper's once-per-forward bookkeeping does not model.

Launch: `accelerate launch --num_processes N -m comfyui_salt.training distill ...` (GPU: NCCL;
CPU tests: gloo). For a 14B teacher use an accelerate FSDP config (FULL_SHARD, bf16 params,
fp32 reduce, size-based auto-wrap) — see README "Multi-GPU".
"""
import torch


def process_info():
    """(rank, world_size, device) from accelerate's process state (a single process without a launcher)."""
    try:
        from accelerate import PartialState  # optional dependency: pip install accelerate
    except ImportError:
        return 0, 1, torch.device("cpu")
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device


def average_gradients(module: torch.nn.Module, world_size: int) -> None:
    """All-reduce (mean) every parameter gradient across ranks; no-op for one process."""
    if world_size <= 1:
        return
    import torch.distributed as dist
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
