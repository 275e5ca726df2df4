"""Confidence intervals of a mean over independent units (clips, seeds).

Percentile bootstrap: resample the units with replacement, take the mean of each resample, and read the
interval off the quantiles of those means. With few units (training seeds: 3 to 10) a percentile bootstrap
under-covers (it treats the units' spread as known; at 3 seeds a nominal 95 % interval covers about 80 %), so
means over seeds get `seed_t_interval`: Student's t over the per-seed values, exact for normal seed means at any
count. Pure tensor code; knows nothing of models or worlds.
"""
import functools
import math
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


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` ≥ 1 degrees of freedom (0 < p < 1): within 1e-10 relative of SciPy's
    up to p = 1 − 1e-4 (Bonferroni levels at 1 degree of freedom: t in the thousands), 1e-5 at p = 1 − 1e-9.
    With t = √df·tan θ the CDF is 1/2 + c·∫₀^θ cos^(df−1) u du, c = Γ((df+1)/2) / (Γ(df/2)·√π): a bounded, smooth
    integrand on [0, π/2), taken by Simpson's rule (2,000 intervals) and inverted by bisection in θ (cached).
    (Integrating the density in t itself lost accuracy past t ≈ 400: 1 degree of freedom at p = 1 − 0.05/136 gave
    5,706 for 866.)"""
    if not 0 < p < 1 or int(df) != df or df < 1:
        raise ValueError(f"t_quantile(p={p}, df={df}): expected 0 < p < 1 and an integer df >= 1")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    weights = torch.ones(2001, dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0

    def cdf(theta: float) -> float:
        return 0.5 + c * float((weights * torch.cos(grid * theta) ** (df - 1)).sum()) * theta / (3 * 2000)
    lo, hi = 0.0, math.pi / 2
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return math.sqrt(df) * math.tan((lo + hi) / 2)


TIE_DIGITS = 6      # seed values whose spread is below this many significant digits of the largest tie
TIE_FLOOR = 1e-12   # and below this absolutely (a tie at 0 summed in two orders: ±1e-17)


def seed_t_interval(values, level: float = 0.95) -> Interval:
    """The mean of per-seed values (N,) (one number per training seed: a metric over that seed's clips, or a
    paired difference) with Student's t interval, mean ± t(N − 1) · sd / √N. Its level holds at any seed count when
    the per-seed values are independent normal draws: each seed trained and evaluated on its own noise, so the
    clips' own variance is in the seeds' spread (evaluated on one shared noise, that part is common to all seeds
    and the interval leaves it out: tests/test_intervals.py). One seed: a NaN interval (no spread to read);
    likewise seeds whose values tie (a discrete metric, e.g. one mode switch more in every seed: the zero spread is
    the metric's grain, not a certainty), equal to TIE_DIGITS significant digits (the precision evaluations are
    stored with: one tie summed in two orders differs in the last bits) or within TIE_FLOOR. A NaN among the values
    (a metric a run does not define, e.g. drift of a bidirectional student) makes the whole interval NaN; ±inf is
    refused."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0 or v.isinf().any():
        raise ValueError(f"seed_t_interval(values={v.tolist()}): expected at least one finite value per seed")
    if v.isnan().any():
        return Interval(float("nan"), float("nan"), float("nan"), v.numel(), level)
    if not 0 < level < 1:
        raise ValueError(f"seed_t_interval(level={level}): expected 0 < level < 1")
    n, mean = v.numel(), v.mean().item()
    sd = v.std(unbiased=True).item() if n > 1 else 0.0
    if sd <= 10.0 ** -TIE_DIGITS * v.abs().max().item() + TIE_FLOOR:
        return Interval(mean, float("nan"), float("nan"), n, level)
    half = t_quantile(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, level)
