"""Training rollouts of a few-step student: Self Forcing chunk rollouts on a KV cache, the Salt
reference rollout with its own cache, and bidirectional backward simulation.

Self Forcing rollout (REFERENCE §3, SALT_METHOD §3): per chunk, the steps before the exit index
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

from .kv_cache import CachePolicy
from .schedules import add_noise, randn_like, x0_from_velocity


@dataclass
class Rollout:
    """What a rollout produced. x0 (B, C, F, H, W): chunk outputs at the exit step (grad if enabled)."""
    x0: torch.Tensor
    exit_sigma: float
    renoise: dict = field(default_factory=dict)   # {(chunk, grid index): fresh noise used to reach that level}


def _t(sigma: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0], x.shape[2]), 1000.0 * float(sigma), dtype=torch.float64, device=x.device)


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
    sig = [float(s) for s in sigmas if float(s) > 0]
    if not 0 <= exit_index < len(sig):
        raise ValueError(f"exit_index={exit_index}: expected 0 <= exit_index < {len(sig)} (steps in the grid)")
    B, C, num_f, H, W = noise.shape
    cache = cache if cache is not None else model.new_cache(B, policy, (H, W))
    cache.reset()
    outs, renoise = [], {}
    for c, f0 in enumerate(range(0, num_f, chunk_frames)):
        x = noise[:, :, f0:f0 + chunk_frames]
        with torch.no_grad():
            for i in range(exit_index):
                v = model(x, _t(sig[i], x), context, cache=cache, start_frame=f0, write_cache=True)
                eps = randn_like(x, generator)
                renoise[(c, i + 1)] = eps
                x = add_noise(x0_from_velocity(x, v, sig[i]), eps, sig[i + 1])
        s = sig[exit_index]
        with torch.set_grad_enabled(grad):
            v1 = model(x, _t(s, x), context, cache=cache, start_frame=f0, write_cache=False)
            x0 = x0_from_velocity(x, v1, s)
        if on_exit is not None:
            def velocity_fn(x_m, sigma_m, _f0=f0):
                return model(x_m, _t(sigma_m, x_m), context, cache=cache, start_frame=_f0, write_cache=False)
            on_exit(c, x, v1, velocity_fn)
        with torch.no_grad():
            ctx_x = x0.detach()
            if context_noise > 0:
                ctx_x = add_noise(ctx_x, randn_like(ctx_x, generator), context_noise)
            model(ctx_x, _t(context_noise, ctx_x), context, cache=cache, start_frame=f0, write_cache=True)
        outs.append(x0)
    return Rollout(torch.cat(outs, 2), sig[exit_index], renoise)


@torch.no_grad()
def rollout_reference(model, noise: torch.Tensor, context: torch.Tensor, student_sigmas, exit_index: int,
                      dense_sigmas, student_renoise: dict, *, policy: CachePolicy, chunk_frames: int = 3,
                      coupling: str = "noise_aligned", context_noise: float = 0.0,
                      generator: Optional[torch.Generator] = None, cache=None) -> torch.Tensor:
    """Salt's reference rollout (SALT_METHOD §3): same initial noise, current weights, no grad, the
    denser grid down to the student's exit level, its own KV cache filled from its own outputs.

    `noise_aligned`: deterministic Euler steps between dense points off the student grid, the
    student's own re-noise draw at shared grid points; `independent`: fresh noise at every step.
    Returns x0 (B, C, F, H, W) at the student's exit level.
    """
    if coupling not in ("noise_aligned", "independent"):
        raise ValueError(f"coupling={coupling!r}; expected 'noise_aligned' or 'independent'")
    s_sig = [float(s) for s in student_sigmas if float(s) > 0]
    target = s_sig[exit_index]
    dense = [float(s) for s in dense_sigmas if float(s) >= target - 1e-9]
    if abs(dense[-1] - target) > 1e-6:
        raise ValueError(f"dense grid {dense} does not contain the student's exit level {target}")
    B, C, num_f, H, W = noise.shape
    cache = cache if cache is not None else model.new_cache(B, policy, (H, W))
    cache.reset()
    outs = []
    for c, f0 in enumerate(range(0, num_f, chunk_frames)):
        x = noise[:, :, f0:f0 + chunk_frames]
        for j, s in enumerate(dense):
            v = model(x, _t(s, x), context, cache=cache, start_frame=f0, write_cache=True)
            x0 = x0_from_velocity(x, v, s)
            if j + 1 == len(dense):
                break
            nxt = dense[j + 1]
            shared = [k for k, ss in enumerate(s_sig) if abs(ss - nxt) < 1e-6]
            if coupling == "noise_aligned" and shared and (c, shared[0]) in student_renoise:
                x = add_noise(x0, student_renoise[(c, shared[0])], nxt)
            elif coupling == "noise_aligned":
                x = (x0.double() + (nxt / s) * (x.double() - x0.double())).to(x.dtype)   # Euler step
            else:
                x = add_noise(x0, randn_like(x, generator), nxt)
        ctx_x = x0 if context_noise == 0 else add_noise(x0, randn_like(x0, generator), context_noise)
        model(ctx_x, _t(context_noise, ctx_x), context, cache=cache, start_frame=f0, write_cache=True)
        outs.append(x0)
    return torch.cat(outs, 2)


def rollout_bidirectional(model, noise: torch.Tensor, context: torch.Tensor, sigmas, exit_index: int, *,
                          generator: Optional[torch.Generator] = None, grad: bool = True,
                          on_exit: Optional[Callable] = None) -> Rollout:
    """Backward simulation of a bidirectional few-step student (whole clip at once): no-grad steps
    with fresh re-noising up to the exit index, then the exit step with grad. x0 (B, C, F, H, W)."""
    sig = [float(s) for s in sigmas if float(s) > 0]
    if not 0 <= exit_index < len(sig):
        raise ValueError(f"exit_index={exit_index}: expected 0 <= exit_index < {len(sig)} (steps in the grid)")
    x, renoise = noise, {}
    with torch.no_grad():
        for i in range(exit_index):
            v = model(x, 1000.0 * torch.full((x.shape[0],), sig[i], dtype=torch.float64), context)
            eps = randn_like(x, generator)
            renoise[(0, i + 1)] = eps
            x = add_noise(x0_from_velocity(x, v, sig[i]), eps, sig[i + 1])
    s = sig[exit_index]
    with torch.set_grad_enabled(grad):
        v1 = model(x, 1000.0 * torch.full((x.shape[0],), s, dtype=torch.float64), context)
        x0 = x0_from_velocity(x, v1, s)
    if on_exit is not None:
        def velocity_fn(x_m, sigma_m):
            return model(x_m, 1000.0 * torch.full((x_m.shape[0],), float(sigma_m), dtype=torch.float64), context)
        on_exit(0, x, v1, velocity_fn)
    return Rollout(x0, s, renoise)
