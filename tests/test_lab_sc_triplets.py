"""experiments/lab_sc_triplets.py: the dose-response table's intervals are Student's t over per-seed values (the
lab's interval method), checked against the closed form with t(0.975, 2) = 4.302653, on measurements written by
hand; and --arms names the arms to measure."""
import json
import math

import pytest

from comfyui_salt.experiments import lab_sc_triplets as trip

T_975_2 = 4.302652729911275   # Student's t quantile, 2 degrees of freedom
TRIPLET = [0.9, 0.75, 0.5]    # starts below σ = 1, so L_SC's weight 1 − σ_s is not 0


def write_measurement(root, arm, seed, clips, sc_weight):
    """A cached measurement as `measure` writes it: one consecutive triplet, which SC also draws (p = 1)."""
    d = root / arm / f"seed{seed}"
    d.mkdir(parents=True)
    m = {"sc_weight": sc_weight, "seed": seed, "clips": len(clips), "gen_updates": 300,
         "consecutive": [[TRIPLET, clips]], "sc": [[TRIPLET, 1.0, clips]]}
    (d / "sc_triplets.json").write_text(json.dumps(m))


def closed_form(values):
    n, mean = len(values), sum(values) / len(values)
    half = T_975_2 * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)
    return f"{mean:.4f} [{mean - half:.4f}, {mean + half:.4f}]"


def test_means_and_paired_ratios_are_t_intervals_over_the_seeds(tmp_path):
    sc2 = [[0.010, 0.030], [0.022, 0.024], [0.016, 0.040]]       # per-seed means 0.020, 0.023, 0.028
    sc0 = [[0.020, 0.030], [0.024, 0.026], [0.030, 0.030]]       # 0.025, 0.025, 0.030
    for seed in range(3):
        write_measurement(tmp_path, "sc2", seed, sc2[seed], 2.0)
        write_measurement(tmp_path, "sc0", seed, sc0[seed], 0.0)
    write_measurement(tmp_path, "sc20", 0, [0.05, 0.07], 20.0)   # one seed: a mean, no interval
    text = trip.table(str(tmp_path))
    row = next(line for line in text.splitlines() if line.startswith("| sc2 | 2 | 3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    means = [sum(c) / 2 for c in sc2]
    assert cells[3] == closed_form(means)                                         # consecutive
    assert cells[6] == closed_form(means)                                         # SC-weighted: the same triplet
    ratios = [a / (sum(b) / 2) for a, b in zip(means, sc0)]
    assert cells[-2] == closed_form(ratios) + " (3)"                              # consecutive / sc0, paired
    one = next(line for line in text.splitlines() if line.startswith("| sc20 | 20 | 1 |"))
    assert "| 0.0600 |" in one and "[" not in one.split("|")[4]
    # per exit level (the one level here, σ_s = 0.9), as a ratio to sc0 paired by seed: the same closed form
    per_level = text.split("as a ratio to sc0")[1]
    row = next(line for line in per_level.splitlines() if line.startswith("| sc2 | 2 | 3 |"))
    assert row.split("|")[4].strip() == closed_form(ratios)


def test_versus_prints_the_consecutive_defect_and_each_level_as_paired_ratios_to_another_arm(tmp_path):
    """--versus ARM: every causal arm against ARM, paired by the seeds both have, by the same closed form."""
    sc20 = [[0.030, 0.050], [0.020, 0.040], [0.036, 0.044]]      # per-seed means 0.040, 0.030, 0.040
    low = [[0.040, 0.050], [0.030, 0.030]]                       # 0.045, 0.030 (seeds 0, 1: two pairs)
    for seed in range(3):
        write_measurement(tmp_path, "sc20", seed, sc20[seed], 20.0)
    for seed in range(2):
        write_measurement(tmp_path, "sc20-low", seed, low[seed], 20.0)
    text = trip.table(str(tmp_path), versus="sc20")
    part = text.split("each exit level as a ratio to sc20")[1]
    row = next(line for line in part.splitlines() if line.startswith("| sc20-low | 20 | 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    ratios = [0.045 / 0.040, 0.030 / 0.030]
    mean, half = sum(ratios) / 2, 12.706204736174696 * abs(ratios[0] - ratios[1]) / 2   # t(0.975, 1) · s / √2
    expected = f"{mean:.4f} [{mean - half:.4f}, {mean + half:.4f}]"
    assert cells[3] == expected and cells[4] == expected   # consecutive, and the one level (σ_s = 0.9)
    assert "| sc20 | 20 |" not in part                     # not against itself
    with pytest.raises(SystemExit, match="--versus 'nope'"):
        trip.main(["--out", str(tmp_path), "--table", "--versus", "nope"])


def test_arms_to_measure_are_checked():
    with pytest.raises(SystemExit, match="unknown \\['nope'\\]"):
        trip.main(["--out", "nowhere", "--arms", "sc2,nope"])
