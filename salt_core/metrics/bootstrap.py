"""Bootstrap confidence intervals of a mean over independent units (clips, seeds).

Percentile bootstrap: resample the units with replacement, take the mean of each resample, and read the
interval off the quantiles of those means. Pure tensor code; knows nothing of models or worlds.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval [lo, hi] at `level`, over `n` units."""
    mean: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    @property
    def rel_width(self) -> float:
        """Interval width relative to |mean| (inf when the mean is 0)."""
        return (self.hi - self.lo) / abs(self.mean) if self.mean else float("inf")

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def bootstrap_ci(values, num_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """The mean of `values` (N,) over N independent units and its percentile-bootstrap interval at `level`.

    Resamples are drawn from a generator seeded with `seed`, so a report is reproducible. N = 1 gives a
    zero-width interval (nothing to resample).
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("bootstrap_ci(values=[]): expected at least one value")
    if not torch.isfinite(v).all():
        raise ValueError(f"bootstrap_ci: {int((~torch.isfinite(v)).sum())} of {v.numel()} values are NaN/inf; "
                         f"a mean over them is meaningless — find where they come from")
    if not 0 < level < 1 or num_resamples < 1:
        raise ValueError(f"bootstrap_ci(level={level}, num_resamples={num_resamples}): expected 0 < level < 1 and "
                         f"at least one resample")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (num_resamples, v.numel()), generator=gen)
    means = v[idx].mean(dim=1)                                                   # (num_resamples,)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Interval(v.mean().item(), lo, hi, v.numel(), level)
