"""The settings every job that trains a few-step student shares: where the models come from, the data and clip
size, the grid's shift and the teacher's guidance, the generator's optimiser, runtime and logs.

Two jobs build on it (docs/training.md): the distillation (training.distill_config.DistillConfig: DMD, SC-DMD,
Salt) and the ODE-pair initialisation (training.ode_init_config.OdeInitConfig). Each subclass names its job in
`JOB`; a run folder's config.json records it beside the fields (training.runs.write_config), so a folder of one job
is never resumed by the other and a stored file is read back as the config that wrote it
(training.job_configs.stored_config).

Fields are declared once with config_fields.setting (help, --help group, valid values). Knows nothing of files or
the loops.
"""
from dataclasses import dataclass, fields
from typing import ClassVar

from ..salt_core.config import TOY_SHIFT
from .config_fields import MAX_THREADS, from_dict, grouped

EXACT = "exact"   # the teacher source naming a world's closed-form teacher (scores whole clips by default)
SCORE_KINDS = ("auto", "bidirectional", "teacher_forcing")
STUDENT_KINDS = ("causal", "bidirectional")

_models, _data, _cache = grouped("model sources"), grouped("data"), grouped("cache")
_grid, _length = grouped("grid and guidance"), grouped("batch and length")
_gen_opt, _runtime = grouped("generator optimiser and EMA"), grouped("runtime")
_logs = grouped("checkpoints, evaluation, logs")


@dataclass(frozen=True)
class StudentJobConfig:
    """The shared fields (not a job by itself: DistillConfig and OdeInitConfig are)."""
    JOB: ClassVar[str] = ""
    RENAMED: ClassVar[dict] = {}
    # -- models ------------------------------------------------------------------------------
    teacher: str = _models("toy", "toy (the shipped toy teacher), exact (the lab world's closed-form teacher) or a "
                                  "checkpoint path (any layout)")
    teacher_kind: str = _models("auto", "how the teacher (and critic) score: the whole clip, chunk by chunk, or auto "
                                        "(the teacher file's mode)", choices=SCORE_KINDS)
    student_init: str = _models("teacher", "teacher (a copy of the teacher weights) or a checkpoint path")
    student_kind: str = _models("causal", "how the student generates: KV-cached chunk rollouts, or the whole clip",
                                choices=STUDENT_KINDS)
    use_ema_weights: bool = _models(True, "read generator_ema from release files")
    # -- data --------------------------------------------------------------------------------
    world: str = _data("default", "toy world preset (toy runs), or lab:<preset> (the method lab)")
    prompts_file: str = _data("", "one prompt per line (real scale)")
    text_encoder: str = _data("", "umT5 path (real scale): embeddings computed once and cached")
    negative_prompt: str = _data("wan", "wan = Wan's default negative prompt for the unconditional branch")
    num_frames: int = _data(12, "latent frames per rollout", count=1)
    height: int = _data(16, "latent height (toy: pixels)", count=1)
    width: int = _data(16, "latent width (toy: pixels)", count=1)
    chunk_frames: int = _cache(3, "frames per AR chunk: a causal student's, or a teacher's that scores chunk by chunk "
                                  "(num_frames a multiple of it there; unread otherwise)", count=1)
    # -- grid and guidance -------------------------------------------------------------------
    shift: float = _grid(TOY_SHIFT, "timestep shift of grids and score timesteps (real scale: 5)", low=0,
                         low_open=True, high=100)   # above ~1e16 the grid's levels collapse to 1
    guidance_scale: float = _grid(3.0, "standard CFG g (uncond + g·Δ) of the teacher; the released 3.0 (cond + 3·Δ) "
                                       "is 4.0 here", low=0, low_open=True)
    # -- optimisation ------------------------------------------------------------------------
    batch_size: int = _length(8, "clips per rank per micro-batch", count=1)
    gen_steps: int = _length(200, "generator updates", count=1, fix="gen_steps counts generator updates (toy "
                                                                      "presets: 200)")
    lr_gen: float = _gen_opt(2e-6, "generator AdamW learning rate (Self Forcing: 2e-6)", low=0, low_open=True)
    beta1: float = _gen_opt(0.0, "generator AdamW beta1 (released: 0)", low=0, high=1, high_open=True)
    beta2: float = _gen_opt(0.999, "generator AdamW beta2 (released: 0.999)", low=0, high=1, high_open=True)
    weight_decay: float = _gen_opt(0.01, "AdamW weight decay (every trained network)", low=0)
    grad_clip: float = _gen_opt(10.0, "max grad norm (every trained network)", low=0, low_open=True)
    ema_decay: float = _gen_opt(0.99, "EMA of the generator (exported as generator_ema)", low=0, high=1,
                                high_open=True)
    grad_checkpointing: bool = _runtime(False, "activation checkpointing (safe with the KV cache)")
    memory_limit_gib: float = _runtime(0.0, "refuse runs whose estimate exceeds this; 0 = the device's free memory",
                                       low=0)
    seed: int = _runtime(0, "every step is seeded from (seed, step, micro-batch)", count=0)
    threads: int = _runtime(2, "torch CPU threads (fixed for bit-identical resume; 0 = leave as is)", count=0,
                            maximum=MAX_THREADS)
    checkpoint_every: int = _logs(20, "generator steps between checkpoints", count=1)
    checkpoint_keep_every: int = _logs(0, "also keep every checkpoint at a multiple of this many generator steps "
                                          "(milestones, never pruned; 0 = only the newest two)", count=0)
    log_every: int = _logs(1, "generator steps between metrics.jsonl lines", count=1)

    @classmethod
    def upgrade_stored(cls, d: dict) -> dict:
        """A stored config.json dict in this release's keys (older run folders keep resuming); `job` kept."""
        return dict(d)

    @classmethod
    def from_dict(cls, d: dict):
        """The config from a stored config.json (flat): older keys upgraded, unknown keys and RENAMED keys refused
        by name, a file of another job refused with the job that wrote it."""
        d = cls.upgrade_stored(d)
        job = d.pop("job", cls.JOB)
        if job != cls.JOB:
            raise ValueError(f"{cls.__name__}: the stored config is a job={job!r} run, not {cls.JOB!r}; read it with "
                             f"training.job_configs.stored_config, or use another run folder")
        return from_dict(cls, d, where=cls.__name__, renamed=cls.RENAMED)


SHARED_FIELDS = tuple(f.name for f in fields(StudentJobConfig))   # what every student job's config holds
