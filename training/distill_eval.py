"""Measure a few-step student on any world: seeded samples at an NFE and semigroup defects with intervals.

Noise is drawn on the CPU from the seed and moved to the model's device, so a seed gives the same
clips on any device; results come back on the model's device. Knows no world: the toy world's
evaluation (oracle metrics of these samples) is the toy wing's (`toy.evaluate`).
"""
import torch

from ..salt_core.denoiser import FlowDenoiser
from ..salt_core.kv_cache import CachePolicy
from ..salt_core.samplers import sample_fewstep_stochastic
from ..salt_core.schedules import get_sigmas_fewstep, randn_like
from ..salt_core.seeding import seeded_noise
from ..salt_core.streaming import ChunkStream, stream_video
from ..salt_core.validate import check_sigmas
from .distill_config import DistillConfig


def student_noise(model, cfg: DistillConfig, context, num_frames: int, seed: int) -> tuple:
    """(noise (B, C, F, H, W), context, re-noise generator) on the model's device (the context's, for a model without
    weights such as the lab's exact teacher), by the pack's seed convention (salt_core.seeding), so every model
    evaluated with one seed starts from the same noise (the lab's paired evaluation)."""
    weight = next(model.parameters(), None)
    device = weight.device if weight is not None else context.device
    shape = (context.shape[0], model.cfg.in_dim, num_frames, cfg.height, cfg.width)
    noise, gen = seeded_noise(seed, shape, device=device, dtype=context.dtype)
    return noise, context.to(device), gen


@torch.no_grad()
def sample_student(model, cfg: DistillConfig, context, nfe: int, seed: int = 0, num_frames: int = None,
                   policy: CachePolicy = None):
    """Few-step samples (B, C, F, H, W) of a student (stochastic Self Forcing sampler)."""
    num_frames = num_frames or cfg.num_frames
    noise, context, gen = student_noise(model, cfg, context, num_frames, seed)
    sigmas = get_sigmas_fewstep(nfe, cfg.shift)
    if cfg.student_kind == "bidirectional":
        return sample_fewstep_stochastic(FlowDenoiser(model, context), noise, sigmas, disable=True,
                                         noise_sampler=lambda *_: randn_like(noise, gen))
    policy = policy or CachePolicy(window_frames=cfg.local_attn_frames, sink_frames=cfg.sink_frames,
                                   max_frames=num_frames)
    return stream_video(model, noise, context, sigmas, policy=policy, chunk_frames=cfg.chunk_frames,
                        context_noise=cfg.context_noise, generator=gen)


def _rollout_states(model, cfg: DistillConfig, context, sigmas, seed: int, keep) -> None:
    """Run the student's seeded stochastic rollout on `sigmas` and call keep(sigma, x (B, ...), velocity_fn) at
    every state (causal students: every chunk's state, its velocity_fn reading the real KV cache without writing)."""
    noise, context, gen = student_noise(model, cfg, context, cfg.num_frames, seed)
    if cfg.student_kind == "bidirectional":
        den = FlowDenoiser(model, context)
        sample_fewstep_stochastic(den, noise, sigmas, callback=lambda d: keep(float(d["sigma"]), d["x"], den.velocity),
                                  disable=True, noise_sampler=lambda *_: randn_like(noise, gen))
        return
    cache = model.new_cache(noise.shape[0], CachePolicy.full(cfg.num_frames), (cfg.height, cfg.width))
    stream = ChunkStream(model, cache, context, chunk_frames=cfg.chunk_frames, generator=gen)
    levels, n = check_sigmas(sigmas, where="defect rollout").tolist(), cfg.chunk_frames
    for f0 in range(0, noise.shape[2], n):
        reader = stream.denoiser(write=False)              # this chunk's real cache, never written
        stream.sample(noise[:, :, f0:f0 + n], levels,
                      callback=lambda i, sigma, x, x0, reader=reader: keep(float(sigma), x, reader.velocity))


@torch.no_grad()
def defect_samples(model, cfg: DistillConfig, context, grid_steps: int = 8, seed: int = 0):
    """Semigroup defects (docs/method.md §4) on the student's own stochastic rollout states on the `grid_steps` grid.

    Returns (triplets, D): the K − 1 triplets [(σ_s, σ_m, σ_e), ...] of consecutive grid points (the last one ends
    at σ = 0, so a 2-step grid has one), and D (T, B) float64,
    the defect of each triplet for each clip (causal students: averaged over chunks, every chunk measured on
    its real KV cache).
    """
    from ..salt_core.metrics.semigroup import semigroup_defects
    sigmas = get_sigmas_fewstep(grid_steps, cfg.shift)
    rows = {}   # triplet index k -> [(B,) per chunk]

    def keep(sigma, x, velocity):
        if sigma < float(sigmas[-3]) - 1e-9:                 # needs two further grid points (the last may be 0)
            return
        k = int((sigmas - sigma).abs().argmin())
        rows.setdefault(k, []).append(semigroup_defects(velocity, [(sigma, x)], sigmas)[0])
    _rollout_states(model, cfg, context, sigmas, seed, keep)
    ks = sorted(rows)
    triplets = [tuple(float(sigmas[k + j]) for j in range(3)) for k in ks]
    return triplets, torch.stack([torch.stack(rows[k]).mean(0) for k in ks]).cpu()


@torch.no_grad()
def sc_defect_samples(model, cfg: DistillConfig, context, seed: int = 0):
    """Semigroup defects of the triplets L_SC trains, on the student's own rollout states on the cfg.sc_steps grid.

    Returns (triplets, p, D): every triplet [(σ_s, σ_m, σ_e), ...] that sc_triplet can draw (any exit step),
    p (T,) float64 how often a generator step that carries SC trains it (exit uniform, then sc_triplet's rule;
    sums to 1), and D (T, B) float64 its defect per clip (causal: averaged over chunks). p @ D is the defect SC
    lowers; defect_samples' consecutive triplets only partly overlap these (for K = 8 the triplets that end on an
    odd grid point are never trained).
    """
    from ..salt_core.losses.semigroup import sc_triplet_distribution
    from ..salt_core.metrics.semigroup import state_defects
    if cfg.sc_steps < 2:
        raise ValueError(f"sc_steps={cfg.sc_steps}: a 1-step grid has no triplet for SC to train; measure a "
                         f"student trained with sc_steps ≥ 2 (Salt: 8)")
    sigmas = get_sigmas_fewstep(cfg.sc_steps, cfg.shift)
    exits = {i: sc_triplet_distribution(i, sigmas) for i in range(cfg.sc_steps)}
    acting = [i for i, dist in exits.items() if dist]
    order = [(t, p / len(acting)) for i in acting for t, p in exits[i]]
    rows = {}   # (s, m, e) index -> [(B,) per chunk]

    def keep(sigma, x, velocity):
        dist = exits.get(int((sigmas - sigma).abs().argmin()), ())
        if dist:   # every triplet of this exit at once: one velocity evaluation at x
            d = state_defects(velocity, x, sigma, [(t.sigma_m, t.sigma_e) for t, _ in dist])
            for (t, _), row in zip(dist, d):
                rows.setdefault((t.s_index, t.m_index, t.e_index), []).append(row)
    _rollout_states(model, cfg, context, sigmas, seed, keep)
    triplets = [(t.sigma_s, t.sigma_m, t.sigma_e) for t, _ in order]
    p = torch.tensor([q for _, q in order], dtype=torch.float64)
    d = [torch.stack(rows[(t.s_index, t.m_index, t.e_index)]).mean(0) for t, _ in order]
    return triplets, p, torch.stack(d).cpu()


def defect_report(model, cfg: DistillConfig, context, grids=(8,), seed: int = 0) -> dict:
    """{grid_steps: {"triplets": [((σ_s, σ_m, σ_e), Interval), ...], "mean": Interval}} for each grid.

    Every number is a mean over clips (one per context row, each on its own seeded noise: independent units) with a
    95 % Student-t interval, which holds its level at a few clips where a percentile bootstrap over them does not
    (docs/method_lab.md, issue 27); one clip gives a NaN interval (no spread to read). "mean" averages each clip
    over the grid's triplets first. Pass the 8-step training grid and the student's own inference grid (a 4-step
    student was never trained on half the 8-step levels).
    """
    from ..salt_core.metrics.bootstrap import seed_t_interval
    out = {}
    for g in grids:
        triplets, d = defect_samples(model, cfg, context, grid_steps=g, seed=seed)
        out[g] = {"triplets": [(t, seed_t_interval(row)) for t, row in zip(triplets, d)],
                  "mean": seed_t_interval(d.mean(0))}
    return out


def _interval(ci) -> str:
    """[lo, hi], or n/a where the interval is NaN (one clip)."""
    return "n/a" if ci.lo != ci.lo else f"[{ci.lo:.4f}, {ci.hi:.4f}]"


def format_defect_report(report: dict) -> str:
    """The defect report as markdown: one row per grid (mean and 95 % interval), then its triplets."""
    lines = ["| grid | triplet σ_s → σ_m → σ_e | defect | 95 % interval | clips |", "|---|---|---|---|---|"]
    for g, r in report.items():
        m = r["mean"]
        lines.append(f"| {g} steps | **mean over triplets** | **{m.mean:.4f}** | {_interval(m)} | {m.n} |")
        for (ss, sm, se), ci in r["triplets"]:
            lines.append(f"| | {ss:.3f} → {sm:.3f} → {se:.3f} | {ci.mean:.4f} | {_interval(ci)} | {ci.n} |")
    return "\n".join(lines)


def student_defect(model, cfg: DistillConfig, context, grid_steps: int = 8, seed: int = 0) -> float:
    """Semigroup defect (float): defect_samples averaged over triplets and clips."""
    return defect_samples(model, cfg, context, grid_steps, seed)[1].mean().item()
