"""Toy teacher pre-training by flow matching (salt_core's WanModel on the toy world).

Two modes:
- `teacher_forcing` (default; Causal Forcing's AR-diffusion teacher): the clip is fed twice,
  [clean | noisy]; noisy chunk c attends to clean chunks < c and to itself, clean chunks are
  block-causal among themselves, both copies share RoPE positions; every chunk has its own noise
  level. Sampling is chunk by chunk on a KV cache (salt_core.streaming).
- `bidirectional`: one noise level per clip, full attention (Wan 2.1 T2V).
Loss: mean((v - (ε - x0))²) with classifier-free-guidance dropout of the caption.
The data come from a `TeacherWorld` the caller builds (the toy wing's `toy.jobs.teacher_world(cfg)`): this
module imports no world.
The loop (seeding, checkpoints, resume, logs) is training/loop.py; the run folder training/runs.py.
"""
import ast
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import torch

from ..salt_core.config import TOY_SHIFT, get_config, strict_from_dict
from ..salt_core.kv_cache import CachePolicy
from ..salt_core.model import WanModel
from ..salt_core.schedules import add_noise, get_sigmas_uniform, shift_sigma, sigma_to_t
from ..salt_core.streaming import stream_video
from ..salt_core.denoiser import FlowDenoiser
from ..salt_core.samplers import sample_euler
from ..salt_core.scorenet import teacher_forcing_forward
from .config_fields import MAX_THREADS, grouped
from .distributed import launcher_world_size
from .loop import RegressionJob, TrainingLoop, stop_step, torch_threads
from .optim import step_generators
from .runs import CheckpointManager, open_run
from .validate import validate_teacher_config

MODES = ("teacher_forcing", "bidirectional")

log = logging.getLogger("salt.training")


_model, _opt = grouped("model and data"), grouped("optimiser and schedule")
_noise, _runtime, _logs = grouped("training noise"), grouped("runtime"), grouped("checkpoints, evaluation, logs")


@dataclass
class TeacherConfig:
    model_preset: str = _model("toy", "salt_core.config preset of the teacher")
    world: str = _model("default", "toy world preset, or lab:<preset> (the method lab's world); see `TeacherWorld`")
    mode: str = _model("teacher_forcing", "AR chunks attending to a clean copy, or one noise level per clip",
                       choices=MODES)
    chunk_frames: int = _model(3, "frames per AR chunk (teacher_forcing)", count=1)
    batch_size: int = _model(32, "clips per step", count=1)
    total_steps: int = _opt(20000, "optimizer steps (the cosine schedule's length)", count=1)
    lr: float = _opt(1e-3, "AdamW peak learning rate", low=0, low_open=True)
    warmup_steps: int = _opt(200, "linear warm-up", count=0)
    min_lr_ratio: float = _opt(0.1, "cosine floor as a fraction of lr", low=0, high=1)
    beta1: float = _opt(0.9, "AdamW beta1", low=0, high=1, high_open=True)
    beta2: float = _opt(0.99, "AdamW beta2", low=0, high=1, high_open=True)
    weight_decay: float = _opt(0.0, "AdamW weight decay", low=0)
    grad_clip: float = _opt(1.0, "max grad norm", low=0, low_open=True)
    ema_decay: float = _opt(0.999, "EMA of the weights (the shipped teacher is the EMA)", low=0, high=1,
                            high_open=True)
    caption_dropout: float = _noise(0.1, "probability of the empty prompt (CFG training)", low=0, high=1,
                                    high_open=True)
    logit_mean: float = _noise(0.0, "σ = shift(sigmoid(N(mean, std))): the mean")
    logit_std: float = _noise(1.0, "... and the std", low=0, low_open=True)
    shift: float = _noise(TOY_SHIFT, "timestep shift applied to training σ (the toy world's shift)", low=0,
                          low_open=True)
    seed: int = _runtime(0, "every step is seeded from (seed, rank, step)", count=0)
    threads: int = _runtime(2, "torch CPU threads (fixed for bit-identical resume)", count=1, maximum=MAX_THREADS)
    checkpoint_every: int = _logs(250, "steps between checkpoints", count=1)
    checkpoint_keep_every: int = _logs(0, "also keep every checkpoint at a multiple of this many steps (milestones, "
                                          "never pruned; 0 = only the newest two)", count=0)
    eval_every: int = _logs(500, "steps between evaluations; 0 disables", count=0)
    eval_clips: int = _logs(32, "prompts per evaluation", count=1)
    eval_steps: int = _logs(40, "Euler steps for evaluation samples", count=1)
    eval_cfg: float = _logs(3.0, "standard-form CFG scale for evaluation samples", low=0, low_open=True)
    log_every: int = _logs(10, "steps between metrics.jsonl lines", count=1)
    init_from: str = _opt("", "warm start: weights (model and EMA) from this safetensors file")
    init_step: int = _opt(0, "... continuing the schedule and data order at this step", count=0)

    def __post_init__(self):
        validate_teacher_config(self)


def sample_sigmas(cfg: TeacherConfig, shape, gen) -> torch.Tensor:
    """Training noise levels σ ∈ (0, 1): shifted logit-normal."""
    u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(shape, generator=gen, dtype=torch.float64))
    return shift_sigma(u, cfg.shift)


def flow_loss_step(model, cfg: TeacherConfig, videos, context, gen):
    """Flow-matching loss for one batch. videos (B, 3, F, H, W); context (B, Lc, text_dim)."""
    B, _, F, H, W = videos.shape
    noise = torch.randn(videos.shape, generator=gen).to(videos.device)   # drawn on CPU: the same on any device
    if cfg.mode == "bidirectional":
        sigma = sample_sigmas(cfg, (B,), gen).to(videos.device)
        x_t = add_noise(videos, noise, sigma.view(B, 1, 1, 1, 1))
        v = model(x_t, sigma_to_t(sigma), context)
    else:
        chunks = F // cfg.chunk_frames
        sigma = sample_sigmas(cfg, (B, chunks), gen).repeat_interleave(cfg.chunk_frames, 1).to(videos.device)  # (B, F)
        x_t = add_noise(videos, noise, sigma.view(B, 1, F, 1, 1))
        v = teacher_forcing_forward(model, videos, x_t, sigma_to_t(sigma), context, cfg.chunk_frames)
    return (v.float() - (noise - videos)).pow(2).mean()


@torch.no_grad()
def sample_teacher(model, mode: str, captions, encoder, world_cfg, steps=40, cfg_scale=3.0, shift=TOY_SHIFT,
                   seed=0, chunk_frames=3, num_frames=None, return_trajectory: bool = False):
    """Many-step Euler samples (B, 3, F, H, W) with standard CFG, AR on a KV cache or bidirectional.

    With `return_trajectory`, also the ODE trajectory: a list of (chunk, σ, x_σ, x0_pred) per step
    (chunk is 0 for bidirectional teachers, whose states span all frames).
    """
    B = len(captions)
    device = model.patch_embedding.weight.device
    num_frames = num_frames or world_cfg.num_frames
    ctx, unc = encoder.encode(captions).to(device), encoder.empty(B).to(device)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(B, 3, num_frames, world_cfg.height, world_cfg.width, generator=gen).to(device)
    sigmas = get_sigmas_uniform(steps, shift)
    trajectory = []

    def record(d):
        trajectory.append((d.get("chunk", 0), float(d["sigma"]), d["x"].clone(), d["denoised"].clone()))
    callback = record if return_trajectory else None
    if device.type != "cpu" and return_trajectory:
        raise ValueError("sample_teacher(return_trajectory=True) runs on CPU models only")
    if mode == "bidirectional":
        den = FlowDenoiser(model, ctx, unc, cfg_scale)
        out = sample_euler(den, noise, sigmas.float(), disable=True, callback=callback)
    else:
        out = stream_video(model, noise, ctx, sigmas, policy=CachePolicy.full(num_frames), chunk_frames=chunk_frames,
                           stochastic=False, cfg_scale=cfg_scale, uncond_context=unc, callback=callback)
    return (out, trajectory) if return_trajectory else out.cpu()


class TeacherWorld(NamedTuple):
    """What a world lends the teacher job (built by a front door, e.g. `toy.jobs.teacher_world(cfg)`)."""
    cfg: object              # the world's config: num_frames, height, width of its clips
    encoder: object          # captions -> context (B, text_len, text_dim); .empty(B) the unconditional context
    draw: Callable           # draw(step rng, n) -> (videos (B, 3, F, H, W), captions)
    eval_captions: Callable  # eval_captions(n) -> a fixed list of n evaluation captions


def train_teacher(cfg: TeacherConfig, out_dir: str, evaluate=None, max_steps: int = None, quiet: bool = False,
                  device=None, max_seconds: float = None, allow_changed_settings: bool = False, *,
                  world: TeacherWorld):
    """Run (or resume) teacher training in `out_dir`; returns the EMA model (on CPU).

    world: the data (a TeacherWorld for cfg.world, e.g. `toy.jobs.teacher_world(cfg)`).
    evaluate(videos, captions) -> dict of scalars, called every `eval_every` steps on EMA samples.
    `max_steps` stops early (for tests / time-boxed sessions) without changing the schedule;
    `max_seconds` stops after the step that crosses that much wall time (saving a checkpoint).
    `device` (default CPU) holds the model, EMA and batches; data and noise are drawn on CPU.
    A folder holding checkpoints of a run with other settings is refused unless `allow_changed_settings`;
    one process at a time may use a folder (training.runs.open_run); a torchrun launch of several is refused.
    """
    processes = launcher_world_size()
    if processes > 1:        # every rank refuses here, before any of them locks the run folder
        raise ValueError(f"train_teacher under torchrun ({processes} processes): the teacher trains in one process "
                         f"(toy worlds: a small model on the CPU or one GPU); launch it with python, not torchrun")
    frames = world.cfg.num_frames
    if cfg.mode == "teacher_forcing" and frames % cfg.chunk_frames:
        divisors = [d for d in range(1, frames + 1) if not frames % d]
        raise ValueError(f"TeacherConfig.chunk_frames={cfg.chunk_frames} with mode=teacher_forcing; the world "
                         f"{cfg.world!r} has clips of {frames} frames, and teacher forcing trains on whole chunks: "
                         f"expected a chunk_frames that divides {frames} ({', '.join(map(str, divisors))})")
    with open_run(cfg, out_dir, allow_changes=allow_changed_settings) as run, torch_threads(cfg.threads):
        return _train_teacher(cfg, run, world, evaluate, max_steps, quiet, device, max_seconds)


def _train_teacher(cfg, run, world, evaluate, max_steps, quiet, device, max_seconds):
    """`train_teacher` inside the run folder: the job's step and evaluation, run by training.loop."""
    device = torch.device(device or "cpu")
    mcfg = get_config(cfg.model_preset)
    world_cfg, encoder, draw, eval_captions = world
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = WanModel(mcfg).init_weights().to(device)

    def loss_fn(step):
        gen, rng = step_generators(cfg.seed, 0, step)
        videos, captions = draw(rng, cfg.batch_size)
        ctx = encoder.encode(captions)
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout
        ctx[drop] = 0.0
        return flow_loss_step(model, cfg, videos.to(device), ctx.to(device), gen)
    job = RegressionJob(model, loss_fn, name="model", loss_name="loss", lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                        weight_decay=cfg.weight_decay, warmup=cfg.warmup_steps, total=cfg.total_steps,
                        min_lr_ratio=cfg.min_lr_ratio, grad_clip=cfg.grad_clip, ema_decay=cfg.ema_decay)
    loop = TrainingLoop(run, "teacher", quiet=quiet,
                        metadata={"salt_config": mcfg.to_json(), "salt_layout": "wan", "teacher_mode": cfg.mode})
    if not loop.resume(job, ["model", "ema"]) and cfg.init_from:
        from ..weights.files import load_model
        warm, _ = load_model(cfg.init_from)
        model.load_state_dict(warm.state_dict())
        job.restart_from(cfg.init_step)
        log.info("warm start from %s at step %d (fresh optimizer state)", cfg.init_from, job.step)

    def evaluate_ema():
        ema_model = job.ema.copy_to(WanModel(mcfg)).to(device).eval()
        caps = eval_captions(cfg.eval_clips)
        vids = sample_teacher(ema_model, cfg.mode, caps, encoder, world_cfg, cfg.eval_steps, cfg.eval_cfg, cfg.shift,
                              seed=0, chunk_frames=cfg.chunk_frames)
        return evaluate(vids, caps)
    loop.run(job, stop_step(cfg.total_steps, max_steps), checkpoint_every=cfg.checkpoint_every,
             keep_every=cfg.checkpoint_keep_every,
             log_every=cfg.log_every, max_seconds=max_seconds, evaluate=evaluate_ema if evaluate else None,
             eval_every=cfg.eval_every, postfix={"loss": "loss"}, nonfinite_hint="lower the learning rate")
    return job.ema.copy_to(WanModel(mcfg)).eval()


def export_teacher(run_dir: str, out_path: str, weights: str = "ema") -> str:
    """Write the `weights` ('ema' or 'raw') of the newest checkpoint in `run_dir` (or the copy of its step a cut
    save left) to `out_path` (safetensors, Wan layout). Early in training the EMA (decay 0.999) still carries much
    of the initialisation, so the raw weights can be the better teacher."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights={weights!r}; expected 'ema' or 'raw'")
    from ..weights.files import check_output, save_model
    check_output(out_path, "--out")
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):   # before CheckpointManager makes the folder
        raise FileNotFoundError(f"run_dir (--run) {run_dir!r} is no run folder (no checkpoints/ in it); pass the "
                                f"folder a 'teacher' run wrote (its --out)")
    latest = CheckpointManager(os.path.join(run_dir, "checkpoints")).latest()
    if latest is None:
        raise FileNotFoundError(f"no complete checkpoint in {run_dir}/checkpoints; train first")
    config = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"run_dir (--run) {run_dir!r} has checkpoints but no config.json (the settings the "
                                f"teacher was trained with); restore it from a backup of the run folder")
    with open(config) as f:
        text = f.read()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:  # runs started before config.json was JSON hold a Python dict literal
        try:
            raw = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise ValueError(f"{config}: unreadable ({type(e).__name__}); restore it from a backup of the run "
                             f"folder") from None
    if isinstance(raw, dict) and ("job" in raw or "gen_steps" in raw):   # a student job records its job (older: steps)
        raise ValueError(f"run_dir (--run) {run_dir!r} is a student's run (distill or ode-init), not a teacher's; "
                         f"its student is exported by the run itself (export/student.safetensors), or with "
                         f"`export --student {run_dir}` in another layout")
    last = raw.get("total_steps", TeacherConfig.total_steps) if isinstance(raw, dict) else 0
    if isinstance(raw, dict) and (not raw.get("init_from") or raw.get("init_step", 0) >= last):
        # a warm-start step the run ignored (no init_from) or refused today: not part of the weights, and exported
        # folders made before the refusal still export
        raw = {**raw, "init_step": 0}
    cfg = strict_from_dict(TeacherConfig, raw)
    name = "ema" if weights == "ema" else "model"
    # the newest step, read only: a step_N that does not read falls back to the step_N.old a cut save left beside it,
    # never to an older step and never moving anything (load_newest)
    _, tensors, state = CheckpointManager(os.path.join(run_dir, "checkpoints")).load_newest([name])
    model = WanModel(get_config(cfg.model_preset))
    model.load_state_dict(tensors[name])
    save_model(model, out_path, layout="wan", extra_metadata={
        "teacher_mode": cfg.mode, "train_steps": state["step"], "teacher_weights": weights,
        "teacher_config": json.dumps(asdict(cfg), sort_keys=True)})
    return f"wrote {out_path} ({weights} weights at step {state['step']}, {cfg.mode})"
