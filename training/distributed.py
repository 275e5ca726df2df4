"""Multi-process training on PyTorch's own FSDP2 (`torch.distributed.fsdp.fully_shard`), launched by torchrun.

Each rank reads its place from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE: torchrun
and `accelerate launch` both set them); its device is its local rank's GPU (or the CPU: gloo). Models are sharded
per transformer block, then at the root, as the reference trainers do:
- `sharding="full"`: parameters, gradients and optimizer state split over every rank (FULL_SHARD);
- `sharding="hybrid"`: split within a node, replicated across nodes (a 2-D mesh: replicate × shard, HSDP);
- `sharding="replicate"`: every rank holds everything (a replicate-only mesh: FSDP2 as DDP).
Gradients are reduced by FSDP2 during backward (mean over ranks, in fp32 when the parameters compute in bf16); a
Self Forcing step's several grad-carrying, KV-cached forwards per backward are FSDP2's normal case (each forward
gathers the block's parameters, each backward reduces their gradients once the graph is done with them).

Every rank draws the same K / exit index / SC triplet (seeded from (seed, iteration)), so all ranks run the same
forwards; data and noise come from the global micro-batch index (rank × grad_accum + micro), so N ranks see the
clips one process sees with grad_accum × N micro-batches. A rank that dies makes the others fail their next
collective (gloo: at once; NCCL: within `timeout_s`), and torchrun stops the rest.
"""
import contextlib
import dataclasses
import datetime
import os
from dataclasses import dataclass

import torch

SHARDINGS = ("full", "hybrid", "replicate")
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: global rank and size, rank and size within its node, its device."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False     # a process group is up (torchrun, even with one process): models are sharded

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment {name}={value!r}: expected an integer (set by torchrun)") from None


def launcher_rank() -> int:
    """This process's rank from the launcher's environment (0 without one), starting nothing: what a front door
    asks after a job, when the job's process group has already ended (only rank 0 writes shared outputs)."""
    return _env_int("RANK", 0)


def launcher_world_size() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 without one), starting nothing: how a one-process job
    refuses a torchrun launch before its ranks contend for one run folder."""
    return _env_int("WORLD_SIZE", 1)


TORCHRUN_GRACE_S = 30      # torchrun's default wait between the stop signal it forwards and SIGKILL
GRACE_ENV = ("PET_SHUTDOWN_TIMEOUT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT")   # the environment forms of --shutdown-timeout


def grace_is_settable() -> bool:
    """Whether this torch's torchrun takes --shutdown-timeout (older ones kill their workers 30 s after a stop
    signal whatever the environment says)."""
    try:
        from torch.distributed.launcher.api import LaunchConfig
        return "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}
    except Exception:   # noqa: BLE001  (no launcher module, not a dataclass: a torchrun without the setting)
        return False


def torchrun_grace_s():
    """Seconds torchrun leaves its workers after forwarding a stop signal (Ctrl-C) before it kills them, or None
    when no torchrun launched this process (no TORCHELASTIC_RUN_ID). Its --shutdown-timeout reaches the workers only
    in its environment forms (PET_SHUTDOWN_TIMEOUT first, as torchrun reads them); else, or where this torch's
    torchrun has no such setting (grace_is_settable), its default, 30 s."""
    if not os.environ.get("TORCHELASTIC_RUN_ID"):
        return None
    for name in GRACE_ENV if grace_is_settable() else ():
        try:
            return float(os.environ[name])
        except (KeyError, ValueError):
            continue
    return float(TORCHRUN_GRACE_S)


def process_info(timeout_s: float = DEFAULT_TIMEOUT_S) -> ProcessInfo:
    """This process's place from the launcher's environment, the process group started under a launcher (NCCL on
    CUDA, gloo on the CPU; collectives fail after `timeout_s`): `torchrun --nproc-per-node 1` shards on one GPU
    (e.g. to keep a 14B teacher's shards on the host: teacher_offload). One process without a launcher: rank 0 of
    1 on the first GPU, or the CPU, unsharded."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if not (0 <= rank < world and 0 <= local < local_world and world % local_world == 0):
        raise ValueError(f"launcher environment RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} "
                         f"LOCAL_WORLD_SIZE={local_world} is inconsistent; launch with torchrun --nproc-per-node N")
    cuda = torch.cuda.is_available() and os.environ.get("SALT_FORCE_CPU", "") != "1"
    device = torch.device("cuda", local % torch.cuda.device_count()) if cuda else torch.device("cpu")
    launched = world > 1 or bool(os.environ.get("MASTER_ADDR") and os.environ.get("WORLD_SIZE"))
    if launched:
        import torch.distributed as dist
        if not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
            _STARTED[0] = True
    return ProcessInfo(rank, world, local, local_world, device, launched)


_STARTED = [False]   # whether process_info started the default process group (end_process_group then ends it)


def end_process_group() -> None:
    """End the process group `process_info` started, once a job has finished on this rank: every rank waits for
    the others (a barrier: none may still be in a collective), then destroys it. Left to interpreter exit, gloo's
    worker threads can abort the process after a finished run (SIGABRT, "terminate called without an active
    exception"; pytorch/pytorch#190489). Only after a job that finished: a rank that failed leaves the group alone,
    since destroying it while others wait in a collective can hang them. A group the caller started is left to the
    caller."""
    import torch.distributed as dist
    if not (_STARTED[0] and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    _STARTED[0] = False


TURN_TIMEOUT_S = 6 * 3600   # how long a process waits for the ones of its node before it (a 14B set per turn)


def in_turns(info: ProcessInfo, work):
    """`work()`'s result, run by one process of each node at a time (local rank 0 first, every node alike): what a
    process builds whole on the host before sharding it (a 14B model set: about 170 GB in float32) is held by one
    process per node at a time, not by all of them at once; `work` should leave only shards behind. `work` must not
    enter a collective. After each turn every rank learns whether a turn failed (a gloo group of its own, whose
    timeout `TURN_TIMEOUT_S` lets a turn read files far longer than a collective may wait); then the rank whose
    `work` raised re-raises its error and every other rank raises a RuntimeError pointing at it. Without a process
    group (one process) `work()` runs at once."""
    if not info.distributed or info.local_world_size <= 1:
        return work()
    import torch.distributed as dist
    turns = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=TURN_TIMEOUT_S))
    result, error = None, None
    for turn in range(info.local_world_size):
        if info.local_rank == turn:
            try:
                result = work()
            except Exception as e:   # every rank stops together below (Ctrl-C / SystemExit end the process)
                error = e
        failed = torch.tensor([info.rank if error is not None else -1])
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=turns)
        if failed.item() >= 0:
            dist.destroy_process_group(turns)
            if error is not None:
                raise error
            raise RuntimeError(f"rank {info.rank} of {info.world_size}: rank {failed.item()} could not build its "
                               f"models (its error is in its log); every rank stops before training")
    dist.destroy_process_group(turns)
    return result


def device_mesh(info: ProcessInfo, sharding: str):
    """The mesh FSDP2 shards over: 1-D over every rank ("full"), 2-D (replicate across nodes, shard within one)
    ("hybrid"), or (ranks, 1) ("replicate": each shard group is one rank, so every rank holds everything)."""
    from torch.distributed.device_mesh import init_device_mesh
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding={sharding!r}; expected one of {SHARDINGS}")
    kind = info.device.type
    if sharding == "full":
        return init_device_mesh(kind, (info.world_size,), mesh_dim_names=("shard",))
    shape = (info.nodes, info.local_world_size) if sharding == "hybrid" else (info.world_size, 1)
    return init_device_mesh(kind, shape, mesh_dim_names=("replicate", "shard"))


def shard_model(model: torch.nn.Module, mesh, *, bf16: bool = False, reshard_after_forward: bool = True,
                cpu_offload: bool = False) -> torch.nn.Module:
    """Shard a Wan-style model in place with FSDP2: each of `model.blocks`, then the root (embeddings, head).
    bf16: parameters gathered and computed in bf16, gradients reduced in fp32 (the master weights stay fp32).
    cpu_offload: shards live on the CPU between uses (the frozen teacher on a small GPU)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if bf16:
        # inputs keep their dtypes: the timestep, modulation and RoPE tables are float32 on purpose (autocast
        # already runs the matmuls in bf16)
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                   cast_forward_inputs=False)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    for block in getattr(model, "blocks", ()):
        fully_shard(block, **kwargs)
        if hasattr(block, "context_kv"):        # called by a KV cache outside the block's forward
            register_fsdp_forward_method(block, "context_kv")
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: torch.nn.Module) -> dict:
    """{name: full tensor on the CPU} of a sharded or plain model; a collective on every rank when sharded (rank 0
    gets the tensors, the others an empty dict)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: torch.nn.Module, tensors: dict) -> None:
    """Load full tensors (as `full_state_dict` gives, on every rank) into a sharded or plain model."""
    if not is_sharded(model):
        model.load_state_dict(tensors)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer's state with full tensors keyed by parameter names (the same for any rank count; a collective
    when sharded, rank 0 gets the tensors)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    if not opt.state:     # before the first update: torch's state-dict helpers would take a dummy step to fill it
        names = [n for n, _ in model.named_parameters()]
        return {"state": {}, "param_groups": [{**{k: v for k, v in g.items() if k != "params"},
                                               "params": names[:len(g["params"])]} for g in opt.param_groups]}
    sharded = is_sharded(model)
    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=sharded))


def load_full_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load `full_optimizer_state`'s output (read on every rank) into the optimizer of a sharded or plain model.
    A state keyed by parameter index (checkpoints written before sharding existed) is read by model order."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    if not state.get("state"):        # saved before the first update: the fresh optimizer is that state already
        return
    if any(isinstance(k, int) for k in state.get("state", {})) or any(
            isinstance(p, int) for g in state.get("param_groups", ()) for p in g.get("params", ())):
        names = [n for n, _ in model.named_parameters()]
        state = {"state": {names[int(k)]: v for k, v in state["state"].items()},
                 "param_groups": [{**g, "params": [names[int(p)] for p in g["params"]]}
                                  for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=is_sharded(model)))


def local_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer = None) -> int:
    """Bytes this rank holds of `model`'s parameters and gradients and of `opt`'s state (local shards only)."""
    def local(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()
    total = sum(local(p) + (local(p.grad) if p.grad is not None else 0) for p in model.parameters())
    if opt is not None:
        total += sum(local(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
    return total


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank (a collective under a process group; the flag itself otherwise): decisions
    that lead into collectives (stop, save, raise) are taken by every rank together."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0],
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_ranks(stats: dict) -> dict:
    """`stats` with every number (int or float, not bool) replaced by its mean over the ranks, the rest as this rank
    has it: what a multi-process run logs (each rank's losses are of its own clips). A collective under a process
    group: every rank calls it with the same keys (checked: other keys on some rank raise, naming them)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(stats)
    keys = sorted(k for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, keys)
    if any(k != keys for k in every):
        raise RuntimeError(f"ranks log different numbers: {sorted(set(map(tuple, every)))}")
    values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64,
                          device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    means = dict(zip(keys, (values / dist.get_world_size()).tolist()))
    # a count every rank agrees on (K, an update counter) stays an int
    return {**stats, **{k: int(v) if isinstance(stats[k], int) and v.is_integer() else v for k, v in means.items()}}


COMMUNICATION_ERRORS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "NCCL",
                        "Socket Timeout", "timed out", "DistNetworkError", "Broken pipe")


@contextlib.contextmanager
def peers_lost_message(rank: int, world_size: int, folder: str):
    """Under several ranks: a collective that fails because another rank died or hung becomes one error saying
    so, naming the fix (the last checkpoint is intact; rerun the same command to resume)."""
    try:
        yield
    except RuntimeError as e:
        dist_error = getattr(torch.distributed, "DistError", ())
        if world_size <= 1 or not (isinstance(e, dist_error) or any(m in str(e) for m in COMMUNICATION_ERRORS)):
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"rank {rank} of {world_size}: lost contact with another rank ({first}). Another rank "
                           f"stopped, died or hung: see its log. The last checkpoint in {folder} is intact; rerun "
                           f"the same command to resume from it") from e
