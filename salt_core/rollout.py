"""Training rollouts of a few-step student: Self Forcing chunk rollouts on a KV cache, the Salt
reference rollout with its own cache, and bidirectional backward simulation.

Self Forcing rollout (docs/method.md §3): per chunk, the steps before the exit index
run without grad with fresh re-noising; the exit step carries grad and its x0 is the chunk's
output; then a clean-context forward at `context_noise` writes the chunk's K/V. At the exit step
`on_exit(chunk, x_s, v1, velocity_fn)` is called while the cache still describes that chunk's
past, so SC-DMD's composed branch can run the model at another level with the same cache and
chunk position (velocity_fn never writes the cache).
Knows nothing of losses, optimisers or ComfyUI.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .denoiser import FlowDenoiser
from .kv_cache import CachePolicy
from .samplers import fewstep_update
from .schedules import randn_like, x0_from_velocity
from .streaming import ChunkStream
from .validate import check_sigmas


@dataclass
class Rollout:
    """What a rollout produced. x0 (B, C, F, H, W): chunk outputs at the exit step (grad if enabled)."""
    x0: torch.Tensor
    exit_sigma: float
    renoise: dict = field(default_factory=dict)   # {(chunk, grid index): fresh noise used to reach that level}


def _levels(sigmas, where: str) -> list:
    """The K positive levels (floats) of a grid given as K levels or as SIGMAS (K+1,) ending with 0, validated."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).detach().flatten().cpu()
    if sig.numel() and sig[-1] != 0:
        sig = torch.cat([sig, sig.new_zeros(1)])
    return check_sigmas(sig, where=where).tolist()[:-1]


def _check_exit(exit_index: int, sig: list) -> None:
    if not 0 <= exit_index < len(sig):
        raise ValueError(f"exit_index={exit_index}: expected 0 <= exit_index < {len(sig)} (steps in the grid)")


def _backward_simulation(denoiser, exit_denoiser, x, sig: list, exit_index: int, generator, grad: bool,
                         renoise: dict, chunk: int):
    """Self Forcing's steps on one chunk (or clip) x: no-grad steps with fresh re-noise (recorded in
    `renoise` under (chunk, grid index)) up to the exit, then the exit step with grad if `grad`.
    Returns (x_s, v1, x0) at the exit level σ_s = sig[exit_index]."""
    with torch.no_grad():
        for i in range(exit_index):
            def fresh(*_, i=i):   # kept for the reference rollout's noise coupling
                renoise[(chunk, i + 1)] = eps = randn_like(x, generator)
                return eps
            x = fewstep_update(x, denoiser(x, sig[i]), sig[i], sig[i + 1], fresh)
    s = sig[exit_index]
    with torch.set_grad_enabled(grad):
        v1 = exit_denoiser.velocity(x, s)
        x0 = x0_from_velocity(x, v1, s)
    return x, v1, x0


def rollout_self_forcing(model, noise: torch.Tensor, context: torch.Tensor, sigmas, exit_index: int, *,
                         policy: CachePolicy, chunk_frames: int = 3, context_noise: float = 0.0,
                         generator: Optional[torch.Generator] = None, grad: bool = True,
                         on_exit: Optional[Callable] = None, cache=None) -> Rollout:
    """Self Forcing rollout of a causal student.

    noise (B, C, F, H, W) initial noise per chunk; sigmas: the K-step grid (K or K+1 values, a
    trailing 0 ignored); exit_index in [0, K): the step whose x0 is kept (with grad if `grad`).
    Returns Rollout with x0 (B, C, F, H, W) and the fresh re-noise draws (for noise coupling).
    `cache`: reuse a preallocated cache (reset here) instead of allocating one.
    """
    sig = _levels(sigmas, "rollout_self_forcing")
    _check_exit(exit_index, sig)
    B, C, num_f, H, W = noise.shape
    cache = cache if cache is not None else model.new_cache(B, policy, (H, W))
    stream = ChunkStream(model, cache, context, chunk_frames=chunk_frames, context_noise=context_noise,
                         generator=generator)
    outs, renoise = [], {}
    for c, f0 in enumerate(range(0, num_f, chunk_frames)):
        def produce(stream, c=c, f0=f0):
            reader = stream.denoiser(write=False)   # never writes: SC-DMD's composed branch reuses it
            x_s, v1, x0 = _backward_simulation(stream.denoiser(), reader, noise[:, :, f0:f0 + chunk_frames], sig,
                                               exit_index, generator, grad, renoise, c)
            if on_exit is not None:
                on_exit(c, x_s, v1, reader.velocity)
            return x0, x0
        outs.append(stream.step(produce))
    return Rollout(torch.cat(outs, 2), sig[exit_index], renoise)


def _student_noise(student_renoise: dict, student_levels: list, chunk: int, level: float):
    """Noise coupling of a dense step to `level`: a sampler returning the student's own draw there when `level`
    is on the student's grid, else None (a deterministic Euler step)."""
    shared = [k for k, s in enumerate(student_levels) if abs(s - level) < 1e-6]
    if not shared or (chunk, shared[0]) not in student_renoise:
        return None
    eps = student_renoise[(chunk, shared[0])]
    return lambda *_: eps


@torch.no_grad()
def rollout_reference(model, noise: torch.Tensor, context: torch.Tensor, student_sigmas, exit_index: int,
                      dense_sigmas, student_renoise: dict, *, policy: CachePolicy, chunk_frames: int = 3,
                      coupling: str = "noise_aligned", context_noise: float = 0.0,
                      generator: Optional[torch.Generator] = None, cache=None) -> torch.Tensor:
    """Salt's reference rollout (docs/method.md §3): same initial noise, current weights, no grad, the
    denser grid down to the student's exit level, its own KV cache filled from its own outputs.

    `noise_aligned`: deterministic Euler steps between dense points off the student grid, the
    student's own re-noise draw at shared grid points; `independent`: fresh noise at every step.
    Returns x0 (B, C, F, H, W) at the student's exit level.
    """
    if coupling not in ("noise_aligned", "independent"):
        raise ValueError(f"coupling={coupling!r}; expected 'noise_aligned' or 'independent'")
    s_sig = _levels(student_sigmas, "rollout_reference")
    _check_exit(exit_index, s_sig)
    target = s_sig[exit_index]
    dense = [s for s in _levels(dense_sigmas, "rollout_reference") if s >= target - 1e-9]
    if abs(dense[-1] - target) > 1e-6:
        raise ValueError(f"dense grid {dense} does not contain the student's exit level {target}")
    B, C, num_f, H, W = noise.shape
    cache = cache if cache is not None else model.new_cache(B, policy, (H, W))
    stream = ChunkStream(model, cache, context, chunk_frames=chunk_frames, context_noise=context_noise,
                         generator=generator)
    outs = []
    for c, f0 in enumerate(range(0, num_f, chunk_frames)):
        def produce(stream, c=c, f0=f0):
            x, denoiser = noise[:, :, f0:f0 + chunk_frames], stream.denoiser()

            def fresh(*_):
                return randn_like(x, generator)
            for j, s in enumerate(dense):
                x0 = denoiser(x, s)
                if j + 1 == len(dense):
                    break
                x = fewstep_update(x, x0, s, dense[j + 1], fresh if coupling == "independent" else
                                   _student_noise(student_renoise, s_sig, c, dense[j + 1]))
            return x0, x0
        outs.append(stream.step(produce))
    return torch.cat(outs, 2)


def rollout_bidirectional(model, noise: torch.Tensor, context: torch.Tensor, sigmas, exit_index: int, *,
                          generator: Optional[torch.Generator] = None, grad: bool = True,
                          on_exit: Optional[Callable] = None) -> Rollout:
    """Backward simulation of a bidirectional few-step student (whole clip at once): no-grad steps
    with fresh re-noising up to the exit index, then the exit step with grad. x0 (B, C, F, H, W)."""
    sig = _levels(sigmas, "rollout_bidirectional")
    _check_exit(exit_index, sig)
    renoise = {}
    denoiser = FlowDenoiser(model, context)
    x_s, v1, x0 = _backward_simulation(denoiser, denoiser, noise, sig, exit_index, generator, grad, renoise, 0)
    if on_exit is not None:
        on_exit(0, x_s, v1, denoiser.velocity)
    return Rollout(x0, sig[exit_index], renoise)
