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


def nested_bootstrap(stat, group_sizes, num_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Two-level percentile bootstrap of a statistic over groups of units (training seeds, then clips in a seed).

    `stat(draw) -> float`, draw a list of (group index, counts (n_g,) float64): the groups drawn with replacement,
    each with how often each of its units was drawn (units resampled within the group). The point estimate is
    stat on every group once with all counts 1; the interval reads the resampled stats' quantiles (NaN draws
    dropped). One group gives the clip-level interval alone; `Interval.n` is the number of groups.
    """
    sizes = [int(n) for n in group_sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"nested_bootstrap(group_sizes={sizes}): expected at least one group of at least one unit")
    if not 0 < level < 1 or num_resamples < 1:
        raise ValueError(f"nested_bootstrap(level={level}, num_resamples={num_resamples}): expected 0 < level < 1 "
                         f"and at least one resample")
    gen = torch.Generator().manual_seed(seed)
    point = stat([(g, torch.ones(n, dtype=torch.float64)) for g, n in enumerate(sizes)])
    vals = []
    for _ in range(num_resamples):
        groups = torch.randint(0, len(sizes), (len(sizes),), generator=gen).tolist()
        vals.append(stat([(g, torch.bincount(torch.randint(0, sizes[g], (sizes[g],), generator=gen),
                                             minlength=sizes[g]).double()) for g in groups]))
    v = torch.tensor(vals, dtype=torch.float64)
    v = v[~v.isnan()]
    if v.numel() == 0:
        return Interval(point, float("nan"), float("nan"), len(sizes), level)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(v, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Interval(point, lo, hi, len(sizes), level)
