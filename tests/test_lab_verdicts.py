"""experiments/lab_verdicts.py: the one command that regenerates the lab's verdicts at every budget, run on the
3-seed evaluations kept in the repository (experiments/results/lab-exp, lab-exp-long)."""
import math
import os

import pytest

from comfyui_salt.experiments import lab_verdicts as lv
from comfyui_salt.experiments.lab_tables import CLAIMS, claim_verdict

RESULTS = os.path.join(lv.ROOT, "experiments", "results")
KEPT = ["--budget", f"300={RESULTS}/lab-exp", "--budget", f"1000={RESULTS}/lab-exp-long"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("verdicts") / "v.md"
    assert lv.main(KEPT + ["--write", str(path)]) == 0
    return path.read_text(encoding="utf-8")


def _matrix(text):
    rows = {}
    for line in text.split("\n## ")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| claim"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _family_changes(text, updates):
    """{claim: family-wise verdict} from one budget's "Family-wise (...): claim: a → b (...); ..." line."""
    section = text.split(f"## {updates:,} updates")[1].split("\n## ")[0]
    line = next(x for x in section.splitlines() if x.startswith("Family-wise"))
    if line.endswith("every verdict holds."):
        return {}
    return {c: v for c, v in (item.split(": ", 1)[0:1] + [item.split(" → ")[1].split(" (")[0]]
                              for item in line.split("): ", 1)[1].split("); "))}


def _budget_table(text, updates):
    section = text.split(f"## {updates:,} updates")[1].split("\n## ")[0]
    return {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in section.splitlines()
                               if line.startswith("| ") and not line.startswith("| claim"))}


def test_the_kept_3_seed_evaluations_say_their_seeds_shared_one_noise(report):
    from comfyui_salt.experiments.lab_tables import SHARED_NOISE
    for updates in (300, 1000):                  # version 2: every seed sampled EVAL_SEED's noise
        assert SHARED_NOISE in report.split(f"## {updates:,} updates")[1].split("\n## ")[0]


def test_the_matrix_agrees_with_each_budgets_table_and_marks_interim_cells(report):
    matrix = _matrix(report)
    assert "| claim | 300 updates | 1,000 updates |" in report and "3,000" not in report
    assert list(matrix) == [c for c, *_ in CLAIMS if c in matrix]                         # CLAIMS order
    for updates, col in ((300, 0), (1000, 1)):
        table = _budget_table(report, updates)
        for claim, cells in matrix.items():
            if claim not in table:
                assert cells[col] == ""
                continue
            verdict, seeds = table[claim][-1], table[claim][3]
            family = _family_changes(report, updates).get(claim)
            assert cells[col] == f"{verdict} ({seeds}, interim{f'; family-wise {family}' if family else ''})"
            assert seeds == "3"
    assert len(_budget_table(report, 300)) == 13 and len(_budget_table(report, 1000)) == 5   # the long pair only
    assert "Student-t" in report and "Made by `.venv/bin/python experiments/lab_verdicts.py --budget 300=" in report
    assert "a 10 % margin" in report


def test_enough_seeds_are_not_interim_and_bad_budgets_are_named(capsys):
    assert lv.main(KEPT[:2] + ["--min-seeds", "3"]) == 0
    text = capsys.readouterr().out
    assert "interim" not in text.split("\n## ")[0].split("| claim |")[1]
    assert "reproduces (3; family-wise inconclusive)" in text
    for bad in ("300", "x=runs/a", "300="):
        with pytest.raises(SystemExit, match="expected UPDATES=FOLDER"):
            lv.parse_budget(bad)
    with pytest.raises(SystemExit, match="--budget 300=no-such-folder: .* is not a folder"):
        lv.main(["--budget", "300=no-such-folder"])                     # a budget the user named must exist
    assert lv.budget_rows([(3000, "experiments/results/no-such-folder")]) == {}   # a default one not run yet
    assert "No budget has evaluated runs yet" in lv.report({})


def test_budget_folders_are_read_relative_to_the_current_folder(monkeypatch, capsys):
    monkeypatch.chdir(RESULTS)
    assert lv.main(["--budget", "1000=lab-exp-long", "--min-seeds", "3"]) == 0
    assert "| Salt at 2 NFE ≥ DMD at 4 NFE | reproduces (3; family-wise inconclusive) |" in capsys.readouterr().out


def t_quantile_2df(p):
    """Student's t quantile with 2 degrees of freedom, in closed form: (2p − 1) / √(2p(1 − p))."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def test_family_wise_verdicts_read_every_interval_at_bonferronis_level(report):
    rows = lv.budget_rows([(300, f"{RESULTS}/lab-exp")])[300][2]
    m = sum(len(r["ivs"]) for r in rows)
    assert m == 20                                 # 13 claims: 2 defect + 4 drift (one interval), 7 quality (two)
    assert t_quantile_2df(0.975) == pytest.approx(4.302652729911275)
    widen = t_quantile_2df(1 - 0.05 / (2 * m)) / t_quantile_2df(0.975)   # 3 seeds: 2 df; about 4.6×
    for r in rows:
        for k, iv in r["ivs"].items():
            wide = r["family"]["ivs"][k]
            assert wide.mean == pytest.approx(iv.mean)
            assert wide.hi - wide.mean == pytest.approx(widen * (iv.hi - iv.mean), rel=1e-9)
    # by hand: bidirectional SC-DMD at 4 NFE reproduces per claim (both intervals below 0); widened, both cover 0
    # and reach past −10 % of bidir-dmd's value, so the rules say neither "reproduces" nor "does not"
    r = next(r for r in rows if r["claim"] == "SC-DMD beats DMD, bidirectional, 4 NFE")
    assert r["verdict"] == "reproduces" and all(iv.hi < 0 for iv in r["ivs"].values())
    for k, iv in r["ivs"].items():
        lo, hi = iv.mean - widen * (iv.mean - iv.lo), iv.mean + widen * (iv.hi - iv.mean)
        assert lo < -0.1 * abs(r["refs"][k]) and hi > 0
    assert r["family"]["verdict"] == "inconclusive"
    changed = {r["claim"]: r["family"]["verdict"] for r in rows if r["family"]["verdict"] != r["verdict"]}
    # 4: Salt vs DMD with the exact real score at 4 NFE, a fifth until the quality rule asked the other metric's
    # interval to lie below its margin, reads inconclusive per claim already
    assert len(changed) == 4 and set(changed.values()) == {"inconclusive"}
    assert _family_changes(report, 300) == changed
    assert f"Bonferroni over the {m} paired intervals above, each at {100 * (1 - 0.05 / m):.2f} %" in report


def test_a_verdict_that_does_not_survive_reads_inconclusive_never_a_new_word():
    from comfyui_salt.salt_core.metrics.bootstrap import Interval
    # mixed per claim (mean error better, variance worse); widened, the worse interval reaches 0 (and still lies
    # below its margin): the rules alone would now say "reproduces", which the family reading must not report
    wide = {"mean_err": Interval(-0.02, -0.03, -0.01, 8, 0.99), "var_gap": Interval(0.01, -0.01, 0.03, 8, 0.99)}
    assert claim_verdict("quality", wide, {"mean_err": 0.05, "var_gap": 0.5}) == "reproduces"
    assert lv.family_word("mixed", "reproduces") == "inconclusive"
    assert lv.family_word("does not", "does not") == "does not"
    # an "opposite" whose widened interval crosses 0 but still rules out the claimed size keeps the weaker word
    drift = {"drift": Interval(0.01, -0.008, 0.028, 8, 0.998)}
    assert claim_verdict("drift", drift, {"drift": 0.1}) == "does not"
    assert lv.family_word("opposite", "does not") == "does not"
    assert lv.family_word("opposite", "inconclusive") == "inconclusive"
    assert lv.family_word("reproduces", "does not") == "inconclusive"          # non-inferior: another claim
    # a claim with one seed has no interval and does not count in M
    one = {"ivs": {"drift": Interval(0.01, float("nan"), float("nan"), 1, 0.95)}}
    two = {"ivs": {"mean_err": Interval(0.0, -0.1, 0.1, 8, 0.95), "var_gap": Interval(0.0, -0.1, 0.1, 8, 0.95)}}
    assert lv.family_level([one, two]) == (2, pytest.approx(0.975))


def test_a_wider_interval_never_gives_a_stronger_verdict_on_non_inferiority_or_quality():
    """Rules the statistics audit and the change review of 2026-12-07 (seventh session) found weak, on DMD@4's real
    values: for "Salt@2 ≥ DMD@4" an interval above 0 that reaches past the margin (0.0043) read "does not" while a
    narrower one with the same lower end read "reproduces"; it leaves differences under the margin possible:
    inconclusive. A quality "reproduces" needed the other metric only "not shown worse", so an interval of any width
    passed; now it must lie below its margin."""
    from comfyui_salt.salt_core.metrics.bootstrap import Interval
    refs = {"mean_err": 0.043, "var_gap": 0.40}
    iv = lambda lo, hi: Interval((lo + hi) / 2, lo, hi, 8, 0.95)           # noqa: E731
    noninf = lambda hi: claim_verdict("non-inferior", {"mean_err": iv(0.001, hi), "var_gap": iv(-0.01, 0.01)},
                                      refs)                                     # noqa: E731
    assert [noninf(h) for h in (0.004, 0.005, 0.020)] == ["reproduces", "inconclusive", "inconclusive"]
    assert claim_verdict("non-inferior", {"mean_err": iv(0.005, 0.02), "var_gap": iv(-0.01, 0.01)}, refs) == \
        "opposite"
    quality = lambda lo, hi: claim_verdict("quality", {"mean_err": iv(-0.008, -0.001), "var_gap": iv(lo, hi)},
                                           refs)                                # noqa: E731
    assert [quality(-0.5, h) for h in (0.03, 0.6)] == ["reproduces", "inconclusive"]
    # the other metric worse: by less than its margin (0.04) shown, reproduces; by more, mixed; widened, never a
    # stronger word (mixed → inconclusive, reproduces → inconclusive)
    assert [quality(0.01, 0.03), quality(-0.01, 0.03), quality(0.01, 0.2), quality(0.05, 0.2),
            quality(0.03, 0.2)] == ["reproduces", "reproduces", "inconclusive", "mixed", "inconclusive"]
