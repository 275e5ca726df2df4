"""Mixed-step training draws (docs/method.md §3): the step count K per iteration and the exit index.

Every rank must run the same number of forwards, so all ranks draw from a torch.Generator seeded
identically (e.g. from (seed, step)); the draws are then equal without a broadcast.
"""
import torch


def sample_rollout_steps(generator: torch.Generator = None, choices=(8, 4, 2), probs=(0.4, 0.4, 0.2)) -> int:
    """The step count K for this iteration: choices[k] with probability probs[k] (release: 8/4/2 at 0.4/0.4/0.2)."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    if len(choices) == 0 or p.ndim != 1 or p.numel() != len(choices):
        raise ValueError(f"choices={tuple(choices)}, probs={tuple(probs)}: expected one probability per choice")
    if (p < 0).any() or abs(p.sum().item() - 1.0) > 1e-6:
        raise ValueError(f"probs={tuple(probs)}: expected non-negative probabilities summing to 1")
    device = generator.device if generator is not None else None
    u = torch.rand(1, generator=generator, device=device, dtype=torch.float64).item()
    cumulative = p.cumsum(0).tolist()
    k = next((i for i, c in enumerate(cumulative) if u < c), len(choices) - 1)  # last bin absorbs rounding
    while p[k] == 0:                                                          # never return a 0-probability choice
        k -= 1
    return int(choices[k])


def sample_exit_index(num_steps: int, generator: torch.Generator = None) -> int:
    """The gradient-carrying step of a K-step rollout: uniform over 0..K-1."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r}: expected a positive integer step count K")
    device = generator.device if generator is not None else None
    return int(torch.randint(0, num_steps, (1,), generator=generator, device=device).item())
