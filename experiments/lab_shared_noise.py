"""How much of each claim's uncertainty the seeds shared when every seed was evaluated on one noise (issue 27).

Until evaluation version 3 every run sampled its clips from one noise seed, so a claim's per-seed paired values
(arm − reference, or arm / reference) all rested on the same 48 noise draws. The t interval over seeds sees the
spread between training seeds, not what those draws did to the metric, a part every seed shares. This measures it
on kept version-2 evaluations with a joint clip bootstrap: each resample draws one multiset of the 48 clips and
uses it for every seed and both arms; across resamples, the covariance between two seeds' values is the variance
of the part they share (the mean of the off-diagonal covariances), which a t interval over seeds leaves out.

    .venv/bin/python experiments/lab_shared_noise.py --out experiments/results/lab-exp8-v2

Prints a table: per claim and metric, the t interval's standard error, the shared part's standard deviation,
their ratio, and the interval with the shared variance added (normal approximation: a sketch of what one noise
hid, not a verdict; the verdicts come from evaluation version 3, each seed on its own noise).
"""
import argparse
import math
import sys

import torch

from comfyui_salt.experiments.lab_eval import load_results
from comfyui_salt.experiments.lab_tables import CLAIM_METRICS, CLAIMS, metric_fn


def shared_part(results: dict, arm: str, nfe: int, ref: str, ref_nfe: int, metric: str, world, ratio: bool,
                resamples: int, gen: torch.Generator) -> dict:
    """{"values": (S,) per-seed paired values, "se_t": the t interval's standard error, "shared_sd": the shared
    part's standard deviation} of one claim metric over the seeds both arms hold."""
    seeds = sorted(set(results[arm]) & set(results[ref]))
    fa, fb = metric_fn(metric, nfe, world), metric_fn(metric, ref_nfe, world)
    clips = len(results[arm][seeds[0]]["captions"])

    def paired(counts):
        a = [fa(results[arm][s], counts) for s in seeds]
        b = [fb(results[ref][s], counts) for s in seeds]
        return torch.tensor([x / y if ratio else x - y for x, y in zip(a, b)], dtype=torch.float64)
    values = paired(torch.ones(clips, dtype=torch.float64))
    draws = torch.stack([paired(torch.bincount(torch.randint(0, clips, (clips,), generator=gen),
                                               minlength=clips).double()) for _ in range(resamples)])   # (R, S)
    cov, n = torch.cov(draws.T), len(seeds)
    shared = ((cov.sum() - cov.diag().sum()) / (n * (n - 1))).item()
    return {"values": values, "se_t": (values.std() / math.sqrt(n)).item(), "shared_sd": math.sqrt(max(shared, 0.0))}


def table(results: dict, resamples: int, seed: int = 0) -> str:
    """Markdown: one row per claim metric whose two arms `results` holds with two or more seeds in common."""
    from comfyui_salt.salt_core.metrics.bootstrap import t_quantile
    from comfyui_salt.toy.worlds import get_world
    first = next(iter(next(runs for name, runs in results.items() if name in {c[1] for c in CLAIMS}).values()))
    world = get_world(first["config"]["world"]).lab
    gen = torch.Generator().manual_seed(seed)
    lines = ["| claim | metric | seeds | mean | t s.e. | shared s.d. | shared / t s.e. | 95 % t "
             "| with the shared part |", "|---|---|---|---|---|---|---|---|---|"]
    for claim, arm, nfe, ref, ref_nfe, test in CLAIMS:
        if len(set(results.get(arm, {})) & set(results.get(ref, {}))) < 2:
            continue
        for metric in CLAIM_METRICS[test]:
            m = shared_part(results, arm, nfe, ref, ref_nfe, metric, world, test in ("defect", "lower-ratio"),
                            resamples, gen)
            v, n = m["values"], len(m["values"])
            q, mean = t_quantile(0.975, n - 1), v.mean().item()
            half, wide = q * m["se_t"], q * math.sqrt(m["se_t"] ** 2 + m["shared_sd"] ** 2)
            lines.append(f"| {claim} | {metric} | {n} | {mean:+.4f} | {m['se_t']:.4f} | {m['shared_sd']:.4f} | "
                         f"{m['shared_sd'] / m['se_t']:.2f} | [{mean - half:+.4f}, {mean + half:+.4f}]"
                         f" | [{mean - wide:+.4f}, {mean + wide:+.4f}] |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="experiments/results/lab-exp8-v2", help="evaluations of version 2 (one noise)")
    ap.add_argument("--resamples", type=int, default=200, help="joint clip resamples")
    args = ap.parse_args(argv)
    results = load_results(args.out)
    if any(r.get("version") != 2 for runs in results.values() for r in runs.values()):
        print(f"{args.out}: evaluations of version 3 give each seed its own noise; this measures version 2's shared "
              f"noise only", file=sys.stderr)
        return 2
    print(f"Joint clip bootstrap ({args.resamples} resamples, the same clips for every seed and both arms) on "
          f"`{args.out}`: the part of each paired claim value all seeds share.\n")
    print(table(results, args.resamples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
