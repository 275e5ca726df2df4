"""Distillation configuration: one typed dataclass, named presets, unknown keys rejected.

Toy presets run on a CPU in the toy world (teacher = the shipped toy teacher; its scoring kind follows the
teacher file). Real-scale presets mirror the released Salt recipes (XingtongGe/Salt
`configs/mixed_sc_dmd_trd/*.yaml`, Self Forcing / Causal Forcing / LongLive windows; SALT_METHOD §1, §3);
their paths are supplied by the user.

Units: `gen_steps` counts generator updates; `ema_start_iter` and `align_start_iter` count **trainer
iterations**, as the released trainer's `ema_start_step` / `mmd_start_step` do: one iteration per critic
update, with a generator update on every `critic_ratio`-th iteration (iterations = gen_steps × critic_ratio).
"""
from dataclasses import dataclass, replace

from ..salt_core.toy.world import TOY_SHIFT
from .common import config_from_dict
from .validate import validate_distill_config

JOBS = ("dmd", "ode_init")
SCORE_KINDS = ("auto", "bidirectional", "teacher_forcing")
# Keys renamed when the counters moved to the released unit (trainer iterations): the error says how to convert.
RENAMED = {"ema_start": "ema_start_iter (trainer iterations = generator updates × critic_ratio)",
           "align_start_step": "align_start_iter (trainer iterations = generator updates × critic_ratio)"}


@dataclass(frozen=True)
class DistillConfig:
    job: str = "dmd"                    # "dmd" (DMD / SC-DMD / Salt) or "ode_init" (regress teacher ODE pairs)
    # -- models ------------------------------------------------------------------------------
    teacher: str = "toy"                # "toy" (shipped toy teacher) or a checkpoint path (any layout)
    teacher_kind: str = "auto"          # scoring: bidirectional (whole clip) | teacher_forcing (chunk) | auto (file)
    student_init: str = "teacher"       # "teacher" (copy of the teacher weights) or a checkpoint path
    critic_init: str = "teacher"        # "teacher" or a checkpoint path
    student_kind: str = "causal"        # "causal" (KV-cached chunk rollouts) | "bidirectional"
    use_ema_weights: bool = True        # read generator_ema from release files
    # -- data --------------------------------------------------------------------------------
    world: str = "default"              # toy world preset (toy runs)
    prompts_file: str = ""              # one prompt per line (real scale)
    text_encoder: str = ""              # umT5 path (real scale): embeddings computed once and cached
    negative_prompt: str = "wan"        # "wan" = Wan's default negative prompt for the unconditional branch
    num_frames: int = 12                # latent frames per rollout
    height: int = 16                    # latent height / width (toy: pixels)
    width: int = 16
    chunk_frames: int = 3               # frames per AR chunk
    local_attn_frames: int = -1         # cache window W incl. sink (-1 = global)
    sink_frames: int = 0                # cache sink S
    context_noise: float = 0.0          # σ of the clean-context cache pass
    # -- steps -------------------------------------------------------------------------------
    shift: float = TOY_SHIFT            # timestep shift of grids and score timesteps (real scale: 5)
    step_choices: tuple = (4,)          # K options per iteration (Salt: (8, 4, 2))
    step_probs: tuple = (1.0,)          # their probabilities (Salt: (0.4, 0.4, 0.2))
    eval_nfe: tuple = (4, 2)            # inference NFEs evaluated
    # -- losses ------------------------------------------------------------------------------
    guidance_scale: float = 3.0         # standard CFG g (uncond + g·Δ); the released 3.0 (cond + 3·Δ) is 4.0 here
    sc_weight: float = 0.0              # λ_SC (Salt: 0.2); 0 disables SC-DMD
    sc_steps: int = 8                   # SC applies to rollouts with this K (Salt: 8)
    sc_symmetric: bool = False          # paper's reading: grad through both branches
    align_weight: float = 0.0           # alignment weight (Salt: 0.1); 0 disables
    align_delta: float = 0.1            # hinge margin δ
    align_start_iter: int = 0           # trainer iteration where alignment starts (released: 700/1000/1200)
    align_block: int = 2                # teacher block whose tokens are aligned (14B: 20)
    align_coupling: str = "noise_aligned"  # reference noise coupling: noise_aligned | independent
    align_k4: bool = False              # also align K = 4 to an 8-step reference (paper variant)
    # -- optimisation ------------------------------------------------------------------------
    batch_size: int = 8                 # clips per rank per micro-batch
    grad_accum: int = 1                 # micro-batches per optimizer step
    gen_steps: int = 200                # generator updates (iterations = gen_steps × critic_ratio)
    critic_ratio: int = 5               # critic updates per generator update
    lr_gen: float = 2e-6                # generator AdamW learning rate (Self Forcing: 2e-6)
    lr_critic: float = 4e-7             # critic AdamW learning rate (Self Forcing: 4e-7)
    beta1: float = 0.0                  # generator AdamW beta1 (released: 0)
    beta2: float = 0.999                # generator AdamW beta2 (released: 0.999)
    beta1_critic: float = 0.0           # critic AdamW beta1 (released: 0)
    beta2_critic: float = 0.999         # critic AdamW beta2 (released: 0.999)
    weight_decay: float = 0.01          # AdamW weight decay
    grad_clip: float = 10.0             # max grad norm, generator and critic
    ema_decay: float = 0.99             # EMA of the generator (exported as generator_ema)
    ema_start_iter: int = 200           # trainer iteration at which the EMA is created (release ema_start_step: 200)
    ode_pairs: int = 512                # ode_init: teacher trajectories generated once
    ode_teacher_steps: int = 40         # ode_init: Euler steps of the teacher
    autocast_bf16: bool = False         # bf16 autocast where supported (GPU)
    grad_checkpointing: bool = False    # activation checkpointing (safe with the KV cache)
    memory_limit_gib: float = 0.0       # refuse runs whose estimate exceeds this; 0 = the device's free memory
    seed: int = 0                       # every step is seeded from (seed, rank, step)
    threads: int = 2                    # torch CPU threads (fixed for bit-identical resume)
    checkpoint_every: int = 20          # generator steps between checkpoints
    eval_every: int = 50                # generator steps between toy evaluations; 0 disables
    eval_clips: int = 32                # prompts per evaluation
    log_every: int = 1                  # generator steps between metrics.jsonl lines

    def __post_init__(self):
        if self.teacher_kind not in SCORE_KINDS:
            raise ValueError(f"DistillConfig.teacher_kind={self.teacher_kind!r}; expected one of {SCORE_KINDS}")
        validate_distill_config(self)
        if self.job not in JOBS:
            raise ValueError(f"DistillConfig.job={self.job!r}; expected one of {JOBS}")
        if len(self.step_choices) != len(self.step_probs):
            raise ValueError(f"step_choices={self.step_choices} and step_probs={self.step_probs} differ in length")
        if self.student_kind not in ("causal", "bidirectional"):
            raise ValueError(f"student_kind={self.student_kind!r}; expected 'causal' or 'bidirectional'")
        if self.num_frames % self.chunk_frames:
            raise ValueError(f"num_frames={self.num_frames} is not a multiple of chunk_frames={self.chunk_frames}")
        object.__setattr__(self, "step_choices", tuple(int(k) for k in self.step_choices))
        object.__setattr__(self, "step_probs", tuple(float(p) for p in self.step_probs))
        object.__setattr__(self, "eval_nfe", tuple(int(k) for k in self.eval_nfe))

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        check_renamed(d)
        return config_from_dict(cls, d)


def check_renamed(keys) -> None:
    """Raise a ValueError naming the new key (and the unit conversion) for any key in RENAMED."""
    old = sorted(set(keys) & set(RENAMED))
    if old:
        raise ValueError("DistillConfig: " + "; ".join(f"{k} was renamed to {RENAMED[k]}" for k in old))


# Toy: EMA from iteration 100 (after generator update 21) at decay 0.95; the critic 5× faster than the generator,
# chosen by the sweep in README "The Salt arm re-run with the released recipe" (4e-6 / 2e-5 / 1e-4: 1e-4 best).
_TOY = DistillConfig(lr_gen=2e-5, lr_critic=1e-4, ema_start_iter=100, ema_decay=0.95, gen_steps=200)
_REAL = DistillConfig(teacher="", teacher_kind="bidirectional", student_init="", critic_init="", world="",
                      num_frames=21, height=60, width=104, shift=5.0, guidance_scale=4.0, batch_size=1,
                      gen_steps=120, checkpoint_every=20, eval_every=0, align_block=20, autocast_bf16=True,
                      grad_checkpointing=True, threads=0)
_MIXED = dict(step_choices=(8, 4, 2), step_probs=(0.4, 0.4, 0.2), sc_weight=0.2, align_weight=0.1)
# Released alignment starts (mmd_start_step, trainer iterations) per backbone. The release sets no total length
# (its loop runs until stopped), so our Salt presets train for twice that: alignment acts on the second half.
RELEASED_CLIPS_PER_UPDATE = 64   # released total_batch_size: 1 clip per GPU × 64 GPUs, no accumulation
RELEASED_ALIGN_START = {"salt-causal-forcing": 700, "salt-self-forcing": 1000, "salt-longlive": 1200}


def _salt_real(name: str, **fields) -> DistillConfig:
    """A real-scale Salt preset: the released mixed-step SC-DMD + alignment, 2 × the alignment start long."""
    start = RELEASED_ALIGN_START[name]
    return replace(_REAL, **_MIXED, align_start_iter=start, gen_steps=2 * start // _REAL.critic_ratio, **fields)


PRESETS = {
    # toy world, autoregressive arm
    "toy-ode-init": replace(_TOY, job="ode_init", lr_gen=3e-4, gen_steps=1000, critic_ratio=1, eval_every=250,
                            beta1=0.9, beta2=0.99, weight_decay=0.0, grad_clip=1.0, ema_decay=0.999),
    "toy-dmd": replace(_TOY, step_choices=(4,), step_probs=(1.0,)),
    "toy-sc-single-k": replace(_TOY, step_choices=(8,), step_probs=(1.0,), sc_weight=0.2),
    "toy-salt": replace(_TOY, **_MIXED, align_start_iter=250),
    # toy world, bidirectional arm
    "toy-bidir-dmd": replace(_TOY, student_kind="bidirectional", step_choices=(4,), step_probs=(1.0,)),
    "toy-bidir-sc-dmd": replace(_TOY, student_kind="bidirectional", step_choices=(8,), step_probs=(1.0,),
                                sc_weight=0.2, eval_nfe=(4, 2)),
    "toy-sc-dmd": replace(_TOY, step_choices=(8,), step_probs=(1.0,), sc_weight=0.2),
    # real scale (Wan 2.1 1.3B student, 14B teacher); paths from the user. DMD baselines: Self Forcing's
    # 600 iterations (120 generator updates).
    "self-forcing-dmd": replace(_REAL, step_choices=(4,), step_probs=(1.0,)),
    "causal-forcing-dmd": replace(_REAL, step_choices=(4,), step_probs=(1.0,)),
    "salt-causal-forcing": _salt_real("salt-causal-forcing"),
    "salt-self-forcing": _salt_real("salt-self-forcing", align_coupling="independent"),
    "salt-longlive": _salt_real("salt-longlive", local_attn_frames=12, sink_frames=3),
    "salt-wan-bidirectional": replace(_REAL, student_kind="bidirectional", step_choices=(8,), step_probs=(1.0,),
                                      sc_weight=0.2),
}


def get_preset(name: str, **overrides) -> DistillConfig:
    """A preset with field overrides (unknown preset or field → an error listing the choices)."""
    if name not in PRESETS:
        raise KeyError(f"unknown distillation preset {name!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[name]
    if overrides:
        check_renamed(overrides)
        unknown = sorted(set(overrides) - set(base.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown DistillConfig keys {unknown}; known keys: {sorted(base.__dataclass_fields__)}")
        base = replace(base, **overrides)
    return base
