"""The pack's one seed convention: a seed and the clip's noise shape give one clip, wherever it is sampled.

`seeded_noise(seed, shape)` draws the initial noise of the whole clip (B, C, F, H, W) at once from a CPU generator
seeded with `seed`, and returns that generator, which the sampler then uses for every re-noise (the stochastic
few-step update and the context noise of a KV re-cache), drawn on the CPU and moved (`schedules.randn_like`). The
streaming node, `stream_video`, `training.distill_eval.sample_student` and the evaluations built on it all start
here, so one seed and the same settings give bit-identical clips on one machine, and the same noise on any device
(docs/method.md §7 lists the callers). The live node is the one exception: an endless stream cannot draw the whole
clip's noise first; it draws chunk noise from a CPU generator seeded `seed` and re-noise from one seeded `seed + 1`.
"""
import torch

from .validate import check_count


def seeded_noise(seed: int, shape, device=None, dtype=None) -> tuple:
    """(noise, generator): noise of `shape` (e.g. (B, C, F, H, W)) drawn in float32 from a fresh CPU generator seeded
    `seed`, then moved to `device` / cast to `dtype`; the generator, advanced past it, is the re-noise source."""
    check_count("seed", seed, where="seeded_noise", minimum=0, maximum=2 ** 64 - 1)
    for i, size in enumerate(shape):
        check_count(f"shape[{i}]", size, where="seeded_noise")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(tuple(shape), generator=gen).to(device=device, dtype=dtype)
    return noise, gen
