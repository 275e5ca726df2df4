"""Why λ_SC helps some hops and hurts others: the SC target and the one hop it pulls, each against the exact map.

Issue 27's mechanism of the λ response. On the method lab's world the exact flow map Φ*(s→e) is known (the exact
teacher's probability-flow ODE, integrated finely), so for every triplet (σ_s, σ_m, σ_e) L_SC trains, at the
student's own rollout states x_s (K = sc_steps grid, stochastic re-noise as in training), this measures per clip:
- e1 = ‖x̂_e − x*_e‖ / ‖x*_e − x_s‖: the one hop x̂_e = Ψ(s→e)(x_s) against the exact x*_e = Φ*(s→e)(x_s);
- e2 = ‖x̄_e − x*_e‖ / ‖x*_e − x_s‖: the released SC target x̄_e = Ψ(m→e)(Ψ(s→m)(x_s)) (stop-gradient) against it;
- pull·truth: the cosine between SC's pull on the one hop (x̄_e − x̂_e) and the way to the truth (x*_e − x̂_e):
  > 0, moving x̂_e toward the target also moves it toward the exact map; < 0, away from it;
- along: ⟨x̄_e − x*_e, x*_e − x_s⟩ / ‖x*_e − x_s‖², the target's signed overshoot along the exact step (its mean
  over clips is the target's bias, its spread the variance).
Ψ(a→b)(x) = x − (σ_a − σ_b)·v(x, a) is the student's Euler operator (docs/method.md §2, §4). Causal students are
measured chunk by chunk: the exact map of a chunk is conditioned on the student's own earlier chunks (clean, as
its KV cache holds them); later frames are unobserved.

    .venv/bin/python experiments/lab_sc_mechanism.py --runs runs/lab-exp8/sc0/seed0 runs/lab-exp8/sc20/seed0 \
        [--clips 32] [--flow-steps 64] [--at-updates 100,200]

Each run's measurement is cached in `<run>/sc_mechanism.json` (redone when the clip count, flow steps or the run's
update count change); the table prints per triplet the mean over clips (and over the runs given, per arm), after a
summary by triplet group (GROUPS: from σ 1, the short hops, those to 0) that pairs each arm's one-hop error with
sc0's (λ_SC 0) by seed at the same update count.
`--at-updates` measures the same runs over training too: the student each run had after those updates, read from
its milestone checkpoints (`checkpoint_keep_every`; the EMA weights once EMA has started, as the export holds),
cached in `<run>/sc_mechanism_<updates>.json`; the table then has a row group per arm and update count.
"""
import argparse
import json
import os
import sys

import torch

MECHANISM_VERSION = 3        # 3: each seed's rollout noise is lab_arms.eval_seed(seed); 2: milestone rows read EMA


def exact_flow(teacher, prefix: torch.Tensor, x: torch.Tensor, sigma_from: float, sigma_to: float, context,
               steps: int = 64) -> torch.Tensor:
    """Φ*(σ_from → σ_to)(x): the chunk x (B, C, n, H, W) carried along the exact probability-flow ODE
    dx/dσ = v*(x, σ) with `steps` midpoint steps, float64; the frames `prefix` (B, C, f, H, W) before it are clean
    conditioning (f may be 0). The midpoint rule never evaluates at σ = 0, where the exact teacher returns 0."""
    if not sigma_from > sigma_to >= 0:
        raise ValueError(f"exact_flow: sigma_from={sigma_from}, sigma_to={sigma_to}; expected sigma_from > "
                         f"sigma_to >= 0")
    B, f, n = x.shape[0], prefix.shape[2], x.shape[2]

    def velocity(y, sigma):
        t = torch.cat([torch.zeros(B, f, dtype=torch.float64), torch.full((B, n), 1000.0 * sigma,
                                                                          dtype=torch.float64)], 1)
        return teacher(torch.cat([prefix.double(), y], 2), t, context)[:, :, f:].double()
    y, h = x.double(), (sigma_to - sigma_from) / steps
    for i in range(steps):
        s = sigma_from + i * h
        y = y + h * velocity(y + 0.5 * h * velocity(y, s), s + 0.5 * h)
    return y


def hop_measures(x_s, v_s, v_m, x_exact, ss: float, sm: float, se: float) -> dict:
    """{e1, e2, pull_truth, along} (B,) float64 of one triplet at states x_s (B, ...), from the student's velocity
    at x_s (v_s) and at x_m = Ψ(s→m)(x_s) (v_m) and the exact x*_e (see the module docstring)."""
    xs = x_s.double()
    hop = xs - (ss - se) * v_s.double()                                   # x̂_e
    target = xs - (ss - sm) * v_s.double() - (sm - se) * v_m.double()     # x̄_e
    flat = lambda t: t.flatten(1)                                         # noqa: E731
    step = flat(x_exact - xs)
    size = step.norm(dim=1).clamp_min(1e-12)
    pull, truth = flat(target - hop), flat(x_exact - hop)
    cos = (pull * truth).sum(1) / (pull.norm(dim=1) * truth.norm(dim=1)).clamp_min(1e-30)
    return {"e1": flat(hop - x_exact).norm(dim=1) / size, "e2": flat(target - x_exact).norm(dim=1) / size,
            "pull_truth": cos, "along": (flat(target - x_exact) * step).sum(1) / size ** 2}


@torch.no_grad()
def measure_student(model, teacher, cfg, context, seed: int, flow_steps: int = 64) -> dict:
    """{(σ_s, σ_m, σ_e): {measure: (B,) float64 averaged over chunks}, ...} over every triplet sc_triplet can
    draw on the cfg.sc_steps grid, at the student's own stochastic rollout states (seed: the rollout's noise, by
    the pack's seed convention); `teacher` is the world's exact teacher."""
    from comfyui_salt.salt_core.denoiser import FlowDenoiser
    from comfyui_salt.salt_core.kv_cache import CachePolicy
    from comfyui_salt.salt_core.losses.semigroup import sc_triplet_distribution
    from comfyui_salt.salt_core.samplers import fewstep_update
    from comfyui_salt.salt_core.schedules import get_sigmas_fewstep, randn_like
    from comfyui_salt.salt_core.streaming import ChunkStream
    from comfyui_salt.training.distill_eval import student_noise
    sigmas = get_sigmas_fewstep(cfg.sc_steps, cfg.shift)
    levels = sigmas.tolist()
    exits = {i: sc_triplet_distribution(i, sigmas) for i in range(cfg.sc_steps)}
    noise, context, gen = student_noise(model, cfg, context, cfg.num_frames, seed)
    rows = {}

    def keep(i, x, velocity, prefix):
        if not exits.get(i):
            return
        v_s = velocity(x, levels[i])                     # one evaluation at the state, shared by its triplets
        exact = {}                                       # σ_e -> x*_e: triplets sharing an end share the flow
        for t, _ in exits[i]:
            ss, sm, se = t.sigma_s, t.sigma_m, t.sigma_e
            x_m = (x.double() - (ss - sm) * v_s.double()).to(x.dtype)
            if se not in exact:
                exact[se] = exact_flow(teacher, prefix, x, ss, se, context.cpu(), flow_steps)
            m = hop_measures(x, v_s, velocity(x_m, sm), exact[se], ss, sm, se)
            for name, value in m.items():
                rows.setdefault((ss, sm, se), {}).setdefault(name, []).append(value)
    n = cfg.chunk_frames if cfg.student_kind == "causal" else cfg.num_frames
    if cfg.student_kind == "causal":
        cache = model.new_cache(noise.shape[0], CachePolicy.full(cfg.num_frames), (cfg.height, cfg.width))
        stream = ChunkStream(model, cache, context, chunk_frames=n, generator=gen)
    done = noise[:, :, :0].double()
    for f0 in range(0, noise.shape[2], n):
        if cfg.student_kind == "causal":
            den = stream.denoiser(write=False)
        else:
            den = FlowDenoiser(model, context)
        x = noise[:, :, f0:f0 + n]
        for i in range(len(levels) - 1):
            keep(i, x, den.velocity, done)
            x0 = den(x, levels[i])
            x = fewstep_update(x, x0, levels[i], levels[i + 1], lambda *_: randn_like(x0, gen))
        if cfg.student_kind == "causal":
            stream.write(x)
        done = torch.cat([done, x.double().cpu()], 2)
    return {k: {name: torch.stack(v).mean(0) for name, v in cols.items()} for k, cols in rows.items()}


def _updates(run_dir: str) -> int:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return -1
    with open(path) as f:
        return int(json.load(f).get("gen_updates", -1))


class MissingMilestone(FileNotFoundError):
    """A run has no checkpoint at the asked update count (trained without `checkpoint_keep_every` dividing it)."""


def _milestone(run_dir: str, updates: int) -> tuple:
    """(CheckpointManager, path) of run `run_dir`'s complete checkpoint after `updates` generator updates;
    MissingMilestone names the checkpoints it has and the setting that keeps them."""
    from comfyui_salt.training.runs import CheckpointManager
    ckpts = CheckpointManager(os.path.join(run_dir, "checkpoints"))
    path = dict(ckpts.complete()).get(updates)
    if path is None:
        raise MissingMilestone(f"{run_dir} has no checkpoint at update {updates} (it has "
                               f"{sorted(s for s, _ in ckpts.complete())}); train with checkpoint_keep_every "
                               f"dividing {updates} to keep it")
    return ckpts, path


def milestone_student(run_dir: str, updates: int):
    """The student of run `run_dir` after `updates` generator updates, from its milestone checkpoint: the exported
    model's architecture with the checkpoint's EMA weights where it holds them (EMA has started: what the export and
    `Distiller.student_for_inference` use), else its student weights. MissingMilestone names the missing checkpoint
    and the setting that keeps them; a sharded checkpoint is refused (the lab trains in one process)."""
    from comfyui_salt.weights.files import load_model
    ckpts, path = _milestone(run_dir, updates)
    if ckpts.is_sharded(path):
        raise ValueError(f"{path} is a sharded checkpoint (torchrun); measure runs trained in one process")
    name = "ema" if os.path.exists(os.path.join(path, "ema.safetensors")) else "student"
    weights = ckpts.load(path, [name])[0][name]
    model = load_model(_architecture(run_dir))[0]
    model.load_state_dict({**model.state_dict(), **weights})   # strict: a key the model lacks is refused
    return model.eval()


def _architecture(run_dir: str) -> str:
    """A student file with run `run_dir`'s architecture: its export, or while it still trains (no export yet) the
    student it started from (its student_init: the same model, other weights)."""
    from comfyui_salt.training.job_configs import read_run_config
    export = os.path.join(run_dir, "export", "student.safetensors")
    if os.path.exists(export):
        return export
    init = getattr(read_run_config(run_dir), "student_init", None)
    if not init or not os.path.exists(init):
        raise MissingMilestone(f"{run_dir} has no export yet and its student_init ({init!r}) is not here: the "
                               f"architecture its milestone checkpoints hold weights for is unknown")
    return init


class NotMeasured(FileNotFoundError):
    """A run restored from the repository (experiments/lab_keep.py) without this measurement: its checkpoints and
    student were left on the machine it ran on."""


def milestone_summary(run_dir: str, updates: int) -> dict:
    """The summary.json a run stopped after `updates` generator updates would have written, from its milestone
    checkpoint's counts (`training.distill.run_summary`); the score kind is the run's (recorded when it finished,
    else resolved from its config as the run did)."""
    from comfyui_salt.training.distill import run_summary
    ckpts, path = _milestone(run_dir, updates)
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        with open(os.path.join(run_dir, "summary.json")) as f:
            score_kind = json.load(f).get("score_kind")
    else:   # the run still trains: the kind it resolved at its start
        from comfyui_salt.training.distill_models import resolve_teacher_kind
        from comfyui_salt.training.job_configs import as_distill_config, read_run_config
        score_kind = resolve_teacher_kind(as_distill_config(read_run_config(run_dir)))
    return run_summary(ckpts.load(path, [])[1]["counts"], score_kind)


def measure_run(run_dir: str, clips: int, flow_steps: int, at: int = None) -> dict:
    """The cached measurement of one finished run (`<run>/sc_mechanism.json`), or of its student after `at`
    updates (`<run>/sc_mechanism_<at>.json`, from its milestone checkpoint), made if missing or stale.
    NotMeasured for a restored run without it (nothing to measure it from)."""
    from comfyui_salt.experiments import lab_keep
    from comfyui_salt.experiments.lab_arms import eval_seed
    from comfyui_salt.toy.lab.world import LabTextEncoder
    from comfyui_salt.toy.prompts import lab_eval_captions
    from comfyui_salt.toy.worlds import get_world
    from comfyui_salt.training.job_configs import as_distill_config, read_run_config
    from comfyui_salt.weights.files import load_model
    path = os.path.join(run_dir, "sc_mechanism.json" if at is None else f"sc_mechanism_{at}.json")
    key = {"version": MECHANISM_VERSION, "clips": clips, "flow_steps": flow_steps,
           "gen_updates": _updates(run_dir) if at is None else at}
    if os.path.exists(path):
        with open(path) as f:
            done = json.load(f)
        if all(done.get(k) == v for k, v in key.items()):
            return done
    if lab_keep.is_restored(run_dir) and not os.path.exists(os.path.join(run_dir, "export", "student.safetensors")):
        raise NotMeasured(f"{run_dir}: kept without a current {os.path.basename(path)} (its student stayed on the "
                          f"machine it ran on); to measure it, train it again in another folder (lab_experiment.py "
                          f"--remeasure) and pass that run too")
    cfg = as_distill_config(read_run_config(run_dir))   # an ODE initialisation's: how its student samples
    model = (load_model(os.path.join(run_dir, "export", "student.safetensors"))[0].eval() if at is None
             else milestone_student(run_dir, at))
    world = get_world(cfg.world)
    caps = lab_eval_captions(world.lab, clips)
    ctx = LabTextEncoder(world.lab, model.cfg.text_dim, model.cfg.text_len).encode(caps)
    rows = measure_student(model, world.exact_teacher(), cfg, ctx, eval_seed(cfg.seed), flow_steps)
    out = {**key, "sc_weight": cfg.sc_weight, "sc_symmetric": cfg.sc_symmetric, "seed": cfg.seed,
           "triplets": [[list(t), {k: [round(float(x), 6) for x in v] for k, v in cols.items()}]
                        for t, cols in sorted(rows.items(), reverse=True)]}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)
    return out


def arm_of(run: str) -> str:
    """The arm a run folder belongs to: its parent for `<arm>/seed<s>`, else its own name (e.g. `ode-causal`)."""
    run = os.path.normpath(run)
    name = os.path.basename(run)
    return os.path.basename(os.path.dirname(run)) if name.startswith("seed") else name


def format_table(measured: dict) -> str:
    """Markdown from {(run, updates or None): measurement}: per arm (and update count, when given) and triplet,
    the means of e1, e2, pull·truth and along, with 95 % t intervals of e2 − e1 and of pull·truth — over the arm's
    runs (their clip means: seed-level) when it has several, else over its clips (one student: the interval says
    how well the clips pin that student's value)."""
    from comfyui_salt.salt_core.metrics.bootstrap import seed_t_interval
    lines = ["| arm | runs | σ_s → σ_m → σ_e | e1 (one hop) | e2 (SC target) | e2 − e1 [95 %] | pull·truth [95 %] | "
             "along (bias) | along sd | interval over |", "|---|---|---|---|---|---|---|---|---|---|"]
    arms = {}
    for (run, at), m in measured.items():
        arms.setdefault(arm_of(run) if at is None else f"{arm_of(run)} @{at}", []).append(m)
    for arm, ms in arms.items():
        for k, (t, _) in enumerate(ms[0]["triplets"]):
            cols = [{n: torch.tensor(v, dtype=torch.float64) for n, v in m["triplets"][k][1].items()} for m in ms]
            pooled = {n: torch.cat([c[n] for c in cols]) for n in ("e1", "e2", "pull_truth", "along")}
            if len(ms) > 1:
                unit, gap = "runs", [(c["e2"] - c["e1"]).mean() for c in cols]
                pull = [c["pull_truth"].mean() for c in cols]
            else:
                unit, gap, pull = "clips", cols[0]["e2"] - cols[0]["e1"], cols[0]["pull_truth"]
            g, q = seed_t_interval(torch.as_tensor(gap)), seed_t_interval(torch.as_tensor(pull))
            lines.append(f"| {arm} | {len(ms)} | {t[0]:.3f} → {t[1]:.3f} → {t[2]:.3f} | "
                         f"{pooled['e1'].mean().item():.4f} | {pooled['e2'].mean().item():.4f} | "
                         f"{g.mean:+.4f} [{g.lo:+.4f}, {g.hi:+.4f}] | {q.mean:+.3f} [{q.lo:+.3f}, {q.hi:+.3f}] | "
                         f"{pooled['along'].mean().item():+.4f} | {pooled['along'].std().item():.4f} | {unit} |")
    return "\n".join(lines)


# the triplet groups the account of the λ response reads (docs/method_lab.md): (name, test on (σ_s, σ_m, σ_e))
GROUPS = (("from σ 1", lambda t: t[0] > 0.999),
          ("short: σ_s < 1 → σ_e ≥ 0.5", lambda t: t[0] <= 0.999 and t[2] >= 0.5),
          ("to 0: σ_s < 1 → 0", lambda t: t[0] <= 0.999 and t[2] < 1e-6))


def group_means(m: dict) -> dict:
    """{group: {e1, gap, pull}} of one measurement: the mean over the group's triplets (GROUPS) of each triplet's
    clip means of e1, e2 − e1 and pull·truth; a group none of its triplets is in (a shorter grid) is left out."""
    out = {}
    for name, member in GROUPS:
        rows = [cols for t, cols in m["triplets"] if member(t)]
        if not rows:
            continue
        mean = {key: sum(sum(c[key]) / len(c[key]) for c in rows) / len(rows) for key in ("e1", "e2", "pull_truth")}
        out[name] = {"e1": mean["e1"], "gap": mean["e2"] - mean["e1"], "pull": mean["pull_truth"]}
    return out


def _cell(values, digits: int, sign: str = "+") -> str:
    from comfyui_salt.salt_core.metrics.bootstrap import seed_t_interval
    i = seed_t_interval(torch.as_tensor(values, dtype=torch.float64))
    f = f"{{:{sign}.{digits}f}}"
    return f.format(i.mean) + ("" if i.lo != i.lo else f" [{f.format(i.lo)}, {f.format(i.hi)}]")


def format_summary(measured: dict, reference: str = "sc0") -> str:
    """Markdown from {(run, updates or None): measurement}: per arm, update count and triplet group (GROUPS), the
    mean e1, e1 as a ratio to the `reference` arm's at the same update count (paired by seed: every arm at one seed
    rolls out from the same noise), e2 − e1 and pull·truth, with 95 % t intervals over seeds (one run: its mean)."""
    rows = {}
    for (run, _), m in measured.items():   # an ODE init (no summary: updates -1) first, then by update count
        rows.setdefault((arm_of(run), max(m.get("gen_updates", -1), 0)), {})[m.get("seed")] = group_means(m)
    lines = [f"| arm | updates | seeds | triplets | e1 (one hop) | e1 / {reference} [95 %] (seeds) | e2 − e1 [95 %] | "
             f"pull·truth [95 %] |", "|---|---|---|---|---|---|---|---|"]
    order = {key: k for k, key in enumerate(rows)}
    for arm, updates in sorted(rows, key=lambda key: (key[1], order[key])):
        by_seed = rows[(arm, updates)]
        ref = rows.get((reference, updates), {}) if arm != reference else {}
        for name, _ in GROUPS:
            seeds = [s for s in by_seed if name in by_seed[s]]
            if not seeds:
                continue
            paired = [by_seed[s][name]["e1"] / ref[s][name]["e1"] for s in seeds if name in ref.get(s, {})]
            ratio = f"{_cell(paired, 3, '')} ({len(paired)})" if paired else ""
            lines.append(f"| {arm} | {updates} | {len(seeds)} | {name} | "
                         f"{_cell([by_seed[s][name]['e1'] for s in seeds], 4, '')} | {ratio} | "
                         f"{_cell([by_seed[s][name]['gap'] for s in seeds], 4)} | "
                         f"{_cell([by_seed[s][name]['pull'] for s in seeds], 3)} |")
    return "\n".join(lines)


def parse_updates(text: str) -> list:
    """`--at-updates 100,200` → [100, 200]: positive update counts; SystemExit naming the flag otherwise."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not all(x.isdigit() and int(x) > 0 for x in items):
        raise SystemExit(f"--at-updates {text!r}: expected positive update counts separated by commas, e.g. 100,200")
    return [int(x) for x in items]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="finished lab distillation run folders (one arm × seed "
                    "given in two experiments, e.g. a run kept without its measurement and the same run trained "
                    "again by lab_experiment.py --remeasure: the first measured one counts)")
    ap.add_argument("--clips", type=int, default=32, help="clips per run (the lab's fixed evaluation captions)")
    ap.add_argument("--flow-steps", type=int, default=64, help="midpoint steps of the exact flow per hop")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--at-updates", default="", help="comma-separated update counts: also measure each run's "
                    "student at these (its milestone checkpoints), before the finished one")
    ap.add_argument("--versus", default="", metavar="ARM", help="also summarise the groups against this arm "
                    "(paired by seed at the same update count), e.g. sc20 beside sc20-low")
    args = ap.parse_args(argv)
    from comfyui_salt.experiments import lab_keep
    torch.set_num_threads(args.threads)
    steps = parse_updates(args.at_updates)
    measured, done = {}, set()
    for at in steps + [None]:
        for run in args.runs:
            if at is not None and os.path.basename(os.path.normpath(run)).startswith("ode-"):
                continue                                 # an ODE init is measured once, as it is
            if not os.path.isdir(run):
                continue                                 # an arm × seed not run yet
            if (not arm_of(run).startswith("ode-") and _updates(run) < 0
                    and not lab_keep.is_restored(run)):   # still training (lab_8seeds_tables.sh mid-stage)
                print(f"skipped: {run} has not finished (no summary.json)", file=sys.stderr)
                continue
            same = (arm_of(run), os.path.basename(os.path.normpath(run)), at, _updates(run))   # one budget's
            if same in done:
                continue   # measured already from another experiment's copy of the run (--remeasure's)
            try:
                measured[(run, at)] = measure_run(run, args.clips, args.flow_steps, at)
                done.add(same)
            except NotMeasured as e:
                print(f"skipped: {e}", file=sys.stderr)   # kept from an earlier machine without this measurement
            except MissingMilestone as e:
                if at is None:
                    raise
                print(f"skipped: {e}", file=sys.stderr)   # a run trained without milestones: its end only
    versus = (f"By triplet group, against {args.versus} at the same update count:\n\n"
              f"{format_summary(measured, args.versus)}\n\n") if args.versus else ""
    print(f"By triplet group, against sc0 (λ_SC 0) at the same update count:\n\n{format_summary(measured)}\n\n"
          f"{versus}Per triplet:\n\n{format_table(measured)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
