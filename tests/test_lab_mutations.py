"""Lab tests that a 1 % change of the data sampler or of a metric's ingredient cannot pass (issue 27).

Each check is a distribution test at a fixed seed with stated power: a statistic whose law under the correct code is
known in closed form, standardised to z. The correct code must give |z| < 4 (a false alarm once in 16,000 seeds);
each mutation below shifts its statistic's mean by the z stated beside it, so it is caught (|z| > 4) with the stated
power. `test_each_mutation_is_caught` applies every mutation (monkeypatched) and requires its check to fail.

Mutations (what each check catches):
- tau×1.01:      the sampler's isotropic noise 1 % larger.           z_noise  shifts by +150 (measured 148.6; power 1)
- z×1.01:        the sampler's latent temperature 1 % larger.        z_latent shifts by +6.6 (measured −1.70 → 4.85 at
                 SEED; for a random seed, power P(N(6.6, 1) > 4) = 0.995)
- mean+0.01:     every pixel of every sample offset by 0.01.         z_offset shifts by ≈ +1900 (measured; power 1)
- whiten-no-tau: var_ratio's whitening without τ² (0.27 % on var_ratio: 550,000 clips would be needed to see it in
                 samples, so its check is the closed form: W Σ_k Wᵀ = I for the data covariance Σ_k = U_k U_kᵀ + τ² I;
                 the mutation leaves 1e-2, the code 1e-12).
- mode-mean×1.01: mean_err's residuals taken from 1.01 m_k.           z_resid  shifts by ≈ −21 (measured 0.98 →
                 −20.5 on 2,000 clips; power 1)

The statistics, for N data clips of one world (x − m_k the residual from the clip's mode mean, U_k its basis):
- z_latent: Σ|w|²/(N r) − 1 over the whitened coordinates w (the law: χ²(N r)/(N r)), s.e. √(2/(N r));
- z_noise:  Σ|P⊥(x − m)|² / (τ² N (D − r)) − 1, P⊥ the projection off span(U_k) (χ²(N(D − r))), s.e. √(2/(N(D − r)));
- z_offset: the mean over clips of 1ᵀP⊥(x − m) / (τ |P⊥1|) (N(0, 1/N));
- z_resid:  Σ r_i·m̂_k / √(Σ m̂_kᵀ Σ_k m̂_k) over 2,000 clips, r_i = the metric's own residual (mode_residuals) of
            clip i from its mode's mean, m̂_k = m_k/|m_k|, Σ_k = U_k U_kᵀ + τ² I (N(0, 1) for correct residuals).
"""
import math

import pytest
import torch

from comfyui_salt.toy.lab import metrics as lab_metrics
from comfyui_salt.toy.lab import world as lab_world
from comfyui_salt.toy.lab.world import LabWorld

CLIPS, BATCH, SEED = 12000, 1000, 27
Z_LIMIT = 4.0


def data_statistics(world: LabWorld, clips: int = CLIPS) -> dict:
    """The z statistics above from `clips` data clips drawn by world.sample at SEED (batches of BATCH)."""
    cfg = world.cfg
    gen = torch.Generator().manual_seed(SEED)
    positions = range(cfg.num_frames)
    mean, U = world.basis(positions)                                  # (K, n, D), (K, n, D, r)
    K, r = mean.shape[0], U.shape[-1]
    m, Uk = mean.flatten(1), U.flatten(1, 2)                          # (K, nD), (K, nD, r)
    D = m.shape[1]
    ones = torch.ones(D, dtype=torch.float64)
    proj = [torch.linalg.solve(Uk[k].T @ Uk[k], Uk[k].T) for k in range(K)]          # (r, nD) each
    perp_one = [ones - Uk[k] @ (proj[k] @ ones) for k in range(K)]
    sq_w = sq_perp = resid_sum = resid_var = 0.0
    offset = []
    for start in range(0, clips, BATCH):
        n = min(BATCH, clips - start)
        video, mode = world.sample(torch.randint(0, cfg.num_captions, (n,), generator=gen), generator=gen)
        x = world.to_frames(video).flatten(1)                                     # (n, nD)
        w = lab_metrics.whitened_coordinates(world, video, mode)
        sq_w += float(w.pow(2).sum())
        for k in mode.unique().tolist():
            res = x[mode == k] - m[k]
            perp = res - (res @ proj[k].T) @ Uk[k].T
            sq_perp += float(perp.pow(2).sum())
            offset.append(perp @ perp_one[k] / (cfg.tau * perp_one[k].norm()))
        if start < 2 * BATCH:                                         # the metric's residuals on 2,000 clips
            for piece in range(0, n, 100):                           # mode_residuals holds (B, K, nD)
                sel = slice(piece, piece + 100)
                res = lab_metrics.mode_residuals(world, video[sel])[torch.arange(len(mode[sel])), mode[sel]]
                unit = m[mode[sel]] / m[mode[sel]].norm(dim=1, keepdim=True)
                resid_sum += float((res * unit).sum())
                resid_var += float(((unit[:, None] @ Uk[mode[sel]]).squeeze(1).pow(2).sum(1) + cfg.tau ** 2).sum())
    offset = torch.cat(offset)
    return {"z_latent": (sq_w / (clips * r) - 1) / math.sqrt(2 / (clips * r)),
            "z_noise": (sq_perp / (cfg.tau ** 2 * clips * (D - r)) - 1) / math.sqrt(2 / (clips * (D - r))),
            "z_offset": float(offset.mean() * math.sqrt(clips)),
            "z_resid": resid_sum / math.sqrt(resid_var)}


def whitening_error(world: LabWorld) -> float:
    """max |W Σ_k Wᵀ − I| over modes, W the metric's whitening and Σ_k = U_k U_kᵀ + τ² I the data's covariance."""
    positions = range(world.cfg.num_frames)
    _, U = world.basis(positions)
    worst = 0.0
    for k in range(U.shape[0]):
        Uk = U[k].flatten(0, 1)                                                  # (nD, r)
        _, W = lab_metrics._whitening(world, positions, k)                       # (r, nD)
        WU = W @ Uk
        cov = WU @ WU.T + world.cfg.tau ** 2 * W @ W.T
        worst = max(worst, float((cov - torch.eye(cov.shape[0], dtype=cov.dtype)).abs().max()))
    return worst


@pytest.fixture(scope="module")
def world():
    return LabWorld("default")


def test_the_data_sampler_and_the_metrics_pass_their_distribution_tests(world):
    z = data_statistics(world)
    assert all(abs(v) < Z_LIMIT for v in z.values()), z
    assert whitening_error(world) < 1e-9


def _scaled_randn(scale_calls: dict):
    """torch.randn scaled on the listed call numbers of each sample() (call 1: z, call 2: the pixel noise)."""
    real = torch.randn
    state = {"n": 0}

    def randn(*args, **kwargs):
        state["n"] += 1
        out = real(*args, **kwargs)
        return out * scale_calls.get((state["n"] - 1) % 2 + 1, 1.0)
    return randn


def _mutate(name: str, monkeypatch, world):
    if name in ("tau×1.01", "z×1.01"):
        real_sample = LabWorld.sample

        def sample(self, caption, num_frames=None, generator=None, start_frame=0):
            randn = _scaled_randn({1: 1.01} if name == "z×1.01" else {2: 1.01})
            with monkeypatch.context() as m:
                m.setattr(lab_world.torch, "randn", randn)
                return real_sample(self, caption, num_frames, generator, start_frame)
        monkeypatch.setattr(LabWorld, "sample", sample)
    elif name == "mean+0.01":
        real_sample = LabWorld.sample
        monkeypatch.setattr(LabWorld, "sample", lambda self, *a, **k: (lambda v, m: (v + 0.01, m))(
            *real_sample(self, *a, **k)))
    elif name == "whiten-no-tau":
        real = lab_metrics._whitening

        def whitening(w, positions, k):
            saved = w.cfg
            w.cfg = type("Cfg", (), {"tau": 0.0})()
            try:
                return real(w, positions, k)
            finally:
                w.cfg = saved
        monkeypatch.setattr(lab_metrics, "_whitening", whitening)
    elif name == "mode-mean×1.01":
        monkeypatch.setattr(lab_metrics, "mode_residuals", lambda w, video, start_frame=0: _residuals_from(
            w, video, start_frame, 1.01))


def _residuals_from(world, video, start_frame, scale):
    """mode_residuals with every mode mean scaled by `scale` (the mutation)."""
    x = world.to_frames(video).flatten(1)
    mean = torch.stack([world.frame_basis(f)[0] for f in range(start_frame, start_frame + video.shape[2])], 1)
    return x[:, None] - scale * mean.flatten(1)[None]


MUTATIONS = {"tau×1.01": "z_noise", "z×1.01": "z_latent", "mean+0.01": "z_offset", "whiten-no-tau": "whitening",
             "mode-mean×1.01": "z_resid"}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_mutation_is_caught(world, name, monkeypatch):
    _mutate(name, monkeypatch, world)
    key = MUTATIONS[name]
    if key == "whitening":
        assert whitening_error(world) > 1e-3
        return
    z = data_statistics(world, CLIPS if key == "z_latent" else 2 * BATCH)   # the others shift by ≥ 20 s.e.
    assert abs(z[key]) > Z_LIMIT, (name, z)
