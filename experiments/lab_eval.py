"""The method lab's evaluation of one run: per-clip exact quantities of a finished student (or of a longer run's
milestone student) on paired noise, the reference rows (the learned and the exact teacher, 40 Euler steps), and
reading and exporting the evaluations of an experiment folder (docs/method_lab.md "The experiment", stage 4).
Used by the runner (lab_experiment.py), the verdicts (lab_verdicts.py) and the SC-triplet diagnosis; knows nothing
of running jobs.
"""
import json
import os
import sys

import torch

from comfyui_salt.experiments.lab_keep import read_json, write_gzip_json
from comfyui_salt.experiments.lab_arms import (ARMS, DEFECT_GRID, EVAL_NFE, EVAL_VERSION, LENGTH_FACTOR, ODE_INITS,
                                               REFERENCE, REFERENCE_STEPS, REFERENCES, eval_seed)


def round6(t) -> list:
    """A tensor's values as a flat list of floats to 6 significant digits (what the evaluations store)."""
    return [float(f"{x:.6g}") for x in t.reshape(-1).tolist()]


# Versions the tables read: the current one, and 2 (the kept 3-seed exports: one evaluation noise for every seed).
READABLE_VERSIONS = (2, EVAL_VERSION)


def load_eval(path: str, versions=(EVAL_VERSION,)):
    """A lab_eval.json (or its gzipped copy from --export) of one of `versions`, or None (absent, or written by
    another evaluation version: then evaluate_run redoes it)."""
    out = read_json(path)
    return out if out is not None and out.get("version") in versions else None


def export_evals(out: str, dest: str) -> int:
    """Copy every current evaluation under `out` to `dest` in the same layout, gzipped (`--table --out dest` then
    prints the same table); returns how many were written. What the repository keeps of an experiment. Copies in
    `dest` of another evaluation version than the one exported are removed (the tables would leave them out)."""
    written, version = set(), None
    for name, runs in load_results(out).items():
        for seed, r in runs.items():
            sub = os.path.join(dest, name) if name not in ARMS else os.path.join(dest, name, f"seed{seed}")
            os.makedirs(sub, exist_ok=True)
            path = os.path.join(sub, "lab_eval.json.gz")
            write_gzip_json(path, {k: v for k, v in r.items() if not k.startswith("_")})
            written.add(os.path.normpath(path))
            version = r["version"]
    for folder, _, files in os.walk(dest):
        path = os.path.normpath(os.path.join(folder, "lab_eval.json.gz"))
        if "lab_eval.json.gz" in files and path not in written and version is not None and load_eval(
                path[:-len(".gz")], (version,)) is None:
            os.remove(path)
    return len(written)


def _write_eval(path: str, out: dict) -> dict:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(path + ".tmp", path)
    return out


def _switch_rate(lab, video, caps) -> list:
    """Per clip, the fraction of chunk boundaries where the exact chunk mode changes (0 = one mode throughout)."""
    from comfyui_salt.toy.lab.metrics import chunk_modes, mode_switches
    modes = chunk_modes(lab, video, caps)
    return round6(mode_switches(modes).double() / (modes.shape[1] - 1))


def _clip_metrics(lab, video, caps) -> dict:
    """The per-clip quantities the table needs from clips (B, C, F, H, W) of captions `caps`."""
    from comfyui_salt.toy.lab.metrics import assign_modes, residual_gram, whitened_coordinates
    mode, _, log_ev = assign_modes(lab, video, caps)
    return {"mode": mode.tolist(), "w": [round6(w) for w in whitened_coordinates(lab, video, mode)],
            "gram": [round6(g) for g in residual_gram(lab, video, mode)], "dims": video[0].numel(),
            "loglik": round6(log_ev / video[0].numel()), "switch": _switch_rate(lab, video, caps), "drift": None}


@torch.no_grad()
def evaluate_reference(out: str, name: str, teacher: str, clips: int, force: bool = False) -> dict:
    """Write (and return) `<out>/<name>/lab_eval.json`: the learned teacher file (`teacher`) or the exact teacher
    (`exact`) sampled with REFERENCE_STEPS Euler steps, bidirectionally, on the students' captions and noise."""
    from comfyui_salt.salt_core.denoiser import FlowDenoiser
    from comfyui_salt.salt_core.samplers import sample_euler
    from comfyui_salt.salt_core.schedules import get_sigmas_uniform
    from comfyui_salt.toy.lab import ExactTeacher, LabTextEncoder
    from comfyui_salt.toy.prompts import lab_eval_captions
    from comfyui_salt.toy.worlds import get_world
    from comfyui_salt.training.distill_config import get_preset
    from comfyui_salt.training.distill_eval import student_noise
    from comfyui_salt.weights.files import load_model
    path = os.path.join(out, name, "lab_eval.json")
    if not force:
        done = load_eval(path)
        if done is not None:
            return done
    cfg = get_preset(ARMS[REFERENCE["causal"]][0])   # sizes, shift and world of the arms
    lab = get_world(cfg.world).lab
    model = ExactTeacher(lab) if name == "exact" else load_model(teacher)[0].eval()
    caps = lab_eval_captions(lab, clips)
    ctx = LabTextEncoder(lab, model.cfg.text_dim, model.cfg.text_len).encode(caps)
    noise, ctx, _ = student_noise(model, cfg, ctx, cfg.num_frames, eval_seed(0))
    video = sample_euler(FlowDenoiser(model, ctx), noise, get_sigmas_uniform(REFERENCE_STEPS, cfg.shift),
                         disable=True).float()
    row = _clip_metrics(lab, video, caps)
    res = {"version": EVAL_VERSION, "noise_seed": eval_seed(0),
           "config": {"world": cfg.world, "student_kind": "bidirectional", "seed": 0,
                      "teacher": teacher if name == "teacher" else "exact"},
           "summary": {}, "captions": caps.tolist(), "nfe": {str(REFERENCE_STEPS): row}, "defect8": None}
    return _write_eval(path, res)


# What a distillation config adds to how a student samples (the KV-cache settings): an ODE initialisation has none.
SAMPLING_FIELDS = ("local_attn_frames", "sink_frames", "context_noise")


@torch.no_grad()
def evaluate_run(run_dir: str, clips: int, force: bool = False, sampling: dict = None, at: int = None,
                 dest: str = None) -> dict:
    """Write (and return) `lab_eval.json` of a finished run: per-clip exact quantities on paired noise.
    `sampling`: the runner's `--set` settings; an ODE initialisation (whose config has no cache settings) samples
    with those of them a distillation has (local_attn_frames, sink_frames, context_noise), as its arms do.
    `at`: evaluate instead the student the run had after `at` updates (its milestone checkpoint, with the summary
    its counts give: what a run stopped there evaluates to), into `dest`/lab_eval.json."""
    from comfyui_salt.salt_core.kv_cache import CachePolicy
    from comfyui_salt.toy.lab.world import LabTextEncoder
    from comfyui_salt.toy.prompts import lab_eval_captions
    from comfyui_salt.toy.worlds import get_world
    from comfyui_salt.training.config_fields import parse_overrides, with_overrides
    from comfyui_salt.training.distill_config import DistillConfig
    from comfyui_salt.training.distill_eval import defect_samples, sample_student
    from comfyui_salt.training.job_configs import as_distill_config, read_run_config
    from comfyui_salt.weights.files import load_model
    path = os.path.join(dest or run_dir, "lab_eval.json")
    if not force:
        done = load_eval(path)
        if done is not None:
            return done
    stored = read_run_config(run_dir)
    cfg = as_distill_config(stored)          # an ODE initialisation's: how its student samples, as its arms do
    if cfg is not stored and sampling:
        cfg = with_overrides(cfg, parse_overrides(
            DistillConfig, "; ".join(f"{k}={v}" for k, v in sampling.items() if k in SAMPLING_FIELDS),
            where="--set"))
    summary = {}   # an ODE initialisation writes none
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    if at is None:
        model, _ = load_model(os.path.join(run_dir, "export", "student.safetensors"))
        model.eval()
    else:
        from comfyui_salt.experiments.lab_sc_mechanism import milestone_student, milestone_summary
        model, summary = milestone_student(run_dir, at), milestone_summary(run_dir, at)
    lab = get_world(cfg.world).lab
    caps = lab_eval_captions(lab, clips)
    ctx = LabTextEncoder(lab, model.cfg.text_dim, model.cfg.text_len).encode(caps)
    noise_seed = eval_seed(cfg.seed)
    out = {"version": EVAL_VERSION, "noise_seed": noise_seed,
           "config": {"world": cfg.world, "student_kind": cfg.student_kind, "seed": cfg.seed, "teacher": cfg.teacher,
                      "sc_weight": cfg.sc_weight},
           "summary": summary, "captions": caps.tolist(), "nfe": {}}
    for nfe in EVAL_NFE:
        video = sample_student(model, cfg, ctx, nfe, seed=noise_seed).cpu()
        row = _clip_metrics(lab, video, caps)
        if cfg.student_kind == "causal":
            frames = cfg.num_frames * LENGTH_FACTOR
            long = sample_student(model, cfg, ctx, nfe, seed=noise_seed, num_frames=frames,
                                  policy=CachePolicy.rolling(cfg.num_frames, relative_rope=True)).cpu()
            row["drift"] = _switch_rate(lab, long, caps)
        out["nfe"][str(nfe)] = row
    _, defects = defect_samples(model, cfg, ctx, grid_steps=DEFECT_GRID, seed=noise_seed)
    out["defect8"] = round6(defects.mean(0))
    return _write_eval(path, out)


# -- an experiment's evaluations ---------------------------------------------------------------------------------
def load_results(out: str, arms=None) -> dict:
    """{arm: {seed: lab_eval dict}} of every evaluated run under `out`, and the reference rows ({"teacher": {0: ...},
    "exact": {0: ...}}) where evaluated. Evaluations of one version only: where a folder holds the current version
    and an older readable one (runs not re-evaluated yet), the older ones are left out, with a note on stderr."""
    found = []
    for ref in REFERENCES + tuple(ODE_INITS.values()):
        found.append((ref, 0, load_eval(os.path.join(out, ref, "lab_eval.json"), READABLE_VERSIONS)))
    for arm in arms or ARMS:
        d = os.path.join(out, arm)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.startswith("seed"):
                found.append((arm, int(name[4:]), load_eval(os.path.join(d, name, "lab_eval.json"),
                                                              READABLE_VERSIONS)))
    found = [f for f in found if f[2] is not None]
    newest = max((r["version"] for _, _, r in found), default=EVAL_VERSION)
    stale = [f"{name}/seed{seed}" for name, seed, r in found if r["version"] != newest]
    if stale:
        print(f"{out}: left out {len(stale)} evaluation(s) of an older version ({', '.join(stale[:4])}"
              f"{', ...' if len(stale) > 4 else ''}); rerun lab_experiment.py on the folder to redo them",
              file=sys.stderr)
    res = {}
    for name, seed, r in found:
        if r["version"] == newest:
            res.setdefault(name, {})[seed] = r
    return res
