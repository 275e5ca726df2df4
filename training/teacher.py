"""Toy teacher pre-training by flow matching (salt_core's WanModel on the toy world).

Two modes:
- `teacher_forcing` (default; Causal Forcing's AR-diffusion teacher): the clip is fed twice,
  [clean | noisy]; noisy chunk c attends to clean chunks < c and to itself, clean chunks are
  block-causal among themselves, both copies share RoPE positions; every chunk has its own noise
  level. Sampling is chunk by chunk on a KV cache (salt_core.streaming).
- `bidirectional`: one noise level per clip, full attention (Wan 2.1 T2V).
Loss: mean((v - (ε - x0))²) with classifier-free-guidance dropout of the caption.
The loop (seeding, checkpoints, resume, logs) is training/loop.py; the run folder training/runs.py.
"""
from dataclasses import dataclass, asdict
import ast
import json
import os

import torch

from ..salt_core.config import get_config
from ..salt_core.kv_cache import CachePolicy
from ..salt_core.model import WanModel
from ..salt_core.schedules import add_noise, get_sigmas_uniform, shift_sigma
from ..salt_core.streaming import stream_video
from ..salt_core.denoiser import FlowDenoiser
from ..salt_core.samplers import sample_euler
from ..salt_core.scorenet import teacher_forcing_forward
from ..salt_core.toy.text import ToyTextEncoder
from ..salt_core.toy.world import TOY_SHIFT, caption, get_world, sample_batch, sample_params
from .common import CheckpointManager, config_from_dict, log, step_generators
from .loop import RegressionJob, TrainingLoop, stop_step
from .runs import open_run
from .validate import validate_teacher_config

MODES = ("teacher_forcing", "bidirectional")


@dataclass
class TeacherConfig:
    model_preset: str = "toy"          # salt_core.config preset of the teacher
    world: str = "default"             # salt_core.toy.world preset, or "lab:<preset>" (the method lab's world)
    mode: str = "teacher_forcing"      # one of MODES
    chunk_frames: int = 3              # frames per AR chunk (teacher_forcing)
    batch_size: int = 32               # clips per step
    total_steps: int = 20000           # optimizer steps (the cosine schedule's length)
    lr: float = 1e-3                   # AdamW peak learning rate
    warmup_steps: int = 200            # linear warm-up
    min_lr_ratio: float = 0.1          # cosine floor as a fraction of lr
    beta1: float = 0.9                 # AdamW betas
    beta2: float = 0.99
    weight_decay: float = 0.0
    grad_clip: float = 1.0             # max grad norm
    ema_decay: float = 0.999           # EMA of the weights (the shipped teacher is the EMA)
    caption_dropout: float = 0.1       # probability of the empty prompt (CFG training)
    logit_mean: float = 0.0            # σ = shift(sigmoid(N(mean, std)))
    logit_std: float = 1.0
    shift: float = TOY_SHIFT           # timestep shift applied to training σ (the toy world's shift)
    seed: int = 0
    threads: int = 2                   # torch CPU threads (fixed for bit-identical resume)
    checkpoint_every: int = 250
    eval_every: int = 500
    eval_clips: int = 32
    eval_steps: int = 40               # Euler steps for evaluation samples
    eval_cfg: float = 3.0              # standard-form CFG scale for evaluation samples
    log_every: int = 10
    init_from: str = ""                # warm start: weights (model and EMA) from this safetensors file
    init_step: int = 0                 # ... continuing the schedule and data order at this step

    def __post_init__(self):
        validate_teacher_config(self)
        if self.mode not in MODES:
            raise ValueError(f"TeacherConfig.mode={self.mode!r}; expected one of {MODES}")


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
        v = model(x_t, 1000 * sigma, context)
    else:
        chunks = F // cfg.chunk_frames
        sigma = sample_sigmas(cfg, (B, chunks), gen).repeat_interleave(cfg.chunk_frames, 1).to(videos.device)  # (B, F)
        x_t = add_noise(videos, noise, sigma.view(B, 1, F, 1, 1))
        v = teacher_forcing_forward(model, videos, x_t, 1000 * sigma, context, cfg.chunk_frames)
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


LAB_PREFIX = "lab:"


def training_world(cfg: TeacherConfig, mcfg):
    """(world_cfg, encoder, draw(step rng, n) -> (videos (B, 3, F, H, W), captions), eval_captions(n))
    for cfg.world: the sprite world by preset name, or the method lab's world as "lab:<preset>"."""
    if cfg.world.startswith(LAB_PREFIX):
        from ..salt_core.lab.world import LabTextEncoder, LabWorld
        lab = LabWorld(cfg.world[len(LAB_PREFIX):])
        encoder = LabTextEncoder(lab, mcfg.text_dim, mcfg.text_len)

        def draw(rng, n):
            gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
            captions = torch.randint(lab.cfg.num_captions, (n,), generator=gen)
            return lab.sample(captions, generator=gen)[0].float(), captions.tolist()
        return lab.cfg, encoder, draw, lambda n: [i % lab.cfg.num_captions for i in range(n)]
    world = get_world(cfg.world)
    encoder = ToyTextEncoder(text_dim=mcfg.text_dim, max_tokens=mcfg.text_len, world=world)

    def draw(rng, n):
        videos, captions, _ = sample_batch(world, rng, n)
        return videos, captions
    return world, encoder, draw, lambda n: eval_prompts(world, n)


def eval_prompts(world_cfg, n: int, seed: int = 1234) -> list:
    """A fixed, reproducible list of evaluation captions."""
    return [caption(p) for p in sample_params(world_cfg, seed, n)]


def train_teacher(cfg: TeacherConfig, out_dir: str, evaluate=None, max_steps: int = None, quiet: bool = False,
                  device=None, max_seconds: float = None, allow_changed_settings: bool = False):
    """Run (or resume) teacher training in `out_dir`; returns the EMA model (on CPU).

    evaluate(videos, captions) -> dict of scalars, called every `eval_every` steps on EMA samples.
    `max_steps` stops early (for tests / time-boxed sessions) without changing the schedule;
    `max_seconds` stops after the step that crosses that much wall time (saving a checkpoint).
    `device` (default CPU) holds the model, EMA and batches; data and noise are drawn on CPU.
    A folder holding checkpoints of a run with other settings is refused unless `allow_changed_settings`;
    one process at a time may use a folder (training.runs.open_run).
    """
    with open_run(cfg, out_dir, allow_changes=allow_changed_settings):
        return _train_teacher(cfg, out_dir, evaluate, max_steps, quiet, device, max_seconds)


def _train_teacher(cfg, out_dir, evaluate, max_steps, quiet, device, max_seconds):
    """`train_teacher` inside the run folder: the job's step and evaluation, run by training.loop."""
    device = torch.device(device or "cpu")
    torch.set_num_threads(cfg.threads)
    mcfg = get_config(cfg.model_preset)
    world, encoder, draw, eval_captions = training_world(cfg, mcfg)
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
    loop = TrainingLoop(out_dir, "teacher", quiet=quiet,
                        metadata={"salt_config": mcfg.to_json(), "salt_layout": "wan", "teacher_mode": cfg.mode})
    if not loop.resume(job, ["model", "ema"]) and cfg.init_from:
        from .files import load_model
        warm, _ = load_model(cfg.init_from)
        model.load_state_dict(warm.state_dict())
        job.restart_from(cfg.init_step)
        log.info("warm start from %s at step %d (fresh optimizer state)", cfg.init_from, job.step)

    def evaluate_ema():
        ema_model = job.ema.copy_to(WanModel(mcfg)).to(device).eval()
        caps = eval_captions(cfg.eval_clips)
        vids = sample_teacher(ema_model, cfg.mode, caps, encoder, world, cfg.eval_steps, cfg.eval_cfg, cfg.shift,
                              seed=0, chunk_frames=cfg.chunk_frames)
        return evaluate(vids, caps)
    loop.run(job, stop_step(cfg.total_steps, max_steps), checkpoint_every=cfg.checkpoint_every,
             log_every=cfg.log_every, max_seconds=max_seconds, evaluate=evaluate_ema if evaluate else None,
             eval_every=cfg.eval_every, postfix={"loss": "loss"}, nonfinite_hint="lower the learning rate")
    return job.ema.copy_to(WanModel(mcfg)).eval()


def toy_evaluator(cfg: TeacherConfig, num_ref: int = 256):
    """evaluate(videos, captions) -> oracle metric means (incl. Fréchet vs real clips and the toy score);
    on the lab's world, its exact metrics (salt_core.lab.metrics)."""
    if cfg.world.startswith(LAB_PREFIX):
        from ..salt_core.lab.metrics import evaluate_clips
        from ..salt_core.lab.world import LabWorld
        lab = LabWorld(cfg.world[len(LAB_PREFIX):])
        return lambda videos, captions: evaluate_clips(lab, videos, torch.as_tensor(captions))
    from ..salt_core.metrics.frechet import reference_features
    from ..salt_core.metrics.score import score_table
    world = get_world(cfg.world)
    ref = reference_features(world, num_ref)

    def evaluate(videos, captions):
        return score_table(videos, captions, world, ref)
    return evaluate


def export_teacher(run_dir: str, out_path: str, weights: str = "ema") -> str:
    """Write the `weights` ('ema' or 'raw') of the newest checkpoint in `run_dir` to `out_path`
    (safetensors, Wan layout). Early in training the EMA (decay 0.999) still carries much of the
    initialisation, so the raw weights can be the better teacher."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights={weights!r}; expected 'ema' or 'raw'")
    from .files import save_model
    latest = CheckpointManager(os.path.join(run_dir, "checkpoints")).latest()
    if latest is None:
        raise FileNotFoundError(f"no complete checkpoint in {run_dir}/checkpoints; train first")
    with open(os.path.join(run_dir, "config.json")) as f:
        text = f.read()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:  # runs started before config.json was JSON hold a Python dict literal
        raw = ast.literal_eval(text)
    cfg = config_from_dict(TeacherConfig, raw)
    name = "ema" if weights == "ema" else "model"
    tensors, state = CheckpointManager(os.path.join(run_dir, "checkpoints")).load(latest[1], [name])
    model = WanModel(get_config(cfg.model_preset))
    model.load_state_dict(tensors[name])
    save_model(model, out_path, layout="wan", extra_metadata={
        "teacher_mode": cfg.mode, "train_steps": state["step"], "teacher_weights": weights,
        "teacher_config": json.dumps(asdict(cfg), sort_keys=True)})
    return f"wrote {out_path} ({weights} weights at step {state['step']}, {cfg.mode})"
