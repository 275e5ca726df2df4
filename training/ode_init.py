"""ODE-pair initialisation of a few-step student (Self Forcing's first stage; causal ODE pairs as
Causal Forcing): regress the teacher's deterministic trajectories at the student's grid points
onto their end points, x0_θ(x_{t_k}, t_k | clean past) ≈ x0_teacher.

Pairs are generated once per run (teacher Euler + CFG, AR on a KV cache for a teacher-forcing
teacher) and cached in the run folder; each chunk draws its own grid level (CausVid's per-block
noise), the clean past is the teacher's own output (teacher forcing).
"""
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..salt_core.denoiser import FlowDenoiser
from ..salt_core.kv_cache import CachePolicy
from ..salt_core.samplers import sample_euler
from ..salt_core.schedules import get_sigmas_fewstep, get_sigmas_uniform, sigma_to_t, x0_from_velocity
from ..salt_core.scorenet import ScoreNet
from ..salt_core.streaming import stream_video
from ..salt_core.validate import check_count
from ..weights.files import atomic_write, read_metadata
from .distill_models import (DistillWorld, build_prompts, build_student, build_teacher, check_world,
                             resolve_teacher_kind)
from .distributed import end_process_group, process_info
from .loop import RegressionJob, TrainingLoop, check_stop, stop_step, torch_threads
from .ode_init_config import OdeInitConfig
from .optim import step_generators
from .prompts import prompt_digest, read_prompts_file
from .runs import OVERRIDE_HINT, RunFolder, has_checkpoint, open_run
from .student_config import EXACT
from .validate import check_model_sources, check_ode_init_memory, check_whole_chunks, inactive_terms

log = logging.getLogger("salt.ode_init")


@torch.no_grad()
def generate_ode_pairs(teacher, kind: str, cfg, prompts, num: int, seed: int, batch: int = 64,
                       quiet: bool = False) -> dict:
    """{"states": (N, K, C, F, H, W) at the K grid levels, "x0": (N, C, F, H, W), "context": (N, L, D)}."""
    K = cfg.grid_steps
    grid = [float(s) for s in get_sigmas_fewstep(K, cfg.shift)[:-1]]
    sigmas = get_sigmas_uniform(cfg.ode_teacher_steps, cfg.shift)
    missing = [s for s in grid if not torch.isclose(sigmas, torch.tensor(s, dtype=torch.float64), atol=1e-9).any()]
    if missing:
        raise ValueError(f"ode_teacher_steps={cfg.ode_teacher_steps} does not pass through the {K}-step grid "
                         f"{grid} (missing {missing}); use a multiple of {K}")
    out = {"states": [], "x0": [], "context": []}
    rng_gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = teacher.patch_embedding.weight.device
    bar = tqdm(total=num, desc="ode-pairs", disable=quiet, dynamic_ncols=True)
    for start in range(0, num, batch):
        check_stop()    # Ctrl-C / kill between batches (the pairs are drawn again from the seed on the rerun)
        b = min(batch, num - start)
        _, ctx, unc = prompts.sample(rng, b)
        ctx, unc = ctx.to(device), unc.to(device)
        noise = torch.randn(b, teacher.cfg.in_dim, cfg.num_frames, cfg.height, cfg.width, generator=rng_gen).to(device)
        states = torch.zeros(b, K, *noise.shape[1:])             # kept on the CPU
        level = {round(s, 9): k for k, s in enumerate(grid)}

        def capture(d):
            k = level.get(round(float(d["sigma"]), 9))
            if k is not None:
                f0 = d.get("chunk", 0) * cfg.chunk_frames
                span = noise.shape[2] if "chunk" not in d else cfg.chunk_frames
                states[:, k, :, f0:f0 + span] = d["x"].cpu()
        if kind == "teacher_forcing":
            x0 = stream_video(teacher, noise, ctx, sigmas, policy=CachePolicy.full(cfg.num_frames),
                              chunk_frames=cfg.chunk_frames, stochastic=False, cfg_scale=cfg.guidance_scale,
                              uncond_context=unc, callback=capture)
        else:
            x0 = sample_euler(FlowDenoiser(teacher, ctx, unc, cfg.guidance_scale), noise, sigmas.float(),
                              callback=capture, disable=True)
        out["states"].append(states)
        out["x0"].append(x0.cpu())
        out["context"].append(ctx.cpu())
        bar.update(b)
    bar.close()
    return {k: torch.cat(v) for k, v in out.items()}


def file_digest(path: str, span: int = 1 << 20):
    """[size, sha256 of the first and last `span` bytes] of a file (seconds for any size), None for no file."""
    if not path or not os.path.isfile(path):
        return None
    size, digest = os.path.getsize(path), hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(span))
        f.seek(max(0, size - span))
        digest.update(f.read(span))
    return [size, digest.hexdigest()]


PAIRS_KEY = "salt_ode_pairs"   # the pairs file's metadata: the settings that made them (pairs_settings)


def pairs_settings(cfg: OdeInitConfig, teacher_kind: str, world: DistillWorld = None) -> dict:
    """What the teacher's ODE pairs depend on, as JSON values: the teacher (its file's size and a digest of its first
    and last MiB: another file or a retrained one, not a copy), how it scores, its Euler grid and guidance, the
    clips, the prompts (a real-scale run's: a digest of its prompts file's texts and negative prompt; a world's: its
    name) and the seed. A run folder's pairs are made again when one of these differs (a folder with no checkpoint
    takes new settings; one with checkpoints only when allowed to change them)."""
    source = world.teacher_file if cfg.teacher == "toy" and world is not None else cfg.teacher
    return {"teacher": cfg.teacher, "teacher_file": file_digest(source), "teacher_kind": teacher_kind,
            "grid_steps": cfg.grid_steps, "ode_teacher_steps": cfg.ode_teacher_steps, "shift": cfg.shift,
            "guidance_scale": cfg.guidance_scale, "negative_prompt": cfg.negative_prompt, "ode_pairs": cfg.ode_pairs,
            "clip": [cfg.num_frames, cfg.height, cfg.width] + ([cfg.chunk_frames] if teacher_kind == "teacher_forcing"
                                                                 else []),   # chunks: a teacher's that reads them
            "world": cfg.world,
            "prompts": None if cfg.world else prompt_digest(read_prompts_file(cfg.prompts_file), cfg.negative_prompt),
            "seed": cfg.seed}


def ode_regression_loss(student, kind: str, pairs: dict, idx, levels, grid, chunk: int):
    """MSE between the student's x0 at the drawn levels and the teacher's end points (pairs on the CPU,
    the batch moved to the student's device).

    idx (B,) pair indices; levels (B, F/chunk) grid index per chunk (causal: F whole chunks); a bidirectional
    student takes any F and one level per clip, levels' first column.
    """
    states, x0 = pairs["states"][idx], pairs["x0"][idx]          # (B, K, C, F, H, W), (B, C, F, H, W)
    B, K, C, F, H, W = states.shape
    if kind == "bidirectional":
        frame_level = levels[:, :1].expand(-1, F)                # (B, F)
    else:
        frame_level = levels.repeat_interleave(chunk, 1)         # (B, F)
    gather = frame_level.view(B, 1, 1, F, 1, 1).expand(B, 1, C, F, H, W)
    x_t = states.gather(1, gather).squeeze(1)                    # (B, C, F, H, W)
    sigma = torch.as_tensor(grid, dtype=torch.float64)[frame_level]   # (B, F)
    ctx = pairs["context"][idx]
    device = student.patch_embedding.weight.device
    x_t, x0, sigma, ctx = (a.to(device) for a in (x_t, x0, sigma, ctx))
    if kind == "bidirectional":
        v = student(x_t, sigma_to_t(sigma[:, 0]), ctx)
    else:
        v = ScoreNet(student, "teacher_forcing", chunk).velocity(x_t, sigma, ctx, clean=x0)
    pred = x0_from_velocity(x_t, v, sigma.view(B, 1, F, 1, 1))
    return (pred.float() - x0).pow(2).mean()


def run_ode_init(cfg: OdeInitConfig, out_dir: str, *, max_gen_steps: int = None, callback=None, quiet: bool = False,
                 device=None, allow_changed_settings: bool = False, world: DistillWorld = None):
    """Run (or resume) an ODE initialisation in `out_dir` on `device` (default: CUDA when present, else the CPU);
    returns the (EMA) student.

    The optimiser follows the config's generator settings (lr_gen, beta1, beta2, weight_decay, grad_clip) and
    its ema_decay, with an EMA from step 0; the rate warms up over ode_warmup_steps and decays by a cosine to
    ode_min_lr_ratio · lr_gen at gen_steps. The teacher's trajectories are generated once and kept in the run
    folder (ode_pairs.safetensors). callback(dict) receives progress after every step (gen_step, total, stats) and
    may raise to stop: a resumable checkpoint is saved first. `world`: the DistillWorld of a toy-world run
    (training.distill_models). One process: the job is not sharded, so a torchrun launch is refused.
    A folder holding checkpoints of a run with other settings (or of another job) is refused unless
    `allow_changed_settings`.
    """
    if not isinstance(cfg, OdeInitConfig):
        raise TypeError(f"run_ode_init takes an OdeInitConfig (training.ode_init_config), not {type(cfg).__name__}")
    if max_gen_steps is not None:
        check_count("max_gen_steps", max_gen_steps, where="run_ode_init")
    if cfg.teacher == EXACT:
        raise ValueError("OdeInitConfig.teacher='exact': ODE pairs come from a network teacher here; pass the "
                         "learned teacher's checkpoint as teacher (the exact teacher is a real score for the "
                         "distillation)")
    info = process_info()
    if info.distributed:
        end_process_group()      # every rank refuses here: the group process_info started ends first
        raise ValueError(f"run_ode_init under torchrun ({info.world_size} processes): the ODE initialisation runs in "
                         f"one process (its student is small beside the distillation's three networks); launch it "
                         f"with python, not torchrun")
    check_world(cfg, world, "run_ode_init")
    check_model_sources(cfg, type(cfg).__name__)
    with open_run(cfg, out_dir, allow_changes=allow_changed_settings) as run, torch_threads(cfg.threads):
        device = torch.device(device) if device is not None else info.device
        return _train(cfg, run, max_gen_steps, callback, quiet, device, world, allow_changed_settings)


def _train(cfg: OdeInitConfig, run: RunFolder, max_steps, callback, quiet: bool, device, world,
           allow_changes: bool = False):
    """`run_ode_init` inside its run folder: pairs once, then the regression, run by training.loop."""
    teacher = build_teacher(cfg, world)
    student = build_student(cfg, teacher)
    student.gradient_checkpointing = cfg.grad_checkpointing
    check_ode_init_memory(cfg, student, device, teacher)
    teacher, student = teacher.to(device), student.to(device)
    prompts = build_prompts(cfg, teacher, run.path, world)
    for sentence in inactive_terms(cfg):   # valid, but not what it reads as: said before the pairs
        log.warning(sentence)
    kind = "bidirectional" if cfg.student_kind == "bidirectional" else "teacher_forcing"
    teacher_kind = resolve_teacher_kind(cfg, world)
    check_whole_chunks(cfg, "OdeInitConfig", teacher_kind)   # "auto" known now
    pairs_path = run.file("ode_pairs.safetensors")
    now = pairs_settings(cfg, teacher_kind, world)
    stored = read_metadata(pairs_path).get(PAIRS_KEY) if os.path.exists(pairs_path) else None
    old = json.loads(stored) if stored is not None else {}
    changed = [f"{k}: {old[k]!r} -> {now[k]!r}" for k in sorted(now) if k in old and old[k] != now[k]]
    if changed and has_checkpoint(run.path) and not allow_changes:   # the pairs its checkpoints trained on
        raise ValueError(f"run folder {run.path}: its ODE pairs were made with other settings ({', '.join(changed)}) "
                         f"and its checkpoints trained on them; resume with what made them, start a new run in "
                         f"another folder, or pass {OVERRIDE_HINT} to make the pairs again")
    if changed:   # a folder without a checkpoint took new settings
        log.warning("ode_pairs.safetensors was made with other settings (%s); making the pairs again",
                    ", ".join(changed))
    if not os.path.exists(pairs_path) or changed:
        t = time.time()
        pairs = generate_ode_pairs(teacher, teacher_kind, cfg, prompts, cfg.ode_pairs, cfg.seed, quiet=quiet)
        atomic_write(pairs_path, lambda tmp: save_file({k: v.contiguous() for k, v in pairs.items()}, tmp,
                                                       metadata={PAIRS_KEY: json.dumps(now, sort_keys=True)}))
        run.metrics.write(event="ode_pairs", num=cfg.ode_pairs, seconds=time.time() - t)
    pairs = load_file(pairs_path)
    grid = [float(s) for s in get_sigmas_fewstep(cfg.grid_steps, cfg.shift)[:-1]]

    def loss_fn(step):
        gen, rng = step_generators(cfg.seed, 0, step)
        idx = torch.as_tensor(rng.integers(0, pairs["x0"].shape[0], cfg.batch_size))
        chunks = 1 if kind == "bidirectional" else cfg.num_frames // cfg.chunk_frames   # one level per clip, or chunk
        levels = torch.randint(0, len(grid), (cfg.batch_size, chunks), generator=gen)
        return ode_regression_loss(student, kind, pairs, idx, levels, grid, cfg.chunk_frames)
    job = RegressionJob(student, loss_fn, name="student", loss_name="ode_loss", lr=cfg.lr_gen,
                        betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, warmup=cfg.ode_warmup_steps,
                        total=cfg.gen_steps, min_lr_ratio=cfg.ode_min_lr_ratio, grad_clip=cfg.grad_clip,
                        ema_decay=cfg.ema_decay)
    loop = TrainingLoop(run, "ode-init", quiet=quiet, metadata={
        "salt_config": student.cfg.to_json(), "distill_config": json.dumps(asdict(cfg), default=str)})
    loop.resume(job, ["student", "ema"])
    loop.run(job, stop_step(cfg.gen_steps, max_steps), checkpoint_every=cfg.checkpoint_every,
             keep_every=cfg.checkpoint_keep_every,
             log_every=cfg.log_every, callback=callback, postfix={"loss": "ode_loss"},
             nonfinite_hint="lower lr_gen or check the teacher")
    return job.ema.copy_to(student).eval()
