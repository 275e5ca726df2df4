"""The committed 8-seed verdicts, recomputed from the kept evaluations without the lab's code.

experiments/results/lab_verdicts_8seeds.md is what the README and docs/method_lab.md quote. Every row of it that
rests on the semigroup defect or on drift is recomputed here from the gzipped per-clip evaluations it names (plain
gzip + json + numpy: per seed the ratio of mean defects or the difference of mean drifts, then a Student-t interval
with t quantiles from a printed table, not salt_core's t_quantile), and its verdict word from the rules as the
file's header states them. A result file edited by hand, or made from other evaluations than those kept, or an
interval or verdict rule that drifts in the lab's code, fails here."""
import gzip
import json
import math
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERDICTS = os.path.join(ROOT, "experiments", "results", "lab_verdicts_8seeds.md")
# two-sided 95 % Student-t quantiles t(0.975, df), df = 1..15, from a printed table
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
        2.1448, 2.1314)
MARGIN, BAR = 0.10, 0.82     # the header's "10 % margin of the reference" and the paper's defect ratio
ROW = re.compile(r"^\| (?P<claim>[^|]+) \| (?P<arm>\S+) @(?P<nfe>\d) \| (?P<ref>\S+) @(?P<rnfe>\d) \| "
                 r"(?P<seeds>\d+) \| (?P<kind>/defect8|Δdrift) "
                 r"(?P<mean>-?[\d.]+) \[(?P<lo>-?[\d.]+), (?P<hi>-?[\d.]+)\] \| "
                 r"(?P<verdict>[^|]+) \|$")


def _rows():
    """(budget section, kept folder, row match) for every defect and drift row of the verdict file."""
    with open(VERDICTS, encoding="utf-8") as f:
        text = f.read()
    out = []
    for section in text.split("\n## ")[1:]:
        head = re.match(r"([\d,]+) updates \(`([^`]+)`\)", section)
        if not head:
            continue
        for line in section.splitlines():
            m = ROW.match(line)
            if m:
                out.append((head.group(1), os.path.join(ROOT, head.group(2)), m))
    return out


def _kept(folder: str, arm: str) -> dict:
    """{seed: evaluation} of one arm's kept runs."""
    runs = {}
    base = os.path.join(folder, arm)
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name, "lab_eval.json.gz")
        if name.startswith("seed") and os.path.exists(path):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                runs[int(name[4:])] = json.load(f)
    return runs


def _t_interval(values):
    v = np.asarray(values, dtype=np.float64)
    half = T975[len(v) - 2] * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean(), v.mean() - half, v.mean() + half


def _verdict(claim: str, kind: str, lo: float, hi: float, ref: float) -> str:
    if kind == "/defect8" and "0.82" in claim:                  # the paper's bar
        return ("reproduces" if hi <= BAR else "opposite" if lo > 1 else "does not" if lo > BAR
                else "inconclusive")
    if kind == "/defect8":                                     # lower than the reference's
        if hi < 1:
            return "reproduces, < 10 %" if lo > 1 - MARGIN else "reproduces"
        return "opposite" if lo > 1 else "does not" if lo > 1 - MARGIN else "inconclusive"
    bar = MARGIN * abs(ref)                                   # drift: lower is better
    if hi < 0:
        return "reproduces, < 10 %" if lo > -bar else "reproduces"
    return "opposite" if lo > 0 else "does not" if lo > -bar else "inconclusive"


ROWS = _rows()


def test_the_verdict_file_has_defect_and_drift_rows_at_8_seeds():
    assert sum(m.group("kind") == "/defect8" for _, _, m in ROWS) >= 4
    assert sum(m.group("kind") == "Δdrift" for _, _, m in ROWS) >= 6
    assert all(int(m.group("seeds")) >= 8 for _, _, m in ROWS)


@pytest.mark.parametrize("budget,folder,row", ROWS, ids=[f"{b}-{m.group('claim')}" for b, _, m in ROWS])
def test_each_defect_and_drift_verdict_recomputes_from_the_kept_evaluations(budget, folder, row):
    arm, ref = _kept(folder, row.group("arm")), _kept(folder, row.group("ref"))
    seeds = sorted(set(arm) & set(ref))
    assert len(seeds) == int(row.group("seeds"))
    nfe, rnfe = row.group("nfe"), row.group("rnfe")
    for s in seeds:   # paired: the same clips and noise at one seed
        assert arm[s]["captions"] == ref[s]["captions"] and arm[s]["noise_seed"] == ref[s]["noise_seed"]
    if row.group("kind") == "/defect8":
        per_seed = [np.mean(arm[s]["defect8"]) / np.mean(ref[s]["defect8"]) for s in seeds]
        ref_value = np.mean([np.mean(ref[s]["defect8"]) for s in seeds])
    else:
        per_seed = [np.mean(arm[s]["nfe"][nfe]["drift"]) - np.mean(ref[s]["nfe"][rnfe]["drift"]) for s in seeds]
        ref_value = np.mean([np.mean(ref[s]["nfe"][rnfe]["drift"]) for s in seeds])
    mean, lo, hi = _t_interval(per_seed)
    printed = [float(row.group(k)) for k in ("mean", "lo", "hi")]
    assert printed == pytest.approx([mean, lo, hi], abs=1.5e-4)   # printed to 4 decimals; t to 4 digits
    assert row.group("verdict").strip() == _verdict(row.group("claim"), row.group("kind"), lo, hi, ref_value)
