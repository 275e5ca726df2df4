"""The distillation job trains what the released Salt code trains (XingtongGe/Salt, `trainer/distillation.py`,
`model/dmd.py`, `configs/mixed_sc_dmd_trd/*.yaml`): counters in trainer iterations, whole-clip bidirectional
scoring, the critic's own optimiser settings, separate draws per generator and critic step."""
import json

import pytest
import torch

from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.schedules import add_noise, randn_like
from comfyui_salt.salt_core.losses import sample_dmd_timesteps
from comfyui_salt.toy.jobs import distill_world
from comfyui_salt.training.distill import Distiller, alignment_acts, ema_due, run_distillation
from comfyui_salt.training.distill_config import DISTILL_PRESETS, DistillConfig, get_preset
from comfyui_salt.weights.files import save_model
from comfyui_salt.training.runs import CheckpointManager

# What the released configs set, read off XingtongGe/Salt configs/mixed_sc_dmd_trd/{causal_forcing,self_forcing,
# longlive}.yaml (mmd_start_step) and every released config's ema_start_step / lr / lr_critic / betas.
RELEASED_ALIGN_START = {"salt-causal-forcing": 700, "salt-self-forcing": 1000, "salt-longlive": 1200}
RELEASED_EMA_START, RELEASED_LR, RELEASED_LR_CRITIC, RELEASED_BETAS = 200, 2e-6, 4e-7, (0.0, 0.999)


def first_iteration(cfg: DistillConfig, acts) -> int:
    """The first trainer iteration of a run of `cfg` at which `acts(it)` holds, walking the loop's iterations."""
    total = cfg.gen_steps * cfg.critic_ratio
    return next((it for it in range(total) if acts(it)), None)


@pytest.mark.parametrize("name", sorted(DISTILL_PRESETS))
def test_every_preset_starts_ema_and_alignment_before_its_last_update(name):
    cfg = DISTILL_PRESETS[name]
    last_gen_iteration = (cfg.gen_steps - 1) * cfg.critic_ratio
    ema_on = first_iteration(cfg, lambda it: ema_due(cfg, it))
    assert ema_on is not None and ema_on < last_gen_iteration, (name, ema_on, last_gen_iteration)
    if not cfg.world:   # real scale (toy and lab presets train in a synthetic world)
        assert ema_on == RELEASED_EMA_START
        assert (cfg.lr_gen, cfg.lr_critic) == (RELEASED_LR, RELEASED_LR_CRITIC)
        assert (cfg.beta1, cfg.beta2) == (cfg.beta1_critic, cfg.beta2_critic) == RELEASED_BETAS
    if cfg.align_weight > 0:
        # alignment acts on generator iterations whose draw is K = 2, exit 1
        align_on = first_iteration(cfg, lambda it: it % cfg.critic_ratio == 0 and alignment_acts(cfg, it, 2, 1))
        assert align_on is not None and align_on <= last_gen_iteration, name
        if name in RELEASED_ALIGN_START:
            assert align_on == RELEASED_ALIGN_START[name]
            # a real share of training: at least half of the generator updates come after the start
            assert (last_gen_iteration - align_on) / cfg.critic_ratio + 1 >= cfg.gen_steps / 2
    if name.startswith("salt-"):
        assert cfg.align_weight > 0 or cfg.student_kind == "bidirectional", name


@pytest.mark.parametrize("name", sorted(n for n in DISTILL_PRESETS if not DISTILL_PRESETS[n].world))
def test_real_scale_presets_score_the_whole_clip_bidirectionally(name):
    assert DISTILL_PRESETS[name].teacher_kind == "bidirectional"


def test_old_counter_names_are_refused_with_the_new_name_and_unit():
    with pytest.raises(ValueError, match="ema_start_iter .*critic_ratio"):
        get_preset("toy-dmd", ema_start=20)
    with pytest.raises(ValueError, match="align_start_iter"):
        DistillConfig.from_dict({"align_start_step": 50})
    with pytest.raises(ValueError, match="teacher_kind"):
        DistillConfig(teacher_kind="chunkwise")


def _job(score_kind, **cfg_fields):
    cfg = get_preset("toy-dmd", num_frames=6, batch_size=2, threads=1, **cfg_fields)
    teacher, student, critic = build_model("toy", seed=0), build_model("toy", seed=1), build_model("toy", seed=2)
    return Distiller(cfg, teacher, student, critic, prompts=None, score_kind=score_kind)


def _brute_force_dmd_grad(job, x, ctx, unc, seed):
    """∂L_DMD/∂x by hand: noise x at the drawn level, score the whole clip with an explicit all-True attention
    mask (every frame sees every frame), standard CFG, grad = (fake - real) / mean|x - real|, ∂L/∂x = grad / N."""
    gen = torch.Generator().manual_seed(seed)
    sigma = sample_dmd_timesteps(x.shape[0], gen, job.cfg.shift) / 1000.0
    eps = randn_like(x, gen)
    s = sigma.view(-1, 1, 1, 1, 1)
    x_t = add_noise(x.detach(), eps, s)
    _, ph, pw = job.teacher.cfg.patch_size
    tokens = x.shape[2] * (x.shape[3] // ph) * (x.shape[4] // pw)
    full = torch.ones(tokens, tokens, dtype=torch.bool)

    def x0(model, context):
        v = model(x_t, 1000.0 * sigma, context, attn_mask=full).double()
        return x_t.double() - s * v
    with torch.no_grad():
        cond, uncond, fake = x0(job.teacher, ctx), x0(job.teacher, unc), x0(job.critic, ctx)
        real = uncond + job.cfg.guidance_scale * (cond - uncond)
        norm = (x.detach().double() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
        return (fake - real) / norm / x.numel()


def test_bidirectional_dmd_gradient_of_a_two_chunk_clip_matches_brute_force():
    job = _job("bidirectional")
    torch.manual_seed(3)
    x = torch.randn(2, 3, 6, 16, 16, requires_grad=True)     # two 3-frame chunks
    ctx, unc = torch.randn(2, 8, job.teacher.cfg.text_dim), torch.zeros(2, 8, job.teacher.cfg.text_dim)
    loss, _ = job.dmd_term(x, ctx, unc, torch.Generator().manual_seed(7))
    loss.backward()
    expected = _brute_force_dmd_grad(job, x, ctx, unc, seed=7)
    err = (x.grad.double() - expected).abs().max().item()
    assert err <= 1e-6 * expected.abs().max().item(), err


@pytest.mark.parametrize("kind, cross_chunk", [("bidirectional", True), ("teacher_forcing", False)])
def test_only_whole_clip_scoring_lets_a_later_chunk_turn_an_earlier_chunks_gradient(kind, cross_chunk):
    job = _job(kind)
    torch.manual_seed(3)
    base = torch.randn(2, 3, 6, 16, 16)
    ctx, unc = torch.randn(2, 8, job.teacher.cfg.text_dim), torch.zeros(2, 8, job.teacher.cfg.text_dim)
    grads = []
    for shift in (0.0, 0.5):   # change chunk 1 (frames 3-5) only
        x = base.clone()
        x[:, :, 3:] += shift
        x.requires_grad_(True)
        loss, _ = job.dmd_term(x, ctx, unc, torch.Generator().manual_seed(7))
        loss.backward()
        grads.append(x.grad[:, :, :3].clone())
    # the per-clip normaliser mean|x - real| spans both chunks and rescales every chunk's gradient; the
    # direction of chunk 0's gradient moves only when chunk 0 is scored together with chunk 1
    a, b = grads[0].flatten(1).double(), grads[1].flatten(1).double()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=1)
    moved = (1 - cosine).max().item()
    assert (moved > 1e-6) == cross_chunk, moved


def test_generator_and_critic_steps_draw_their_own_k_and_exit_identically_on_every_rank():
    a = _job("teacher_forcing", step_choices=(8, 4, 2), step_probs=(0.4, 0.4, 0.2), sc_weight=0.2)
    b = _job("teacher_forcing", step_choices=(8, 4, 2), step_probs=(0.4, 0.4, 0.2), sc_weight=0.2)
    b.rank = 1
    gen = [a.draws(it, "gen") for it in range(0, 200, 5)]
    critic = [a.draws(it, "critic") for it in range(0, 200, 5)]
    assert [(d["K"], d["exit"]) for d in gen] == [(d["K"], d["exit"]) for d in (b.draws(it, "gen")
                                                                                  for it in range(0, 200, 5))]
    differ = sum((g["K"], g["exit"]) != (c["K"], c["exit"]) for g, c in zip(gen, critic))
    assert differ > len(gen) // 2           # independent draws: most pairs differ
    assert all(c["triplet"] is None for c in critic)   # the critic has no SC term
    assert {d["K"] for d in critic} == {8, 4, 2}


def test_sc_at_low_exits_only_drops_the_other_triplets_and_keeps_every_draw():
    """sc_exit_sigma_max (an ablation): a generator step whose triplet starts above it carries no SC; every other
    draw (K, exit, the triplets kept) is the one the unrestricted run makes, and a run stored before the setting
    existed resumes as an unrestricted one."""
    every = _job("teacher_forcing", step_choices=(8, 4, 2), step_probs=(0.4, 0.4, 0.2), sc_weight=0.2)
    low = _job("teacher_forcing", step_choices=(8, 4, 2), step_probs=(0.4, 0.4, 0.2), sc_weight=0.2,
               sc_exit_sigma_max=0.7)
    a, b = ([job.draws(it, "gen") for it in range(400)] for job in (every, low))
    assert [(d["K"], d["exit"]) for d in a] == [(d["K"], d["exit"]) for d in b]
    kept = [(x["triplet"], y["triplet"]) for x, y in zip(a, b) if x["triplet"] is not None]
    assert all(y == (x if x.sigma_s <= 0.7 else None) for x, y in kept)
    assert {x.sigma_s > 0.7 for x, _ in kept} == {True, False}   # both kinds drawn
    from comfyui_salt.training.distill_config import DistillConfig
    stored = {k: v for k, v in DistillConfig().__dict__.items() if k != "sc_exit_sigma_max"}
    assert DistillConfig.upgrade_stored(stored)["sc_exit_sigma_max"] == 1.0


def test_critic_has_its_own_learning_rate_and_betas():
    job = _job("teacher_forcing", lr_gen=3e-5, lr_critic=6e-6, beta1=0.1, beta2=0.95, beta1_critic=0.2,
               beta2_critic=0.9)
    g, c = job.opt_gen.param_groups[0], job.opt_critic.param_groups[0]
    assert (g["lr"], g["betas"]) == (3e-5, (0.1, 0.95))
    assert (c["lr"], c["betas"]) == (6e-6, (0.2, 0.9))


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "toy_teacher.safetensors"
    save_model(build_model("toy", seed=0), path, extra_metadata={"teacher_mode": "teacher_forcing"})
    return str(path)


def test_ema_is_created_at_the_released_iteration_and_updated_after_each_generator_step(teacher_path, tmp_path):
    # critic ratio 2: generator updates at iterations 0, 2, 4; EMA created at the end of iteration 2
    cfg = get_preset("toy-dmd", teacher=teacher_path, batch_size=2, gen_steps=3, critic_ratio=2, eval_every=0,
                     threads=1, checkpoint_every=1, ema_start_iter=2, ema_decay=0.5)
    ckpt = CheckpointManager(str(tmp_path / "checkpoints"))
    states = {}
    for stop in (1, 2, 3):
        run_distillation(cfg, str(tmp_path), max_gen_steps=stop, quiet=True, world=distill_world())
        folder = ckpt.latest()[1]
        names = ["student"] + (["ema"] if (tmp_path / "checkpoints" / folder.split("/")[-1] / "ema.safetensors")
                               .exists() else [])
        states[stop] = ckpt.load(folder, names)[0]
    assert "ema" not in states[1]
    for k, v in states[2]["student"].items():
        assert torch.equal(states[2]["ema"][k], v.float()), k
    for k, v in states[3]["student"].items():
        expected = 0.5 * states[2]["ema"][k] + 0.5 * v.float()
        assert torch.allclose(states[3]["ema"][k], expected, atol=1e-7), k


def test_run_summary_counts_sc_and_alignment_updates_with_their_grad_ratios(teacher_path, tmp_path):
    cfg = get_preset("toy-salt", teacher=teacher_path, batch_size=2, gen_steps=8, critic_ratio=1, eval_every=0,
                     threads=1, checkpoint_every=4, align_start_iter=0, step_choices=(8, 2), step_probs=(0.5, 0.5))
    run_distillation(cfg, str(tmp_path), max_gen_steps=4, quiet=True, world=distill_world())
    run_distillation(cfg, str(tmp_path), quiet=True, world=distill_world())       # the counts survive a resume
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "K" in r]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gen_updates"] == 8 == len(rows)
    assert summary["sc_updates"] == sum(r["sc_acted"] for r in rows) > 0
    assert summary["align_updates"] == sum(r["aligned"] for r in rows) > 0
    assert summary["score_kind"] == "teacher_forcing"     # "auto" reads the teacher file's teacher_mode
    for r in rows:
        assert ("sc_dmd_grad_ratio" in r) == (r["sc_acted"] == 1.0)
        assert ("align_dmd_grad_ratio" in r) == (r["aligned"] == 1.0)
        # 0 is legitimate: L_SC is weighted by (1 - σ_s), zero at exit 0; the alignment hinge may be inactive
        assert all(0 <= r.get(k, 0.0) < float("inf") for k in ("sc_dmd_grad_ratio", "align_dmd_grad_ratio"))
    assert any(r.get("sc_dmd_grad_ratio", 0.0) > 0 for r in rows)
    assert summary["sc_dmd_grad_ratio_mean"] == pytest.approx(
        sum(r["sc_dmd_grad_ratio"] for r in rows if r["sc_acted"]) / summary["sc_updates"])


# ------------------------------------------------------------------------ defect numbers with intervals
def test_bootstrap_interval_matches_the_normal_closed_form_for_many_units():
    from comfyui_salt.salt_core.metrics.bootstrap import bootstrap_ci
    values = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 + 5
    ci = bootstrap_ci(values, num_resamples=4000, seed=1)
    half = 1.959964 * values.std().item() / values.numel() ** 0.5     # CLT: mean ± z·s/√n
    assert ci.mean == pytest.approx(values.mean().item())
    assert ci.lo == pytest.approx(ci.mean - half, rel=0, abs=0.1 * half)
    assert ci.hi == pytest.approx(ci.mean + half, rel=0, abs=0.1 * half)
    assert bootstrap_ci([3.0]).lo == bootstrap_ci([3.0]).hi == 3.0
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


@torch.no_grad()
def _brute_force_defect(model, ctx, x, ss, sm, se):
    """Per-clip defect of one triplet at state x, written out: ‖Ψ^{s→e}x − Ψ^{m→e}Ψ^{s→m}x‖ / ‖Ψ^{s→e}x − x‖."""
    def v(y, s):
        return model(y, torch.full((y.shape[0],), 1000.0 * s, dtype=torch.float64), ctx).double()
    v_s = v(x, ss)
    direct = x.double() - (ss - se) * v_s
    x_m = x.double() - (ss - sm) * v_s
    composed = x_m - (sm - se) * v(x_m.float(), sm)
    return (direct - composed).flatten(1).norm(dim=1) / (direct - x.double()).flatten(1).norm(dim=1)


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_defect_report_has_every_consecutive_triplet_of_each_grid_and_intervals_over_clips(kind):
    from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
    from comfyui_salt.toy.text import ToyTextEncoder
    from comfyui_salt.training.distill_eval import defect_report, defect_samples, format_defect_report
    model = build_model("toy", seed=1).eval()
    caps = ["a red disc moving left on a dark background", "a blue bar moving up on a light background"] * 2
    ctx = ToyTextEncoder().encode(caps)
    cfg = get_preset("toy-dmd", student_kind=kind)
    report = defect_report(model, cfg, ctx, grids=(8, 2))
    for g in (8, 2):
        grid = get_sigmas_fewstep(g, cfg.shift).tolist()
        expected = [tuple(grid[k:k + 3]) for k in range(g - 1)]       # (s_k, s_k+1, s_k+2), the last ends at 0
        got = [t for t, _ in report[g]["triplets"]]
        assert len(got) == len(expected) and all(a == pytest.approx(b) for a, b in zip(got, expected)), got
        for _, ci in report[g]["triplets"] + [(None, report[g]["mean"])]:
            assert ci.n == len(caps) and ci.lo < ci.mean < ci.hi
    # Student-t over the 4 clips: half width t(0.975, 3) · sd / 2, t from a printed table, sd of the clips' own
    # defects (defect_samples: the measurement, not the interval)
    _, per_triplet = defect_samples(model, cfg, ctx, grid_steps=8)
    per_clip = per_triplet.double().mean(0)
    half = 3.1824 * per_clip.std().item() / 2
    m = report[8]["mean"]
    assert (m.mean, m.lo, m.hi) == pytest.approx((per_clip.mean().item(), m.mean - half, m.mean + half), rel=1e-4)
    for k, (_, ci) in enumerate(report[8]["triplets"]):            # each triplet's interval, by the same rule
        clips = per_triplet[k].double()
        half = 3.1824 * clips.std().item() / 2
        assert (ci.mean, ci.lo, ci.hi) == pytest.approx((clips.mean().item(), ci.mean - half, ci.mean + half),
                                                        rel=1e-4), k
    one = defect_report(model, cfg, ctx[:1], grids=(2,))[2]["mean"]
    assert one.n == 1 and one.lo != one.lo and "| n/a | 1 |" in format_defect_report({2: {"mean": one,
                                                                                           "triplets": []}})
    if kind == "bidirectional":
        # brute force: the 2-step grid's one triplet (1, σ_1, 0) at the first rollout state, the seeded noise itself
        x = torch.randn((len(caps), 3, cfg.num_frames, cfg.height, cfg.width),
                        generator=torch.Generator().manual_seed(0))
        s1 = get_sigmas_fewstep(2, cfg.shift)[1].item()
        per_clip = _brute_force_defect(model, ctx, x, 1.0, s1, 0.0)
        m = report[2]["mean"]
        assert m.mean == pytest.approx(per_clip.mean().item(), rel=1e-5)
        half = 3.1824 * per_clip.double().std().item() / 2
        assert (m.lo, m.hi) == pytest.approx((m.mean - half, m.mean + half), rel=1e-4)
    assert "mean over triplets" in format_defect_report(report)


@pytest.mark.parametrize("kind", ["causal", "bidirectional"])
def test_sc_defect_samples_measures_exactly_the_triplets_sc_trains_with_their_training_frequencies(kind):
    from comfyui_salt.salt_core.losses import sample_exit_index, sc_triplet, sc_triplet_distribution
    from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
    from comfyui_salt.toy.text import ToyTextEncoder
    from comfyui_salt.training.distill_eval import defect_samples, sc_defect_samples
    model = build_model("toy", seed=1).eval()
    caps = ["a red disc moving left on a dark background", "a blue bar moving up on a light background"] * 2
    ctx = ToyTextEncoder().encode(caps)
    cfg = get_preset("toy-dmd", student_kind=kind)
    grid = get_sigmas_fewstep(cfg.sc_steps, cfg.shift)
    triplets, p, d = sc_defect_samples(model, cfg, ctx, seed=0)
    # p against the trainer's own draws (Distiller.draws: exit index, then the SC triplet on the same generator)
    gen, counts, n = torch.Generator().manual_seed(0), {}, 0
    for _ in range(6000):
        t = sc_triplet(sample_exit_index(cfg.sc_steps, gen), gen, grid)
        if t is not None:
            n += 1
            counts[(t.sigma_s, t.sigma_m, t.sigma_e)] = counts.get((t.sigma_s, t.sigma_m, t.sigma_e), 0) + 1
    assert set(counts) == set(triplets) and p.sum().item() == pytest.approx(1.0)
    for t, q in zip(triplets, p.tolist()):
        assert abs(counts[t] / n - q) < 4.5 * (q * (1 - q) / n) ** 0.5, t
    assert d.shape == (len(triplets), len(caps)) and bool((d > 0).all()) and bool(d.isfinite().all())
    # the trained triplets that are consecutive grid points agree with defect_samples on the same rollout states
    cons, dc = defect_samples(model, cfg, ctx, grid_steps=cfg.sc_steps, seed=0)
    shared = [t for t in cons if t in triplets]
    assert len(shared) == cfg.sc_steps // 2   # (s_k, s_k+1, s_k+2) for even k: the ones ending on the 4-step grid
    for t in shared:
        assert torch.allclose(d[triplets.index(t)], dc[cons.index(t)], rtol=1e-9, atol=0)
    if kind == "bidirectional":
        # brute force: every triplet from the first state (σ = 1, the seeded noise itself)
        x = torch.randn((len(caps), 3, cfg.num_frames, cfg.height, cfg.width),
                        generator=torch.Generator().manual_seed(0))
        for t, _ in sc_triplet_distribution(0, grid):
            got = d[triplets.index((t.sigma_s, t.sigma_m, t.sigma_e))]
            assert torch.allclose(got, _brute_force_defect(model, ctx, x, 1.0, t.sigma_m, t.sigma_e), rtol=1e-5)


@pytest.mark.parametrize("kind", ["teacher_forcing", "bidirectional"])
def test_the_sc_dmd_gradient_cosine_is_the_cosine_of_the_two_terms_autograd_gradients_at_v1(kind):
    """sc_dmd_grad_cos against autograd: ∂(λ·L_SC)/∂v1 and ∂L_DMD/∂v1 over the chunks SC acted on, each taken
    alone from the step's own tensors (v1 captured at the exit step, L_DMD from dmd_term)."""
    from comfyui_salt.training.optim import step_generators
    cfg = get_preset("toy-sc-dmd", num_frames=6, batch_size=2, threads=1, sc_weight=2.0)
    if kind == "bidirectional":
        cfg = get_preset("toy-bidir-sc-dmd", num_frames=6, batch_size=2, threads=1, sc_weight=2.0)
    teacher, student, critic = build_model("toy", seed=0), build_model("toy", seed=1), build_model("toy", seed=2)
    text = teacher.cfg.text_dim

    class Prompts:
        def sample(self, rng, batch):
            g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
            return None, torch.randn(batch, 8, text, generator=g), torch.zeros(batch, 8, text)
    job = Distiller(cfg, teacher, student, critic, prompts=Prompts(), score_kind=kind)
    it = next(i for i in range(200) if job.draws(i, "gen")["triplet"] is not None and job.draws(i, "gen")["exit"] > 0)
    d = job.draws(it, "gen")
    seen, real_sc, real_dmd = {"v1": [], "sc": [], "dmd": []}, job.sc, job.dmd_term

    class Capture(torch.nn.Module):
        weight = real_sc.weight

        def forward(self, x_s, v1, velocity_fn, triplet):
            loss, st = real_sc(x_s, v1, velocity_fn, triplet)
            seen["v1"].append(v1)
            seen["sc"].append(loss)
            return loss, st
    job.sc = Capture()
    job.dmd_term = lambda *a: (lambda out: seen["dmd"].append(out[0]) or out)(real_dmd(*a))
    gen, rng = step_generators(cfg.seed, 0, it, 0, 1)
    _, stats = job.generator_loss(d, rng, gen)
    v1 = seen["v1"]
    g_dmd = torch.autograd.grad(seen["dmd"][0], v1, retain_graph=True)
    g_sc = torch.autograd.grad(real_sc.weight * torch.stack(seen["sc"]).mean(), v1, retain_graph=True)
    dot = sum((a.double() * b.double()).sum() for a, b in zip(g_dmd, g_sc))
    norms = (sum(a.double().pow(2).sum() for a in g_dmd) * sum(b.double().pow(2).sum() for b in g_sc)).sqrt()
    assert 1e-4 < abs(stats["sc_dmd_grad_cos"]) < 1 and abs(stats["sc_dmd_grad_cos"] - (dot / norms).item()) < 1e-6, (
        stats["sc_dmd_grad_cos"], dot / norms)
    ratio = sum(b.double().pow(2).sum() for b in g_sc).sqrt() / sum(a.double().pow(2).sum() for a in g_dmd).sqrt()
    assert abs(stats["sc_dmd_grad_ratio"] - ratio.item()) < 1e-6 * ratio.item()


def test_the_gradient_probes_change_no_loss_and_are_off_with_their_flag():
    """training/diagnostics.py behind grad_probes: the generator loss (and its gradient) is the same with the probes
    on or off; off, no ratio or cosine is logged."""
    import dataclasses
    from comfyui_salt.training.optim import step_generators
    base = get_preset("toy-salt", num_frames=6, batch_size=2, threads=1, sc_weight=2.0, align_start_iter=0)

    class Prompts:
        def sample(self, rng, batch):
            g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
            return None, torch.randn(batch, 8, 32, generator=g), torch.zeros(batch, 8, 32)
    out = {}
    for probes in (True, False):
        cfg = dataclasses.replace(base, grad_probes=probes)
        job = Distiller(cfg, build_model("toy", seed=0), build_model("toy", seed=1), build_model("toy", seed=2),
                        prompts=Prompts(), score_kind="teacher_forcing")
        it = next(i for i in range(200) if job.draws(i, "gen")["triplet"] is not None and job.draws(i, "gen")["exit"])
        gen, rng = step_generators(cfg.seed, 0, it, 0, 1)
        loss, stats = job.generator_loss(job.draws(it, "gen"), rng, gen)
        loss.backward()
        out[probes] = (loss.detach(), [p.grad.clone() for p in job.student.parameters() if p.grad is not None], stats)
    (on_loss, on_grads, on), (off_loss, off_grads, off) = out[True], out[False]
    assert torch.equal(on_loss, off_loss) and all(torch.equal(a, b) for a, b in zip(on_grads, off_grads))
    assert "sc_dmd_grad_cos" in on and not {"sc_dmd_grad_ratio", "sc_dmd_grad_cos", "align_dmd_grad_ratio"} & set(off)


def _toy_prompts(text_dim):
    class Prompts:
        def sample(self, rng, batch):
            g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
            return None, torch.randn(batch, 8, text_dim, generator=g), torch.zeros(batch, 8, text_dim)
    return Prompts()


def test_a_step_frees_its_gradients_so_the_other_models_step_does_not_hold_them():
    """A 1.3B run on one H100 held the critic's gradients (5.3 GiB) through every generator step."""
    job = _job("bidirectional")
    job.prompts = _toy_prompts(job.teacher.cfg.text_dim)
    job.iteration(0)                                        # a generator update, then a critic update
    for model in (job.student, job.critic):
        assert all(p.grad is None for p in model.parameters())


def test_checkpointing_the_alignments_features_forward_keeps_less_and_changes_no_gradient():
    """The alignment's forward carries grad through the features network (the teacher); unless checkpointed it kept
    every block's activations (a 1.3B run ran out of memory there on an H100). Checkpointed with the models now: the
    student's gradient is the same, and what autograd saves during the loss is smaller."""
    from comfyui_salt.training.optim import step_generators
    cfg = get_preset("toy-salt", num_frames=6, batch_size=2, threads=1, align_start_iter=0, sc_weight=0.0,
                     grad_checkpointing=True)
    teacher, student, critic = build_model("toy", seed=0), build_model("toy", seed=1), build_model("toy", seed=2)
    job = Distiller(cfg, teacher, student, critic, prompts=_toy_prompts(teacher.cfg.text_dim),
                    score_kind="teacher_forcing")
    assert job.features.model is teacher and teacher.gradient_checkpointing     # set with the student's and critic's
    it = next(i for i in range(200) if job.aligns(job.draws(i, "gen")))
    d = job.draws(it, "gen")
    grads, saved = [], []
    for ckpt in (False, True):
        job.features.model.gradient_checkpointing = ckpt
        job.student.zero_grad(set_to_none=True)
        sizes = []
        gen, rng = step_generators(cfg.seed, 0, it, 0, 1)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            loss, stats = job.generator_loss(d, rng, gen)
        assert stats["aligned"] == 1.0, stats
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in job.student.parameters() if p.grad is not None]))
        saved.append(sum(sizes))
    assert torch.allclose(grads[1], grads[0], rtol=1e-5, atol=1e-8)
    assert saved[1] < 0.8 * saved[0], saved


def test_align_k4_aligns_k4_rollouts_past_the_first_exit_on_a_seeded_half_and_leaves_the_other_draws_alone():
    """The release's K = 4 branch (commented out there; `align_k4` here): its gate is exit index ≠ 0, and it takes
    the 8-step reference on a coin's half of those steps. The coin is drawn after K, the exit and the SC triplet, so
    a run without align_k4 draws exactly as before."""
    from types import SimpleNamespace
    plain = get_preset("toy-salt", align_start_iter=0)
    k4 = get_preset("toy-salt", align_start_iter=0, align_k4=True)
    coins, acting_exits = [], set()
    for it in range(600):
        a = Distiller.draws(SimpleNamespace(cfg=plain), it, "gen")
        b = Distiller.draws(SimpleNamespace(cfg=k4), it, "gen")
        assert (a["K"], a["exit"], a["triplet"]) == (b["K"], b["exit"], b["triplet"]) and "ref8" not in a
        assert ("ref8" in b) == (b["K"] == 4)
        acts = alignment_acts(k4, it, b["K"], b["exit"], b.get("ref8", True))
        if b["K"] == 4:
            coins.append(b["ref8"])
            assert acts == (b["exit"] >= 1 and b["ref8"])
            if acts:
                acting_exits.add(b["exit"])
        else:
            assert acts == (b["K"] == 2 and b["exit"] == 1)
        assert alignment_acts(plain, it, a["K"], a["exit"]) == (a["K"] == 2 and a["exit"] == 1)
    assert acting_exits == {1, 2, 3} and 0.4 < sum(coins) / len(coins) < 0.6, (acting_exits, sum(coins), len(coins))
