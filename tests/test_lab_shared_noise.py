"""experiments/lab_shared_noise.py on the kept 3-seed evaluations (version 2: every seed on one noise): the joint clip
bootstrap's per-seed values are the claims' paired values, an arm against itself shares nothing, and a claim whose
seeds share the clips' effect shows it."""
import os

import pytest
import torch

from comfyui_salt.experiments import lab_shared_noise as sn
from comfyui_salt.experiments.lab_eval import load_results
from comfyui_salt.experiments.lab_tables import metric_fn, seed_values
from comfyui_salt.toy.worlds import get_world

KEPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "results", "lab-exp")


def test_the_shared_part_is_zero_for_an_arm_against_itself_and_positive_where_the_seeds_share_the_clips():
    results = load_results(KEPT, ["dmd", "salt"])
    world = get_world(results["dmd"][0]["config"]["world"]).lab
    gen = torch.Generator().manual_seed(0)
    same = sn.shared_part(results, "dmd", 4, "dmd", 4, "mean_err", world, False, 30, gen)
    assert same["shared_sd"] == 0.0 and same["se_t"] == 0.0 and torch.equal(same["values"], torch.zeros(3))
    got = sn.shared_part(results, "salt", 2, "dmd", 4, "mean_err", world, False, 100, gen)
    f2, f4 = metric_fn("mean_err", 2, world), metric_fn("mean_err", 4, world)
    want = [a - b for a, b in zip(seed_values([results["salt"][s] for s in range(3)], f2),
                                  seed_values([results["dmd"][s] for s in range(3)], f4))]
    assert torch.allclose(got["values"], torch.tensor(want, dtype=torch.float64))
    assert got["shared_sd"] > 0


def test_the_script_refuses_evaluations_that_already_give_each_seed_its_own_noise(tmp_path, capsys):
    import json
    (tmp_path / "dmd" / "seed0").mkdir(parents=True)
    (tmp_path / "dmd" / "seed0" / "lab_eval.json").write_text(json.dumps({"version": 3}))
    assert sn.main(["--out", str(tmp_path)]) == 2 and "version 3" in capsys.readouterr().err


def test_the_shared_part_is_the_mean_covariance_between_two_different_seeds_over_clip_resamples():
    """By hand, from the same resampled clip counts: the covariance of seed i's and seed j's paired values over the
    resamples, averaged over the pairs i ≠ j (a seed's own variance is not shared), its square root."""
    results = load_results(KEPT, ["dmd", "salt"])
    world = get_world(results["dmd"][0]["config"]["world"]).lab
    got = sn.shared_part(results, "salt", 2, "dmd", 4, "mean_err", world, False, 40, torch.Generator().manual_seed(5))
    f2, f4 = metric_fn("mean_err", 2, world), metric_fn("mean_err", 4, world)
    gen, clips, draws = torch.Generator().manual_seed(5), len(results["dmd"][0]["captions"]), []
    for _ in range(40):
        counts = torch.bincount(torch.randint(0, clips, (clips,), generator=gen), minlength=clips).double()
        draws.append([f2(results["salt"][s], counts) - f4(results["dmd"][s], counts) for s in range(3)])
    mean = [sum(d[i] for d in draws) / 40 for i in range(3)]
    cov = lambda i, j: sum((d[i] - mean[i]) * (d[j] - mean[j]) for d in draws) / 39   # noqa: E731
    pairs = [cov(i, j) for i in range(3) for j in range(3) if i != j]
    assert got["shared_sd"] == pytest.approx(max(sum(pairs) / len(pairs), 0.0) ** 0.5, rel=1e-9)
    assert got["shared_sd"] ** 2 < sum(cov(i, i) for i in range(3)) / 3      # below a seed's own variance here
