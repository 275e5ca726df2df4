"""The method lab's tables from evaluated runs (`lab_experiment.load_results`): per arm and NFE, means over
training seeds with 95 % Student-t intervals over the per-seed values (INTERVAL_METHOD; each seed's value is the
metric over its clips); paired differences against each arm's reference (per seed, on the same clips and noise);
and the paper's claims with a verdict each (rules at CLAIMS). Rows without seeds (the teachers, the ODE inits) get
a percentile bootstrap over their clips. Knows nothing of running or evaluating the arms.

Why t and not the two-level bootstrap used before (issue 27): with 3 seeds that bootstrap covers a true difference
about 80 % of the time when the seeds' spread dominates (tests/test_intervals.py), and the lab's Salt − DMD
differences are such; the t interval holds 95 % at any seed count for normal seed means.
"""
import torch

from comfyui_salt.experiments.lab_arms import (ARMS, EVAL_NFE, EVAL_SEED, ODE_INITS, REFERENCE, REFERENCE_OF,
                                               REFERENCES)

INTERVAL_METHOD = ("95 % Student-t over per-seed values (N − 1 df); rows without seeds: percentile bootstrap over "
                   "clips")

METRICS = ("var_ratio", "mean_err", "coverage", "switch", "drift", "loglik", "defect8")
DIFFS = ("var_ratio", "mean_err", "drift", "defect8")
COMPACT_METRICS = ("var_ratio", "mean_err", "switch", "drift", "defect8")   # the docs' table (docs/method_lab.md)
COMPACT_DIFFS = ("mean_err", "drift", "defect8")
SHARED_NOISE = ("evaluation noise shared by every seed (evaluations of version 2): the intervals leave out the "
                "sampling variance of the clips' noise, which all seeds share")
DIGITS = {"defect8": 4}    # the defect is ~0.02: 3 decimals would hide its interval


def _tensors(r: dict, key: str) -> dict:
    """The per-clip lists of one run's NFE row as tensors, converted once (bootstrap draws reuse them)."""
    cache = r.setdefault("_tensors", {})
    if key not in cache:
        row = r["nfe"][key]
        as64 = lambda v: None if v is None else torch.as_tensor(v, dtype=torch.float64)   # noqa: E731
        cache[key] = {"mode": torch.as_tensor(row["mode"]), "w": as64(row["w"]), "gram": torch.as_tensor(row["gram"]),
                      "captions": torch.as_tensor(r["captions"]), "defect8": as64(r["defect8"]),
                      **{k: as64(row[k]) for k in ("loglik", "switch", "drift")}}
    return cache[key]


def metric_fn(name: str, nfe: int, world):
    """f(lab_eval dict, counts (clips,)) -> float: one metric of one run, its clips repeated `counts` times."""
    from comfyui_salt.toy.lab.metrics import coverage_error, mode_mean_error_gram, within_mode_variance
    key = str(nfe)

    def f(r, c):
        t = _tensors(r, key)
        if name in ("var_ratio", "var_gap"):   # var_gap = |var_ratio − 1|: detail lost or noise added
            v = within_mode_variance(t["w"], t["mode"], c)
            return v if name == "var_ratio" else abs(v - 1.0)
        if name == "mean_err":
            return mode_mean_error_gram(t["gram"], t["mode"], r["nfe"][key]["dims"], c)
        if name == "coverage":
            return coverage_error(world, t["mode"], t["captions"], c)
        values = t[name]
        return float("nan") if values is None else float((values * c).sum() / c.sum())
    return f


def seed_values(runs: list, f) -> list:
    """f of each run (seed) on all its clips once."""
    return [f(r, torch.ones(len(r["captions"]), dtype=torch.float64)) for r in runs]


def interval(runs: list, f, resamples: int = 1000, seed: int = 0, over: str = "seeds"):
    """The mean over seeds of f with its t interval over the per-seed values (NaN with one seed); over="clips": one
    run's value with a percentile bootstrap over its clips (reference rows, which have no seeds). Paired
    differences: `paired_interval`."""
    from comfyui_salt.salt_core.metrics.bootstrap import nested_bootstrap, seed_t_interval
    if over == "clips":
        (run,) = runs
        return nested_bootstrap(lambda draw: f(run, draw[0][1]), [len(run["captions"])], resamples, seed=seed)
    return seed_t_interval(seed_values(runs, f))


def fmt_interval(iv, digits=3) -> str:
    """"mean [lo, hi]"; the mean alone when there is no interval (one seed); "" when there is no mean."""
    if iv.mean != iv.mean:
        return ""
    if iv.lo != iv.lo:
        return f"{iv.mean:.{digits}f}"
    return f"{iv.mean:.{digits}f} [{iv.lo:.{digits}f}, {iv.hi:.{digits}f}]"


def format_table(results: dict, resamples: int = 1000, compact: bool = False) -> str:
    """The markdown table of finished runs: per arm and NFE, means [95 % intervals] and paired Δ (arm − reference,
    same seeds, clips and resamples) against the reference arm of its student kind (`dmd` or `bidir-dmd`; REFERENCE_OF
    for the arms paired otherwise).
    `compact`: the columns of the docs' table only (COMPACT_METRICS, COMPACT_DIFFS, SC and aligned update counts)."""
    from comfyui_salt.toy.worlds import get_world
    if not results:
        return "no evaluated runs yet"
    world = get_world(next(iter(next(iter(results.values())).values()))["config"]["world"]).lab
    metrics, diffs = (COMPACT_METRICS, COMPACT_DIFFS) if compact else (METRICS, DIFFS)
    count_keys = ("sc_updates", "align_updates") + (() if compact else ("gen_updates",))
    head = (["arm", "seeds", "NFE"] + list(metrics) + ["vs"] + [f"Δ{m}" for m in diffs]
            + ["SC updates", "aligned updates", "generator updates"][:len(count_keys)])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ref in [r for r in REFERENCES + tuple(ODE_INITS.values()) if r in results]:   # no seeds, no differences
        run = results[ref][0]
        for key in run["nfe"]:
            cells = [f"{ref} (Euler)" if ref in REFERENCES else ref, "", key]
            cells += [fmt_interval(interval([run], metric_fn(m, int(key), world), resamples=resamples, over="clips"),
                           DIGITS.get(m, 3)) for m in metrics]
            lines.append("| " + " | ".join(cells + [""] * (len(head) - len(cells))) + " |")
    for arm in [a for a in ARMS if a in results]:
        seeds = sorted(results[arm])
        runs = [results[arm][s] for s in seeds]
        ref_arm = REFERENCE_OF.get(arm, REFERENCE[runs[0]["config"]["student_kind"]])
        ref = results.get(ref_arm, {})
        paired = [s for s in seeds if s in ref]
        counts = [sum(r["summary"].get(k, 0) for r in runs) for k in count_keys]
        for nfe in EVAL_NFE:
            cells = [arm, str(len(seeds)), str(nfe)]
            for m in metrics:
                cells.append(fmt_interval(interval(runs, metric_fn(m, nfe, world), resamples=resamples),
                                          DIGITS.get(m, 3)))
            cells.append(ref_arm if arm != ref_arm and paired else "")
            for m in diffs:
                if arm == ref_arm or not paired:
                    cells.append("")
                    continue
                cells.append(fmt_interval(paired_interval(results, arm, nfe, ref_arm, nfe, m, world,
                                                  resamples=resamples)[0], 4))
            cells += [str(c) for c in counts]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The paper's five claims (the first in both student kinds), read from paired arms: (claim, arm, NFE, reference
# arm, reference NFE, test).
# Tests: "quality" = per-mode mean error and |var_ratio − 1|, lower is better; "non-inferior" = the same two, at
# least as good; "drift" = the switch rate per chunk boundary on the 3×-length rollout; "defect" = the ratio of
# 8-step semigroup defects. Verdicts, from 95 % paired t intervals over seeds of arm − reference (or arm / reference):
# "reproduces" (the claimed effect, shown), "opposite" (an effect of the other sign, shown), "does not" (the claimed
# effect of practical size ruled out: the interval excludes an improvement of MARGIN × the reference's value, or
# the defect bar), "inconclusive" (none of these at this power); "mixed" where one metric improves and one worsens
# by the practical size.
#   quality: with one metric better (interval below 0): reproduces if every other one lies below +MARGIN × ref
#            (not worse by the practical size: "not shown worse" alone let a metric of any width pass), mixed if one
#            lies above it (worse by that size, shown), else inconclusive (so a wider interval never gives a
#            stronger word); with none better: opposite if one is worse (interval above 0), does not if no metric's
#            interval reaches below −MARGIN × ref;
#   non-inferior, in this order: reproduces if both intervals lie below +MARGIN × ref (even if one is above 0:
#            worse by less than the margin is non-inferior); opposite if one lies above +MARGIN × ref (worse by
#            more: the claim ruled out); else inconclusive (an interval above 0 that reaches past the margin is
#            worse by an amount it does not pin: it used to read "does not", which a wider interval then reached
#            more easily);
#   drift: reproduces below 0, opposite above 0, does not if the interval lies above −MARGIN × ref;
#   defect: reproduces if the ratio's interval lies at or below 0.82, opposite above 1, does not above 0.82;
#   lower-ratio: the ratio's interval below 1 reproduces, above 1 opposite, above 1 − MARGIN does not.
# A "reproduces" whose intervals also rule out the practical size (below_margin) reads "reproduces, < 10 %": an
# effect shown to exist and to be small.
# A reference value of 0 makes the margin 0: "does not" is then out of reach for quality and drift.
CLAIMS = (
    ("SC-DMD's defect ≤ 0.82× DMD's, bidirectional", "bidir-sc-dmd", 4, "bidir-dmd", 4, "defect"),
    ("SC-DMD's defect ≤ 0.82× DMD's, autoregressive", "sc-dmd", 4, "dmd", 4, "defect"),
    ("SC-DMD beats DMD, bidirectional, 4 NFE", "bidir-sc-dmd", 4, "bidir-dmd", 4, "quality"),
    ("SC-DMD beats DMD, bidirectional, 2 NFE", "bidir-sc-dmd", 2, "bidir-dmd", 2, "quality"),
    ("Salt beats Self-Forcing DMD, 4 NFE", "salt", 4, "dmd", 4, "quality"),
    ("Salt beats Self-Forcing DMD, 2 NFE", "salt", 2, "dmd", 2, "quality"),
    ("Salt drifts less on 3× rollouts, 4 NFE", "salt", 4, "dmd", 4, "drift"),
    ("Salt drifts less on 3× rollouts, 2 NFE", "salt", 2, "dmd", 2, "drift"),
    ("Salt at 2 NFE ≥ DMD at 4 NFE", "salt", 2, "dmd", 4, "non-inferior"),
    ("Salt beats Self-Forcing DMD, exact real score, 4 NFE", "salt-exact", 4, "dmd-exact", 4, "quality"),
    ("Salt beats Self-Forcing DMD, exact real score, 2 NFE", "salt-exact", 2, "dmd-exact", 2, "quality"),
    ("Salt drifts less on 3× rollouts, exact real score, 4 NFE", "salt-exact", 4, "dmd-exact", 4, "drift"),
    ("Salt drifts less on 3× rollouts, exact real score, 2 NFE", "salt-exact", 2, "dmd-exact", 2, "drift"),
    # this pack's symmetric SC against the released form, everything else equal (not the paper's claims)
    ("Symmetric SC beats released Salt, 4 NFE", "salt-sym", 4, "salt", 4, "quality"),
    ("Symmetric SC beats released Salt, 2 NFE", "salt-sym", 2, "salt", 2, "quality"),
    ("Symmetric SC drifts less than released Salt, 4 NFE", "salt-sym", 4, "salt", 4, "drift"),
    ("Symmetric SC drifts less than released Salt, 2 NFE", "salt-sym", 2, "salt", 2, "drift"),
    ("Symmetric SC's defect below released Salt's", "salt-sym", 4, "salt", 4, "lower-ratio"),
    ("Symmetric SC at λ 2 beats released Salt, 4 NFE", "salt-sym2", 4, "salt", 4, "quality"),
    ("Symmetric SC at λ 2 beats released Salt, 2 NFE", "salt-sym2", 2, "salt", 2, "quality"),
    ("Symmetric SC at λ 2 drifts less than released Salt, 4 NFE", "salt-sym2", 4, "salt", 4, "drift"),
    ("Symmetric SC at λ 2 drifts less than released Salt, 2 NFE", "salt-sym2", 2, "salt", 2, "drift"),
    ("Symmetric SC at λ 2: defect below released Salt's", "salt-sym2", 4, "salt", 4, "lower-ratio"),
)
DEFECT_BAR = 0.82
MARGIN = 0.10                                         # the practical effect size, a share of the reference


def paired_interval(results: dict, arm: str, nfe: int, ref: str, ref_nfe: int, metric: str, world,
                    ratio: bool = False, resamples: int = 1000, level: float = 0.95):
    """(Interval of arm − ref (or arm / ref) on `metric`, seeds used, ref's own value): per seed the difference (or
    ratio) of the two runs' values on the same clips and noise, then the t interval over seeds at `level`; None when
    the two arms share no seed. `resamples` is unused (kept for callers)."""
    from comfyui_salt.salt_core.metrics.bootstrap import seed_t_interval
    seeds = sorted(set(results.get(arm, {})) & set(results.get(ref, {})))
    if not seeds:
        return None
    a, b = [results[arm][s] for s in seeds], [results[ref][s] for s in seeds]
    if any(x["captions"] != y["captions"] or noise_seed(x) != noise_seed(y) for x, y in zip(a, b)):
        raise ValueError(f"{arm} and {ref} were evaluated on different captions or noise at one seed: rerun their "
                         f"evaluations (lab_experiment.py redoes any of an older version)")
    fa, fb = metric_fn(metric, nfe, world), metric_fn(metric, ref_nfe, world)

    xs, ys = seed_values(a, fa), seed_values(b, fb)
    per_seed = [x / y if ratio else x - y for x, y in zip(xs, ys)]
    return seed_t_interval(per_seed, level), len(seeds), sum(ys) / len(ys)


def noise_seed(ev: dict) -> int:
    """The evaluation noise seed of one lab_eval record (version 2 kept none: EVAL_SEED for every seed)."""
    return ev.get("noise_seed", EVAL_SEED)


def noise_note(results: dict) -> str:
    """"" when the results' seeds were evaluated on their own noise, else the SHARED_NOISE caveat (several seeds of
    one arm on one noise seed)."""
    shared = any(len(runs) > 1 and len({noise_seed(r) for r in runs.values()}) == 1 for runs in results.values())
    return SHARED_NOISE if shared else ""


def claim_verdict(test: str, ivs: dict, ref_values: dict) -> str:
    """The verdict of one claim from its paired intervals `ivs` (metric → Interval) and the reference arm's values
    `ref_values` (metric → mean): "reproduces", "opposite", "does not", "mixed" or "inconclusive" (rules at CLAIMS)."""
    if any(iv.lo != iv.lo for iv in ivs.values()):           # one seed: no interval
        return "inconclusive"
    if test in ("defect", "lower-ratio"):
        iv = ivs["defect8"]
        if iv.hi <= DEFECT_BAR if test == "defect" else iv.hi < 1.0:
            return "reproduces"
        null_bar = DEFECT_BAR if test == "defect" else 1.0 - MARGIN
        return "opposite" if iv.lo > 1.0 else "does not" if iv.lo > null_bar else "inconclusive"
    margin = {m: MARGIN * abs(ref_values[m]) for m in ivs}
    better = [m for m, iv in ivs.items() if iv.hi < 0]
    worse = [m for m, iv in ivs.items() if iv.lo > 0]
    if test == "non-inferior":                              # checked in this order
        if all(iv.hi < margin[m] for m, iv in ivs.items()):
            return "reproduces"
        return "opposite" if any(iv.lo > margin[m] for m, iv in ivs.items()) else "inconclusive"
    if better:   # the others: worse by the margin, shown (mixed); under it (reproduces); else not pinned
        others = [(m, iv) for m, iv in ivs.items() if m not in better]
        if any(iv.lo > margin[m] for m, iv in others):
            return "mixed"
        return "reproduces" if all(iv.hi < margin[m] for m, iv in others) else "inconclusive"
    if worse:
        return "opposite"
    return "does not" if all(iv.lo > -margin[m] for m, iv in ivs.items()) else "inconclusive"


def mean_err_floor(world, captions: list, draws: int = 20, seed: int = 0) -> tuple:
    """The mean-error metric's finite-sample floor: data clips (the world's own sampler) for the evaluation's
    `captions`, modes assigned by the exact posterior as the students' are, scored like a student; (median, 95th
    percentile) over `draws` draws. A mean error (or a difference of two) within this is what perfect samples give."""
    from comfyui_salt.toy.lab.metrics import assign_modes, mode_mean_error
    caps = torch.as_tensor(captions)
    gen, values = torch.Generator().manual_seed(seed), []
    for _ in range(draws):
        video = world.sample(caps, generator=gen)[0]
        values.append(mode_mean_error(world, video, assign_modes(world, video, caps)[0]))
    values = torch.tensor(values, dtype=torch.float64)
    return float(values.median()), float(torch.quantile(values, 0.95))


CLAIM_METRICS = {"defect": ("defect8",), "lower-ratio": ("defect8",), "drift": ("drift",),
                 "quality": ("mean_err", "var_gap"), "non-inferior": ("mean_err", "var_gap")}


def below_margin(test: str, ivs: dict, ref_values: dict) -> bool:
    """True where every interval rules out an effect of practical size: an improvement of MARGIN × the reference's
    value (quality, drift) or a ratio below 1 − MARGIN (lower-ratio). With a "reproduces" verdict: the effect is
    shown, and shown to be small. False for the defect bar and non-inferiority (their thresholds are the claim's)."""
    if test == "lower-ratio":
        return ivs["defect8"].lo > 1.0 - MARGIN
    if test in ("quality", "drift"):
        return all(iv.lo > -MARGIN * abs(ref_values[m]) for m, iv in ivs.items())
    return False


def verdict_text(row: dict) -> str:
    """A claim row's verdict, with ", < 10 %" where it reproduces by less than the practical size (below_margin)."""
    small = row["verdict"] == "reproduces" and below_margin(row["test"], row["ivs"], row["refs"])
    return row["verdict"] + (f", < {MARGIN * 100:.0f} %" if small else "")


def claim_rows(results: dict, level: float = 0.95) -> list:
    """The claims (CLAIMS) whose arms `results` holds, each a dict: claim, arm, nfe, ref, ref_nfe, test, seeds (the
    seeds both arms share), ivs ({metric: paired Interval at `level`}: arm − ref, or arm / ref for the defect
    tests), refs ({metric: the reference's mean}) and verdict."""
    from comfyui_salt.toy.worlds import get_world
    arms = [r for r in results if r in ARMS]
    if not arms:
        return []
    world = get_world(next(iter(results[arms[0]].values()))["config"]["world"]).lab
    rows = []
    for claim, arm, nfe, ref, ref_nfe, test in CLAIMS:
        ivs, refs, seeds = {}, {}, 0
        for m in CLAIM_METRICS[test]:
            got = paired_interval(results, arm, nfe, ref, ref_nfe, m, world, ratio=test in ("defect", "lower-ratio"),
                                  level=level)
            if got is None:
                break
            ivs[m], seeds, refs[m] = got
        if ivs:
            rows.append(dict(claim=claim, arm=arm, nfe=nfe, ref=ref, ref_nfe=ref_nfe, test=test, seeds=seeds, ivs=ivs,
                             refs=refs, verdict=claim_verdict(test, ivs, refs)))
    return rows


def claims_floor(results: dict) -> tuple:
    """mean_err's finite-sample floor (median, 95th percentile; `mean_err_floor`) on the captions of `results`."""
    from comfyui_salt.toy.worlds import get_world
    first = next(iter(results[next(r for r in results if r in ARMS)].values()))
    return mean_err_floor(get_world(first["config"]["world"]).lab, first["captions"])


def format_claims(results: dict, resamples: int = 1000, rows: list = None) -> str:
    """The verdict table of the paper's claims from finished runs (claims whose arms are missing are skipped);
    `rows`: `claim_rows(results)` where the caller has them already. `resamples` is unused (kept for callers)."""
    rows = claim_rows(results) if rows is None else rows
    if not rows:
        return ""
    floor = claims_floor(results)
    lines = ["| claim | arm @NFE | vs @NFE | seeds | paired intervals | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        sign = "/" if r["test"] in ("defect", "lower-ratio") else "Δ"
        cells = "; ".join(f"{sign}{m} {fmt_interval(iv, 4)}" for m, iv in r["ivs"].items())
        if "mean_err" in r["ivs"]:
            cells += f" (mean_err floor {floor[0]:.4f})"
        lines.append(f"| {r['claim']} | {r['arm']} @{r['nfe']} | {r['ref']} @{r['ref_nfe']} | {r['seeds']} | {cells} | "
                     f"{verdict_text(r)} |")
    note = noise_note(results)
    return "\n".join(lines + [f"\nIntervals: {INTERVAL_METHOD}{'; ' + note if note else ''}. mean_err's floor (data "
                               f"clips of the same captions scored against the truth, 20 draws): median "
                               f"{floor[0]:.4f}, 95th percentile {floor[1]:.4f}."])


PROGRESS_METRICS = ("var_ratio", "var_gap", "mean_err", "switch", "drift", "defect8")


def format_progress(results: dict, earlier: dict, resamples: int = 1000) -> str:
    """The markdown table of what more updates changed: per arm in both and NFE, each metric's mean in `earlier`
    (the same arms and seeds trained for fewer updates, evaluated on the same clips and noise) and here, and the
    paired Δ (here − earlier, same seeds, clips and resamples); "" when no arm is in both."""
    from comfyui_salt.toy.worlds import get_world
    arms = [a for a in ARMS if a in results and a in earlier]
    if not arms:
        return ""
    world = get_world(next(iter(results[arms[0]].values()))["config"]["world"]).lab
    head = ["arm", "seeds", "NFE", "updates"] + [f"{m} (Δ)" for m in PROGRESS_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        both = {arm: results[arm], f"{arm}@earlier": earlier[arm]}
        updates = [f"{sorted({r['summary'].get('gen_updates', 0) for r in runs.values()})}"
                   for runs in (earlier[arm], results[arm])]
        for nfe in EVAL_NFE:
            cells, seeds = [], 0
            for m in PROGRESS_METRICS:
                got = paired_interval(both, arm, nfe, f"{arm}@earlier", nfe, m, world, resamples=resamples)
                if got is None:
                    break
                iv, seeds, before = got
                digits = DIGITS.get(m, 3)
                cells.append(f"{before:.{digits}f} → {before + iv.mean:.{digits}f} ({fmt_interval(iv, digits + 1)})")
            if cells:
                lines.append(f"| {arm} | {seeds} | {nfe} | {' → '.join(updates)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""

