"""The method lab's distillation experiment: every arm × seed from a shared ODE initialisation, resumable, with
exact metrics on paired noise and t intervals over seeds (docs/method_lab.md, issues 13 and 27).

Commands (from the repository root; a learned lab teacher first, docs/method_lab.md):

```bash
# the teacher snapshot the arms distil (any lab teacher file with teacher_mode metadata)
.venv/bin/python -m comfyui_salt export-teacher --run runs/lab-teacher --out runs/lab_teacher.safetensors
# run (or resume) every missing stage in the background, two jobs at a time, then print the table; `kill <pid>` (or
# Ctrl-C) saves and stops (every running job checkpoints first), the same command resumes
nohup .venv/bin/python experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp \
    --seeds 3 --updates 300 --workers 2 > runs/lab-exp.log 2>&1 &
# the table from finished runs only (runs nothing)
.venv/bin/python experiments/lab_experiment.py --out runs/lab-exp --table
# the long pair: dmd and salt continued from their 300-update runs to 1,000 updates (same init, same seeds)
nohup .venv/bin/python experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp-long \
    --extend-from runs/lab-exp --arms dmd,salt --seeds 3 --updates 1000 --workers 2 > runs/lab-exp-long.log 2>&1 &
# its table, and what the 700 more updates changed (each arm against its own 300-update runs, paired)
.venv/bin/python experiments/lab_experiment.py --out runs/lab-exp-long --table --compact --compare-to runs/lab-exp
# runs kept with their evaluation only (their students lost with a machine) trained again, from the same init, for
# the measurements the tables need (read with `--also runs/lab-exp8-m`), and kept apart
.venv/bin/python experiments/lab_experiment.py --teacher runs/lab_teacher.safetensors --out runs/lab-exp8-m \
    --keep experiments/results/lab-exp8-m --remeasure runs/lab-exp8 --arms sc-dmd --seeds 8 --updates 300
```

Stages, each skipped where finished and resumed where it stopped:
1. ODE initialisation from the teacher (`lab-ode-init`): causal, and bidirectional for the bidir arms
   (`<out>/ode-causal`, `<out>/ode-bidir`; seed 0, shared by every arm and seed);
2. reference rows (`<out>/teacher`, `<out>/exact`): the learned and the exact teacher, 40 Euler steps, on the
   students' captions and initial noise; and each ODE initialisation evaluated as the arms are (where they start);
3. each arm × seed (`<out>/<arm>/seed<s>`) from the matching ODE init: a `python -m comfyui_salt distill`
   subprocess (resumes from its last checkpoint; finished = summary.json). The arms the paper's five claims need
   (CLAIM_ARMS) run first, seed by seed, then the λ_SC dose response and the exact-score pair;
4. evaluation of each finished run (lab_eval.py) into `<out>/<arm>/seed<s>/lab_eval.json`: per-clip exact
   quantities at 4 and 2 NFE on paired noise (the same captions for every run; the noise seed
   lab_arms.eval_seed(seed): the same for every arm at one training seed, another for every seed), the 8-step
   semigroup defect per clip on the student's own rollout states (`training.distill_eval.defect_samples`), the
   rate of chunk-mode switches per chunk boundary within the clip (`switch`) and along a 3×-length rolling-cache
   rollout (`drift`, causal students), and the run's summary.json (SC-acted and aligned update counts). An
   evaluation from an older EVAL_VERSION is redone.
`--table` prints, per arm and NFE, means with 95 % t intervals over the per-seed values
(`salt_core.metrics.bootstrap.seed_t_interval`; lab_tables.INTERVAL_METHOD) and paired differences against the
reference arm of the same student kind (`dmd`, or `bidir-dmd` for the bidirectional arms; `salt-exact` against
`dmd-exact`, the same real score; same seeds, same clips, same resample). Extra settings for every job:
`--set key=value` (e.g. tiny sizes in the CI smoke). The evaluation of one run is lab_eval.py; the arms are
defined in lab_arms.py; the tables and the claims' verdict rules are in lab_tables.py.
"""
import argparse
import filecmp
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import torch

from comfyui_salt.experiments import lab_keep
from comfyui_salt.experiments.lab_eval import evaluate_reference, evaluate_run, export_evals, load_results
from comfyui_salt.experiments.lab_arms import (ARMS, CLAIM_ARMS, MECHANISM, MECHANISM_ARMS, ODE_INITS, PROBE_ARMS,
                                               REFERENCES, TRIPLET_ARMS, student_kind)
from comfyui_salt.experiments.lab_tables import format_claims, format_progress, format_table


# -- running the stages ------------------------------------------------------------------------------------------
def _flags(overrides: dict) -> list:
    out = []
    for k, v in overrides.items():
        v = ",".join(str(x) for x in v) if isinstance(v, (tuple, list)) else str(v)
        out += [f"--{k.replace('_', '-')}", v]
    return out


def _job_fields(preset: str) -> set:
    """The settings the job of `preset` takes: an ODE initialisation's (OdeInitConfig) or a distillation's."""
    import dataclasses
    from comfyui_salt.training.distill_config import DistillConfig
    from comfyui_salt.training.ode_init_config import ODE_INIT_PRESETS, OdeInitConfig
    return {f.name for f in dataclasses.fields(OdeInitConfig if preset in ODE_INIT_PRESETS else DistillConfig)}


def parse_sets(pairs) -> dict:
    """`--set key=value` pairs → {key: value} (values are parsed by the CLI's typed flags). Each job takes the keys
    its config has (the ODE initialisations take the shared ones and their own); a key no job takes is refused."""
    out = {}
    known = _job_fields("lab-ode-init") | _job_fields("lab-dmd")
    for p in pairs or ():
        if "=" not in p:
            raise SystemExit(f"--set {p!r}: expected key=value, e.g. --set batch_size=2")
        k, v = p.split("=", 1)
        if k.strip() not in known:
            raise SystemExit(f"--set {p!r}: {k.strip()!r} is a setting of neither the distillation nor the ODE "
                             f"initialisation (docs/training.md lists them)")
        out[k.strip()] = v.strip()
    return out


def ode_export(out: str, kind: str) -> str:
    return os.path.join(out, ODE_INITS[kind], "export", "student.safetensors")


def arm_overrides(arm: str, seed: int, out: str, teacher: str, updates: int, extra: dict) -> dict:
    """Every setting an arm's run gets on top of its preset."""
    preset, over = ARMS[arm]
    o = {"teacher": teacher, "student_init": ode_export(out, student_kind(arm)), "seed": seed, **extra, **over}
    if updates:
        o["gen_steps"] = updates
    if o["teacher"] == "exact":
        o["critic_init"] = teacher   # the critic starts from the learned teacher; the real score is exact
    return o


def _command(preset: str, run_dir: str, overrides: dict) -> list:
    """The CLI arguments of one job: `ode-init` or `distill`, with the overrides its config takes."""
    from comfyui_salt.training.ode_init_config import ODE_INIT_PRESETS
    fields = _job_fields(preset)
    command = "ode-init" if preset in ODE_INIT_PRESETS else "distill"
    taken = {k: v for k, v in overrides.items() if k in fields}
    return [command, "--preset", preset, "--out", run_dir, *_flags(taken)]


EVAL_S = 300   # seconds a finished run's evaluation and measurements may take beside a running job (an estimate)


def measured_pace(run_dirs, least: int = 20):
    """Seconds per update of the first of `run_dirs` trained on this machine (not restored from the repository)
    whose metrics log holds at least `least` of them: the lower quartile of its `sec_per_step` records, the pace
    it keeps while nothing else takes the cores (tests or CI beside a run double it for a while); or None."""
    for run_dir in run_dirs:
        path = os.path.join(run_dir, "metrics.jsonl")
        if lab_keep.is_restored(run_dir) or not os.path.exists(path):
            continue
        paces = []
        with open(path) as f:
            for line in f:
                try:
                    value = json.loads(line).get("sec_per_step")
                except (ValueError, AttributeError):
                    continue
                if isinstance(value, (int, float)) and value > 0:
                    paces.append(float(value))
        if len(paces) >= least:
            return statistics.quantiles(paces, n=4)[0]
    return None


def job_seconds(run_dir: str, overrides: dict, per_update: float, milestones=(), pace_from=()) -> float:
    """Seconds a distill job in `run_dir` still needs: the updates from its newest checkpoint (or a continued run's
    copied one) to `overrides["gen_steps"]`, plus its evaluation and one more per milestone (UPDATES, ...) still
    ahead of it. An update takes the pace measured in the run's own metrics, else in the first of `pace_from` (runs
    of the same arm) that has one (measured_pace), else `per_update` seconds."""
    from comfyui_salt.training.runs import CheckpointManager, has_checkpoint
    done = CheckpointManager(os.path.join(run_dir, "checkpoints")).latest()[0] if has_checkpoint(run_dir) else 0
    total = int(overrides.get("gen_steps", 0))
    ahead = sum(1 for at in milestones if done < at < total)
    pace = measured_pace([run_dir, *pace_from]) or per_update
    return max(0, total - done) * pace + EVAL_S * (1 + ahead)


def run_jobs(jobs: list, workers: int = 1, in_process: bool = False, after=None, during=None, fits=None) -> int:
    """Run (or resume) `distill` / `ode-init` jobs, `workers` subprocesses at a time; returns how many failed.

    jobs: [(preset, run_dir, overrides, done_path)] in order; a job whose done_path exists is skipped, and one for
    which `fits(run_dir, overrides)` is False when its turn comes is deferred (not started, said, not a failure:
    a job that cannot end before a machine goes would lose its hours). `after(run_dir)`
    runs in this process for every finished job (skipped ones too), once the freed slots have their next jobs;
    `during(run_dir)` for every running one at each look (every 2 s): it must return at once when it has nothing to do.
    Ctrl-C or SIGTERM asks every running job to stop (each saves its checkpoint), waits for them, and re-raises.
    `in_process` runs each job through the CLI's main in this process instead (the CI smoke)."""
    queue, running, ready, failed = list(jobs), [], [], 0
    try:
        while queue or running or ready:
            for job in list(running):
                run_dir, done, proc = job
                if proc.poll() is None:
                    if during:
                        during(run_dir)
                    continue
                running.remove(job)
                if proc.returncode == 0 and os.path.exists(done):
                    ready.append(run_dir)
                else:
                    failed += 1
                    print(f"failed ({proc.returncode}): {run_dir}; rerun to resume", flush=True)
            while queue and len(running) < max(1, workers):
                preset, run_dir, overrides, done = queue.pop(0)
                if not os.path.exists(done) and in_process:
                    from comfyui_salt.__main__ import main as cli
                    cli(_command(preset, run_dir, overrides))
                if os.path.exists(done):
                    ready.append(run_dir)
                elif in_process:
                    failed += 1
                elif fits is not None and not fits(run_dir, overrides):
                    print(f"deferred: {run_dir} (it would not end before --deadline; rerun later to run it)",
                          flush=True)
                else:
                    cmd = [sys.executable, "-m", "comfyui_salt", *_command(preset, run_dir, overrides)]
                    print("run:", " ".join(cmd), flush=True)
                    running.append((run_dir, done, subprocess.Popen(cmd)))
            if ready:          # the freed slots have their next jobs: now one evaluation
                run_dir = ready.pop(0)
                if after:
                    after(run_dir)
            elif running:
                time.sleep(2)
    except KeyboardInterrupt:   # Ctrl-C or kill: ask the children to stop (they save), wait, then stop
        for _, _, proc in running:
            proc.send_signal(signal.SIGINT)
        for _, _, proc in running:
            proc.wait()
        raise
    return failed


def arms_needed(arms) -> set:
    return {student_kind(a) for a in arms}


def arm_order(arms, seeds: int, first=()) -> list:
    """[(arm, seed)] in run order, each once: the (arm, seed) pairs of `first` (a pair named twice runs at its first
    place: run twice, its second copy would start while the first still trains, refused by the run folder's lock,
    and the runner would count a failure), then the claim arms seed by seed, then the others seed by seed."""
    claim = [a for a in arms if a in CLAIM_ARMS]
    rest = [a for a in arms if a not in CLAIM_ARMS]
    order = list(dict.fromkeys((a, s) for a, s in first if a in arms and s < seeds))
    return order + [(a, s) for group in (claim, rest) for s in range(seeds) for a in group if (a, s) not in order]


def parse_first(text: str) -> list:
    """`--first sc20:0,sc2:0` → [("sc20", 0), ("sc2", 0)]."""
    out = []
    for item in filter(None, text.split(",")):
        arm, _, seed = item.partition(":")
        if arm not in ARMS or not seed.isdigit():
            raise SystemExit(f"--first {item!r}: expected arm:seed with an arm of {list(ARMS)}, e.g. sc20:0")
        out.append((arm, int(seed)))
    return out


def extend_from(src: str, dst: str, updates: int) -> bool:
    """Start run folder `dst` where the finished run `src` ended (its config, metrics and newest checkpoint), so
    `updates` > the updates `src` made continues that run instead of repeating its first updates; True if it did.
    Distillation has no learning-rate schedule and resumes exactly, so the continued run is the run a longer first
    start would give. Nothing is done when `dst` already holds a checkpoint or a summary, or `src` has not finished;
    SystemExit when `src` already made `updates` or more (nothing to continue)."""
    from comfyui_salt.training.runs import CheckpointManager
    from comfyui_salt.training.runs import has_checkpoint
    if _started(dst):
        return False
    if not (os.path.exists(os.path.join(src, "summary.json")) and has_checkpoint(src)):
        return False
    step, ckpt = CheckpointManager(os.path.join(src, "checkpoints")).latest()
    if step >= updates:
        raise SystemExit(f"--extend-from: {src} already made {step} updates; pass --updates above {step} to "
                         f"continue it, or drop --extend-from")
    os.makedirs(os.path.join(dst, "checkpoints"), exist_ok=True)
    for name in ("config.json", "metrics.jsonl"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
    target = os.path.join(dst, "checkpoints", os.path.basename(ckpt))
    shutil.copytree(ckpt, target + ".tmp", dirs_exist_ok=True)
    os.replace(target + ".tmp", target)
    return True


def _started(run_dir: str) -> bool:
    """Whether a run folder holds a checkpoint or a finished run's summary (something a job resumes or skips)."""
    from comfyui_salt.training.runs import has_checkpoint
    return has_checkpoint(run_dir) or os.path.exists(os.path.join(run_dir, "summary.json"))


def _stored_init(run_dir: str):
    """The student_init a run folder holding checkpoints was started with (a resume must pass the same), or None."""
    from comfyui_salt.training.runs import CONFIG_FILE, has_checkpoint
    if not has_checkpoint(run_dir):
        return None
    with open(os.path.join(run_dir, CONFIG_FILE)) as f:
        return json.load(f).get("student_init")


def _same_init(a: str, b: str) -> bool:
    """True when the ODE-init folders `a` and `b` hold the same evaluation (every per-clip value): the init an
    experiment kept without its student is the one the experiment it extends still has."""
    ea, eb = (lab_keep.read_json(os.path.join(run_dir, "lab_eval.json")) or {} for run_dir in (a, b))
    return ea.get("nfe") is not None and (ea.get("nfe"), ea.get("defect8")) == (eb.get("nfe"), eb.get("defect8"))


def check_same_starts(first: str, other: str, kinds) -> None:
    """SystemExit unless experiment folder `other` starts every student kind in `kinds` from the ODE init `first`
    does (the same exported student, byte for byte; or, where `other` kept it without its student, the same
    evaluation): runs continued from both are then runs of one experiment."""
    for kind in kinds:
        a, b = ode_export(first, kind), ode_export(other, kind)
        same = (filecmp.cmp(a, b, shallow=False) if os.path.exists(a) and os.path.exists(b)
                else _same_init(os.path.join(first, ODE_INITS[kind]), os.path.join(other, ODE_INITS[kind])))
        if not same:
            raise SystemExit(f"--extend-from {first},{other}: the {kind} ODE init of {other} is not {first}'s; "
                             f"runs continued from both would not share their start. Extend from one of them, or "
                             f"from folders made from the same init (--remeasure {first} shares it)")


def _share_starts(src: str, dst: str, kinds) -> None:
    """Copy `src`'s ODE initialisations (export, config, evaluation; each folder whole, then renamed into place) and
    reference evaluations into `dst` where missing: a continued experiment starts from the init it extends."""
    for kind in kinds:
        a, b = os.path.join(src, ODE_INITS[kind]), os.path.join(dst, ODE_INITS[kind])
        if os.path.exists(ode_export(src, kind)) and not os.path.exists(b):
            shutil.rmtree(b + ".tmp", ignore_errors=True)
            os.makedirs(b + ".tmp")
            shutil.copytree(os.path.join(a, "export"), os.path.join(b + ".tmp", "export"))
            for name in ("config.json", "lab_eval.json", "sc_mechanism.json"):   # the init's own measurement too
                if os.path.exists(os.path.join(a, name)):
                    shutil.copy2(os.path.join(a, name), os.path.join(b + ".tmp", name))
            os.replace(b + ".tmp", b)
    for ref in REFERENCES:
        a, b = os.path.join(src, ref, "lab_eval.json"), os.path.join(dst, ref, "lab_eval.json")
        if os.path.exists(a) and not os.path.exists(b):
            os.makedirs(os.path.dirname(b), exist_ok=True)
            shutil.copy2(a, b + ".tmp")
            os.replace(b + ".tmp", b)


def measure_finished(run_dir: str, clips: int) -> None:
    """The measurements a finished run's checkpoints are needed for, made now (they may not outlive the session):
    the SC-triplet defects of TRIPLET_ARMS' runs and the SC mechanism of MECHANISM_ARMS' (at their milestones too)
    and of the causal ODE initialisation; each cached in the run folder."""
    from comfyui_salt.experiments import lab_sc_mechanism as mech
    from comfyui_salt.experiments import lab_sc_triplets as trip
    arm = mech.arm_of(run_dir)
    if arm in TRIPLET_ARMS:
        trip.measure(run_dir, clips)
    if arm in MECHANISM_ARMS or arm == ODE_INITS["causal"]:
        steps = () if arm == ODE_INITS["causal"] else MECHANISM["at_updates"]
        for at in (*steps, None):
            try:
                mech.measure_run(run_dir, MECHANISM["clips"], MECHANISM["flow_steps"], at)
            except mech.MissingMilestone as e:
                print(f"not measured: {e}", file=sys.stderr)   # trained shorter than the milestone (smoke runs)


def unmeasured(run_dir: str, arm: str) -> list:
    """The files of the measurements `arm`'s runs are kept with (measure_finished's, and the metrics of the probe
    arms) that `run_dir` lacks: what a run kept with its evaluation only is missing."""
    need = (("sc_triplets.json", TRIPLET_ARMS), ("sc_mechanism.json", MECHANISM_ARMS), (lab_keep.METRICS, PROBE_ARMS))
    return [name for name, arms in need if arm in arms and not os.path.exists(os.path.join(run_dir, name))]


def finish_run(args, run_dir: str) -> None:
    """After a run finishes: its evaluation, with --keep its measurements and kept files (lab_keep.py), and with
    --milestone the evaluations of its milestone students as the shorter budgets' results."""
    evaluate_run(run_dir, args.clips)
    if lab_keep.is_restored(run_dir):
        return
    rel = os.path.relpath(run_dir, args.out)
    for at, out, keep in args.milestone:   # first: once the run is kept, a new machine would not redo them
        evaluate_milestone(run_dir, at, os.path.join(out, rel), args.clips, keep and os.path.join(keep, rel))
    if args.keep:
        measure_finished(run_dir, args.clips)
        lab_keep.keep_run(run_dir, os.path.join(args.keep, rel), metrics=rel.split(os.sep)[0] in PROBE_ARMS)


def evaluate_reached_milestones(milestones: list, out: str, run_dir: str, clips: int) -> None:
    """--milestone while run `run_dir` (of experiment `out`) trains: each milestone checkpoint it has reached is
    evaluated (and kept) at once, as finish_run would at the end, so a run left unfinished by a lost machine still
    gives its shorter budgets. Returns at once where there is nothing new (a milestone evaluated, or not reached)."""
    from comfyui_salt.training.runs import CheckpointManager
    rel = os.path.relpath(run_dir, out)
    for at, folder, keep in milestones:
        dest = os.path.join(folder, rel)
        if os.path.exists(dest) or not os.path.isdir(os.path.join(run_dir, "checkpoints")):
            continue
        if at in dict(CheckpointManager(os.path.join(run_dir, "checkpoints")).complete()):
            print(f"--milestone: {run_dir} reached update {at}; evaluating it now into {dest}", flush=True)
            evaluate_milestone(run_dir, at, dest, clips, keep and os.path.join(keep, rel))


def evaluate_milestone(run_dir: str, at: int, dest: str, clips: int, keep: str = "") -> None:
    """The student run `run_dir` had after `at` updates, evaluated as that arm × seed's result in another experiment
    folder (`dest`: lab_eval.json and lab_keep.MILESTONE_MARK, which the runner there takes as finished), and kept
    under `keep` when given. Distillation has no learning-rate schedule, so this is the evaluation a run of `at`
    updates gives (tests/test_lab_experiment.py compares them); nothing is done where `dest` holds a run."""
    if os.path.exists(dest) and not lab_keep.finished_elsewhere(dest):
        print(f"--milestone: {dest} holds a run of its own; left as it is", file=sys.stderr)
        return
    if not os.path.exists(dest):   # made whole in a temporary folder, then renamed: an interruption leaves no dest
        tmp = os.path.join(os.path.dirname(dest), f".milestone-{os.path.basename(dest)}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        evaluate_run(run_dir, clips, at=at, dest=tmp)
        with open(os.path.join(tmp, lab_keep.MILESTONE_MARK), "w") as f:
            json.dump({"of": os.path.normpath(run_dir), "at": at}, f)
        os.replace(tmp, dest)
    if keep:
        lab_keep.keep_run(dest, keep)


def parse_milestone(text: str) -> tuple:
    """`1000:runs/lab-exp8-1k[:experiments/results/lab-exp8-1k]` → (1000, out, keep or "")."""
    at, _, rest = text.partition(":")
    out, _, keep = rest.partition(":")
    if not at.isdigit() or int(at) < 1 or not out:
        raise SystemExit(f"--milestone {text!r}: expected UPDATES:FOLDER[:KEPT], e.g. "
                         f"1000:runs/lab-exp8-1k:experiments/results/lab-exp8-1k")
    return int(at), out, keep


def check_milestones(args, extra: dict) -> None:
    """Before any training: every --milestone below --updates and a multiple of checkpoint_keep_every (--set), so
    the runs keep the checkpoints it reads."""
    keep_every = int(extra.get("checkpoint_keep_every", 0) or 0)
    for at, _, _ in args.milestone:
        if not args.updates or at >= args.updates:
            raise SystemExit(f"--milestone {at}: expected fewer updates than --updates={args.updates}")
        if not keep_every or at % keep_every:
            raise SystemExit(f"--milestone {at}: the runs keep no checkpoint at update {at}; add "
                             f"--set checkpoint_keep_every={at} (or a divisor of it)")


def restore_kept(args) -> None:
    """--keep: the runs kept in the repository written back under --out where missing (lab_keep.restore_runs)."""
    for run_dir in lab_keep.restore_runs(args.keep, args.out):
        print(f"restored from {args.keep}: {run_dir}", flush=True)


def pending(args) -> list:
    """[(arm, seed)] in run order that have no result here yet (not finished elsewhere: kept or a milestone); with
    --remeasure only those whose run in that folder was kept without the measurements of its arm (unmeasured)."""
    todo = [(arm, seed) for arm, seed in arm_order(args.arms, args.seeds, parse_first(args.first))
            if not lab_keep.finished_elsewhere(os.path.join(args.out, arm, f"seed{seed}"))]
    if args.remeasure:
        todo = [(arm, seed) for arm, seed in todo if remeasured(args, arm, seed)]
    return todo


def remeasured(args, arm: str, seed: int) -> bool:
    """--remeasure: True when that folder's run of `arm` × `seed` was kept without its arm's measurements (then
    this experiment trains it again, from the same ODE init, for them). SystemExit when that run made another
    number of updates than --updates: the run again would not be the same run."""
    src = os.path.join(args.remeasure, arm, f"seed{seed}")
    if not (lab_keep.is_restored(src) and unmeasured(src, arm)):
        return False
    made = None
    for name in ("lab_eval.json", "summary.json"):   # the evaluation records the run's summary
        if os.path.exists(os.path.join(src, name)):
            with open(os.path.join(src, name)) as f:
                got = json.load(f)
            made = made or (got.get("summary", got) or {}).get("gen_updates")
    if made is None:
        raise SystemExit(f"--remeasure {args.remeasure}: {src} records no update count (no lab_eval.json or "
                         f"summary.json with gen_updates); it cannot be trained again as the same run")
    if made != args.updates:
        raise SystemExit(f"--remeasure {args.remeasure}: {src} made {made} updates, not --updates={args.updates}; "
                         f"pass --updates {made}")
    return True


def run_stages(args, extra: dict) -> int:
    """Every missing stage (ODE inits, references, arms × seeds, evaluations); returns how many jobs failed.
    An ODE initialisation is made only for a student kind with runs still to do."""
    if args.workers > 1 and "threads" not in extra:   # the cores shared out (one thread each on 2 cores)
        extra = {**extra, "threads": max(1, (os.cpu_count() or 1) // args.workers)}
    if int(extra.get("threads", 0)) > 0:   # this process evaluates beside the jobs
        torch.set_num_threads(int(extra["threads"]))
    if args.keep:
        restore_kept(args)
    # the experiment whose ODE inits this one starts from: the first --extend-from folder, or --remeasure's
    starts = args.extend_from[0] if args.extend_from else args.remeasure
    if args.remeasure and not os.path.isdir(args.remeasure):
        raise SystemExit(f"--remeasure {args.remeasure}: no such experiment folder; run that experiment's command "
                         f"first (with its --keep it restores its kept runs there)")
    todo = pending(args)
    kinds = sorted({student_kind(arm) for arm, _ in todo})
    for kind in kinds:   # kept without its student (the evaluation only): made again, every run starts from it
        run_dir = os.path.join(args.out, ODE_INITS[kind])
        if (starts and lab_keep.is_restored(run_dir) and not os.path.exists(ode_export(args.out, kind))
                and os.path.exists(ode_export(starts, kind)) and _same_init(run_dir, os.path.join(starts,
                                                                                           ODE_INITS[kind]))):
            shutil.rmtree(run_dir)   # kept here without its student: shared again from the experiment it extends
        if lab_keep.is_restored(run_dir) and not os.path.exists(ode_export(args.out, kind)):
            kept = [f"{arm}/seed{seed}" for arm in ARMS for seed in range(args.seeds) if student_kind(arm) == kind
                    and lab_keep.finished_elsewhere(os.path.join(args.out, arm, f"seed{seed}"))]
            if kept:   # a new init repeats the lost one only up to another machine's floating point, unchecked
                raise SystemExit(f"{run_dir}: the {kind} ODE init was kept without its student, and runs started "
                                 f"from it are kept ({', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''}); "
                                 f"new runs from a new init would be paired with them. Run this arm set in a new "
                                 f"--out/--keep folder (or put the init's student.safetensors back in the kept one)")
            shutil.rmtree(run_dir)
    if starts:
        for other in args.extend_from[1:]:   # continued runs of one experiment share one init
            check_same_starts(starts, other, kinds)
        if args.remeasure and any(not os.path.exists(ode_export(starts, kind)) for kind in kinds):
            raise SystemExit(f"--remeasure {starts}: its ODE init has no student here (the runs would start from "
                             f"another one); run that experiment's command first, which restores it")
        _share_starts(starts, args.out, kinds)
    ode = []
    for kind in kinds:
        o = {"teacher": args.teacher, "student_kind": kind, **extra}
        if args.ode_updates:
            o["gen_steps"] = args.ode_updates
        ode.append(("lab-ode-init", os.path.join(args.out, ODE_INITS[kind]), o, ode_export(args.out, kind)))
    if run_jobs(ode, args.workers, args.in_process):
        raise SystemExit("an ODE initialisation did not finish; rerun to resume")
    for ref in REFERENCES:
        evaluate_reference(args.out, ref, args.teacher, args.clips)
        if args.keep:
            lab_keep.keep_run(os.path.join(args.out, ref), os.path.join(args.keep, ref))
    for kind in kinds:   # where every arm starts
        run_dir = os.path.join(args.out, ODE_INITS[kind])
        evaluate_run(run_dir, args.clips, sampling=extra)
        if args.keep and not lab_keep.is_restored(run_dir):
            measure_finished(run_dir, args.clips)
            # its student too, unless it is the extended experiment's (kept there)
            lab_keep.keep_run(run_dir, os.path.join(args.keep, ODE_INITS[kind]), weights=not starts)
    if starts and not args.updates:
        flag = "--extend-from" if args.extend_from else "--remeasure"
        raise SystemExit(f"{flag} needs --updates: how many updates the runs end at")
    jobs = []
    for arm, seed in todo:
        run_dir = os.path.join(args.out, arm, f"seed{seed}")
        for src in args.extend_from:   # the first folder holding this run finished, with its checkpoint
            if extend_from(os.path.join(src, arm, f"seed{seed}"), run_dir, args.updates):
                print(f"continues {os.path.join(src, arm, f'seed{seed}')}: {run_dir}", flush=True)
                break
        else:
            if args.extend_from and not _started(run_dir):
                print(f"{run_dir}: no --extend-from folder holds {arm}/seed{seed} finished with its checkpoint; "
                      f"it trains from the ODE init", flush=True)
        over = arm_overrides(arm, seed, args.out, args.teacher, args.updates, extra)
        stored = _stored_init(run_dir)   # a continued run keeps its init file's path (a setting of the run)
        if stored and os.path.exists(stored) and os.path.exists(over["student_init"]) and filecmp.cmp(
                stored, over["student_init"], shallow=False):
            over["student_init"] = stored
        jobs.append((ARMS[arm][0], run_dir, over, os.path.join(run_dir, "summary.json")))
    fits = None
    if args.deadline:
        def fits(run_dir, overrides):
            arm_dir = os.path.dirname(run_dir)   # the arm's other runs here: their pace, this run's estimate
            others = sorted(os.path.join(arm_dir, d) for d in (os.listdir(arm_dir) if os.path.isdir(arm_dir) else ())
                            if d.startswith("seed"))
            need = job_seconds(run_dir, overrides, args.seconds_per_update, [at for at, _, _ in args.milestone],
                               pace_from=[d for d in others if d != run_dir])
            left = args.deadline - time.time()
            if need > left:
                print(f"{run_dir}: needs about {need / 60:.0f} min, {max(0, left) / 60:.0f} min left before "
                      f"--deadline", flush=True)
            return need <= left
    return run_jobs(jobs, args.workers, args.in_process, after=lambda d: finish_run(args, d),
                    during=lambda d: evaluate_reached_milestones(args.milestone, args.out, d, args.clips), fits=fits)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/lab-exp", help="experiment folder (one subfolder per stage, arm and seed)")
    p.add_argument("--teacher", default="", help="the learned lab teacher file (teacher_mode metadata)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm (0..seeds-1)")
    p.add_argument("--updates", type=int, default=0, help="generator updates per arm (0 = the preset's)")
    p.add_argument("--ode-updates", type=int, default=0, help="ODE-init steps (0 = the preset's)")
    p.add_argument("--arms", default=",".join(ARMS), help="comma list of arms (default: all)")
    p.add_argument("--clips", type=int, default=48, help="evaluation clips per run (paired across arms)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--workers", type=int, default=1, help="jobs at a time (each gets cores / workers threads unless "
                                                          "--set threads=N; 2 on 2 cores: ~1.4× the throughput)")
    p.add_argument("--first", default="", metavar="ARM:SEED,...", help="runs to do before the claim arms (e.g. "
                                                                       "the λ_SC dose response on seed 0)")
    p.add_argument("--extend-from", default="", metavar="DIR[,DIR...]",
                   help="continue each arm × seed finished in DIR (a shorter experiment) up to --updates, from its "
                        "ODE init and last checkpoint; with several folders (the same ODE init in each, e.g. an "
                        "experiment and its --remeasure folder) each run continues from the first that holds it "
                        "finished with its checkpoint")
    p.add_argument("--remeasure", default="", metavar="DIR", help="train again here only the runs of the experiment "
                   "DIR (same teacher, --updates and seeds) that were kept with their evaluation only, from DIR's ODE "
                   "init, for the measurements their arm needs (SC triplets, mechanism, gradient probes); the "
                   "tables read them with --also here")
    p.add_argument("--keep", default="", metavar="DIR", help="the repository's kept folder of this experiment "
                   "(e.g. experiments/results/lab-exp8; one per teacher): runs kept there are restored under --out "
                   "and not rerun, and each run that finishes here is measured and kept there at once "
                   "(experiments/lab_keep.py)")
    p.add_argument("--milestone", action="append", default=[], type=parse_milestone, metavar="UPDATES:DIR[:KEPT]",
                   help="also evaluate each finished run's student after UPDATES updates (its milestone checkpoint: "
                        "--set checkpoint_keep_every=UPDATES) as that arm × seed's result in the experiment folder "
                        "DIR (kept in KEPT): one run gives a shorter budget too")
    p.add_argument("--deadline", type=float, default=0, metavar="UNIX_TIME", help="start no run that would not "
                   "end (with its evaluations) by then, e.g. $(date -d 13:45 +%%s) before a machine goes: each is "
                   "deferred, said, to a later rerun, and the next one that fits goes first")
    p.add_argument("--seconds-per-update", type=float, default=4.5, metavar="S", help="with --deadline: the time "
                   "one update takes with the other workers beside it, for a run without a measured pace (its own "
                   "metrics', else its arm's other runs' here; 3.3-4.3 s for dmd and salt on 2 cores, 2026-12-07)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every job")
    p.add_argument("--table", action="store_true", help="only print the table of finished runs")
    p.add_argument("--compact", action="store_true", help="the columns of the docs' table only")
    p.add_argument("--compare-to", default="", metavar="DIR", help="also print what more updates changed: each arm "
                                                                    "against the same arm and seeds in DIR (e.g. "
                                                                    "the 300-update runs the long pair continued)")
    p.add_argument("--export", default="", metavar="DIR", help="with --table: also copy the evaluations, gzipped, to "
                                                              "DIR (what the repository keeps; --out DIR reprints)")
    p.add_argument("--in-process", action="store_true", help="run the jobs in this process (tests; no Ctrl-C resume "
                                                             "of a single job beyond its checkpoints)")
    args = p.parse_args(argv)
    args.arms = [a for a in args.arms.split(",") if a]
    args.extend_from = [d for d in args.extend_from.split(",") if d]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {list(ARMS)}")
    if args.remeasure and args.extend_from:
        raise SystemExit("--remeasure and --extend-from: pass one (--remeasure trains runs of DIR again at their "
                         "own --updates; --extend-from continues them to more)")
    if args.remeasure and args.milestone:
        raise SystemExit("--remeasure with --milestone: a run trained again for its measurements gives no other "
                         "budget's result; drop --milestone")
    if args.remeasure and os.path.abspath(args.remeasure) == os.path.abspath(args.out):
        raise SystemExit(f"--remeasure {args.remeasure}: the same folder as --out; train the runs again in "
                         f"another one (e.g. --out {os.path.normpath(args.out)}-m)")
    if not args.table:
        if not args.teacher:
            raise SystemExit("--teacher <learned lab teacher file> is needed to run stages (or pass --table)")
        def stop(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, stop)   # `kill <pid>` stops like Ctrl-C (the running job saves first)
        check_milestones(args, parse_sets(args.set))
        try:
            failed = run_stages(args, parse_sets(args.set))
        except KeyboardInterrupt:
            print("stopped; every run saved its last checkpoint: rerun the same command to resume", flush=True)
            return 130
        if failed:
            print(f"{failed} run(s) failed (see above); rerun the same command to resume them", flush=True)
    if args.export:
        print(f"exported {export_evals(args.out, args.export)} evaluations to {args.export}")
    results = load_results(args.out, args.arms)
    print(format_table(results, args.resamples, args.compact))
    claims = format_claims(results, args.resamples)
    if claims:
        print("\nThe paper's claims (paired by seed and clip; rules at lab_tables.CLAIMS):\n" + claims)
    if args.compare_to:
        try:
            progress = format_progress(results, load_results(args.compare_to, args.arms), args.resamples)
        except ValueError as e:    # e.g. evaluations of another version: their seeds sampled other noise
            print(f"--compare-to {args.compare_to}: {e}", file=sys.stderr)
            return 2
        print(f"\nWhat more updates changed (earlier: {args.compare_to}; mean there → here (Δ here − there, paired "
              f"by seed and clip)):\n" + (progress or "no arm evaluated in both"))
    return 1 if not args.table and failed else 0


if __name__ == "__main__":
    sys.exit(main())
