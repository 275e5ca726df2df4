"""The method lab's verdicts at every training budget in one file, regenerated from the kept evaluations (issue 27).

One command reads each budget's evaluations (the gzipped `lab_eval.json` files `lab_experiment.py --export` keeps in
the repository, or live run folders), reads every claim by the rules at `lab_tables.CLAIMS` and writes:
- one table of the claims against the budgets, a verdict and the seed count per cell (a cell with fewer seeds than
  `--min-seeds` is marked interim);
- per budget, the claims with their paired intervals, as `lab_experiment.py --table` prints them;
- each verdict read again family-wise: Bonferroni over every paired interval of that budget (M of them, each at
  1 − 0.05 / M), so that the chance of any false "reproduces", "opposite" or "does not" among a budget's claims stays
  at most 5 %, not 5 % per claim. A verdict that does not survive reads "inconclusive" family-wise (an "opposite"
  whose widened intervals still rule out the claimed size: "does not"); both are given.

    .venv/bin/python experiments/lab_verdicts.py --write experiments/results/lab_verdicts_8seeds.md
    .venv/bin/python experiments/lab_verdicts.py --budget 300=runs/lab-exp8 --budget 1000=runs/lab-exp8-long  # live
(`--budget` folders are read relative to the current folder; the default ones under the repository.)

Intervals: 95 % Student-t over per-seed values (`lab_tables.INTERVAL_METHOD`), paired by seed and clip; every arm at
one training seed samples that seed's evaluation noise (`lab_arms.eval_seed`), another for every seed.
"""
import argparse
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (updates, folder of kept evaluations): the 8-seed re-run's exports (experiments/lab_8seeds.sh). 2,000 is the longest
# budget the CPU allows: a run must finish on the machine it started on, which lasts one 3-hour session.
BUDGETS = ((300, "experiments/results/lab-exp8"), (1000, "experiments/results/lab-exp8-1k"),
           (2000, "experiments/results/lab-exp8-2k"))
MIN_SEEDS = 8
FAMILY_ALPHA = 0.05          # the chance of any false verdict among one budget's claims, read family-wise


def parse_budget(text: str) -> tuple:
    """`300=runs/lab-exp8` → (300, "runs/lab-exp8")."""
    updates, sep, folder = text.partition("=")
    if not sep or not updates.strip().isdigit() or not folder.strip():
        raise SystemExit(f"--budget {text!r}: expected UPDATES=FOLDER, e.g. 300=runs/lab-exp8")
    return int(updates), folder.strip()


def family_level(rows: list) -> tuple:
    """(M, level) of one budget's claim rows: M = every paired interval their verdicts read (a claim has one per
    metric; a claim with one seed has none, and reads inconclusive either way), each at level 1 − FAMILY_ALPHA / M
    (Bonferroni: all M cover at once with probability ≥ 95 %)."""
    m = sum(1 for r in rows for iv in r["ivs"].values() if iv.lo == iv.lo)
    return m, 1.0 - FAMILY_ALPHA / max(m, 1)


def family_word(verdict: str, widened: str) -> str:
    """The family-wise word of a claim: its verdict where the widened intervals give the same word; "does not"
    where an "opposite" widens to "does not" (the claimed effect is still ruled out, the other sign no longer
    shown: the weaker of the two statements); else "inconclusive". The rules are built so that widening never gives
    a stronger word (tests/test_lab_verdicts.py), but the family reading does not lean on that: it only keeps what
    survives, so it never reports a word the per-claim reading did not imply."""
    if widened == verdict or (verdict, widened) == ("opposite", "does not"):
        return widened
    return "inconclusive"


def budget_rows(budgets, base: str = ROOT, required: bool = False) -> dict:
    """{updates: (folder, results, claim rows)} of the budgets whose folder holds evaluated runs; relative folders
    are read under `base`. Each row also has "family": the same claim read with the family-wise intervals
    (`family_level`), its verdict by `family_word`. required: a folder that does not exist is an error (a budget
    the user named), else it is skipped (the default budgets not run yet)."""
    from comfyui_salt.experiments.lab_eval import load_results
    from comfyui_salt.experiments.lab_tables import claim_rows
    out = {}
    for updates, folder in budgets:
        path = os.path.join(base, folder)
        if required and not os.path.isdir(path):
            raise SystemExit(f"--budget {updates}={folder}: {path} is not a folder; name a lab_experiment.py --out "
                             f"folder or an export of one (e.g. experiments/results/lab-exp8)")
        results = load_results(path) if os.path.isdir(path) else {}
        rows = claim_rows(results)
        if rows:
            for row, family in zip(rows, claim_rows(results, family_level(rows)[1])):
                row["family"] = dict(family, verdict=family_word(row["verdict"], family["verdict"]))
            out[updates] = (folder, results, rows)
    return out


def verdict_matrix(found: dict, min_seeds: int = MIN_SEEDS) -> str:
    """Markdown: a row per claim (in CLAIMS order), a column per budget; each cell "verdict (n)" with n the paired
    seeds, "interim" where n < min_seeds, empty where the budget has no such run."""
    from comfyui_salt.experiments.lab_tables import CLAIMS, verdict_text
    budgets = sorted(found)
    by = {u: {r["claim"]: r for r in found[u][2]} for u in budgets}
    head = ["claim"] + [f"{u:,} updates" for u in budgets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for claim, *_ in CLAIMS:
        cells = []
        for u in budgets:
            r = by[u].get(claim)
            interim = ", interim" if r is not None and r["seeds"] < min_seeds else ""
            family = f"; family-wise {r['family']['verdict']}" if r and r["family"]["verdict"] != r["verdict"] else ""
            cells.append("" if r is None else f"{verdict_text(r)} ({r['seeds']}{interim}{family})")
        if any(cells):
            lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family_note(rows: list) -> str:
    """One budget's verdicts read family-wise: which change, with their widened intervals."""
    from comfyui_salt.experiments.lab_tables import fmt_interval
    m, level = family_level(rows)
    if m == 0:   # one seed everywhere: no interval to widen
        return "Family-wise: no paired intervals yet (one seed), nothing to widen."
    head = f"Family-wise (Bonferroni over the {m} paired intervals above, each at {100 * level:.2f} %): "
    changed = [r for r in rows if r["family"]["verdict"] != r["verdict"]]
    if not changed:
        return head + "every verdict holds."
    return head + "; ".join(f"{r['claim']}: {r['verdict']} → {r['family']['verdict']} ("
                            + ", ".join(f"{k} {fmt_interval(iv, 4)}" for k, iv in r["family"]["ivs"].items()) + ")"
                            for r in changed) + "."


def report(found: dict, min_seeds: int = MIN_SEEDS, made_by: str = "") -> str:
    """The whole file: how it was made, the matrix, and each budget's claims table."""
    from comfyui_salt.experiments.lab_tables import INTERVAL_METHOD, MARGIN, format_claims
    if not found:
        return "No budget has evaluated runs yet: run experiments/lab_8seeds.sh (or name live folders with --budget)."
    parts = ["# Method lab: the verdicts at every budget (issue 27)", "",
             f"Made by {made_by}." if made_by else "", "",
             f"Intervals: {INTERVAL_METHOD}; paired by seed and clip, every arm at one training seed on that seed's "
             "evaluation noise (`lab_arms.eval_seed`; a budget whose seeds share one noise says so). Verdict words "
             "(rules at "
             "`experiments/lab_tables.py` CLAIMS): reproduces (\"reproduces, < "
             f"{MARGIN * 100:.0f} %\": shown, and an effect of the margin's size ruled out), opposite (the other sign "
             "shown), does not (the "
             f"claimed size ruled out by a {MARGIN * 100:.0f} % margin of the reference), inconclusive at this "
             "power, mixed (one metric better, one worse by the margin). In brackets: the seeds both arms share; "
             f"cells with fewer than {min_seeds} are interim. "
             "\"Family-wise\": where the verdict changes when every interval of that "
             "budget is widened to Bonferroni's level (all of them cover at once with probability ≥ 95 %).", "",
             verdict_matrix(found, min_seeds)]
    for u in sorted(found):
        folder, results, rows = found[u]
        parts += ["", f"## {u:,} updates (`{folder}`)", "", format_claims(results, rows=rows), "",
                  family_note(rows)]
    return "\n".join(parts) + "\n"


def _commit() -> str:
    """The repository's short commit, for the report's header ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", action="append", type=parse_budget, metavar="UPDATES=FOLDER",
                    help="a budget and its evaluations (repeatable; default: the kept exports of lab_8seeds.sh)")
    ap.add_argument("--min-seeds", type=int, default=MIN_SEEDS, help="fewer paired seeds than this: interim")
    ap.add_argument("--write", default="", help="write the report to this file (default: print it)")
    args = ap.parse_args(argv)
    found = budget_rows(args.budget, os.getcwd(), required=True) if args.budget else budget_rows(BUDGETS)
    shown = " ".join(["experiments/lab_verdicts.py"] + [f"--budget {u}={f}" for u, f in args.budget or ()]
                     + ([f"--min-seeds {args.min_seeds}"] if args.min_seeds != MIN_SEEDS else []))
    text = report(found, args.min_seeds, f"`.venv/bin/python {shown}` at {_commit()}")
    if args.write:
        tmp = args.write + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, args.write)
        print(f"wrote {args.write}: {len(found)} budget(s)")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
