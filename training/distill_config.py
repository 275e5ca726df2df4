"""Distillation configuration: one typed dataclass, named presets, unknown keys rejected.

Every field is declared with `config_fields.setting` (through one helper per group): its help text, its
--help section and its valid values live in the field's metadata, so `--help`, the settings table of docs/training.md,
the SaltDistill overrides and the validation read one declaration. The config stays flat (`cfg.lr_gen`,
`--lr-gen`, a flat `config.json` in every run folder); groups give it structure — see config_fields for why.

Toy presets run on a CPU in the toy world (teacher = the shipped toy teacher; its scoring kind follows the
teacher file). Real-scale presets mirror the released Salt recipes (XingtongGe/Salt
`configs/mixed_sc_dmd_trd/*.yaml`, Self Forcing / Causal Forcing / LongLive windows; docs/method.md §1, §3);
their paths are supplied by the user. One preset per distinct recipe: a name folded into another is refused
with the name to use (RENAMED_PRESETS).

Units: `gen_steps` counts generator updates; `ema_start_iter` and `align_start_iter` count **trainer
iterations**, as the released trainer's `ema_start_step` / `mmd_start_step` do: one iteration per critic
update, with a generator update on every `critic_ratio`-th iteration (iterations = gen_steps × critic_ratio).
"""
from dataclasses import dataclass, replace
from typing import ClassVar

from ..salt_core.config import TOY_SHIFT
from ..salt_core.schedules import MAX_NFE
from ..salt_core.validate import quote
from .config_fields import grouped, with_overrides
from .distributed import SHARDINGS
from .student_config import EXACT, SCORE_KINDS, STUDENT_KINDS, StudentJobConfig  # noqa: F401 (re-exported)
from .validate import validate_distill_config

# Keys renamed when the counters moved to the released unit (trainer iterations): the error says how to convert.
RENAMED = {"ema_start": "ema_start_iter (trainer iterations = generator updates × critic_ratio)",
           "align_start_step": "align_start_iter (trainer iterations = generator updates × critic_ratio)",
           # job=ode_init became its own command and config (training.ode_init_config)
           "job": "ode-init (the ODE initialisation is its own command: `python -m comfyui_salt ode-init --preset "
                  "wan-ode-init` for real scale, toy-ode-init / lab-ode-init for the toy worlds)"}
# Keys of config.json files written before ODE initialisation became its own job (training.ode_init_config):
# every distillation folder stored them with job="dmd"; they are dropped when such a file is read.
ODE_KEYS_BEFORE_SPLIT = ("ode_pairs", "ode_teacher_steps", "ode_warmup_steps", "ode_min_lr_ratio")
COUPLINGS = ("noise_aligned", "independent")

# Bounds a run cannot need and a client must not send: between two Cancel checks (one generator update) a job runs
# grad_accum micro-batches of critic_ratio iterations; an evaluation samples eval_clips clips at once.
MAX_GRAD_ACCUM = 1024          # Self Forcing's 64 clips per update on one GPU is grad_accum 64
MAX_CRITIC_RATIO = 100         # released: 5
MAX_EVAL_CLIPS = 1024
_models, _cache, _length = grouped("model sources"), grouped("cache"), grouped("batch and length")
_steps, _salt = grouped("step counts K"), grouped("losses: DMD guidance and the Salt terms")
_gen_opt, _critic_opt = grouped("generator optimiser and EMA"), grouped("critic optimiser")
_runtime, _logs = grouped("runtime"), grouped("checkpoints, evaluation, logs")


# Settings added after runs were stored, with the value that trains as those runs did: a stored config.json
# without one resumes (changed_settings) as if it held it.
ADDED_LATER = {"sc_exit_sigma_max": 1.0}


@dataclass(frozen=True)
class DistillConfig(StudentJobConfig):
    """DMD / SC-DMD / Salt: the shared student-job fields (training.student_config) and the distillation's own."""
    JOB: ClassVar[str] = "dmd"
    RENAMED: ClassVar[dict] = RENAMED
    critic_init: str = _models("teacher", "teacher or a checkpoint path")
    local_attn_frames: int = _cache(-1, "cache window W incl. sink (-1 = global)")
    sink_frames: int = _cache(0, "cache sink S", count=0)
    context_noise: float = _cache(0.0, "σ of the clean-context cache pass", low=0, high=1, high_open=True)
    # -- steps -------------------------------------------------------------------------------
    step_choices: tuple = _steps((4,), "K options per iteration (Salt: 8,4,2)", count=1, maximum=MAX_NFE)
    step_probs: tuple = _steps((1.0,), "their probabilities (Salt: 0.4,0.4,0.2)", low=0)
    eval_nfe: tuple = _steps((4, 2), "inference NFEs evaluated", count=1, maximum=MAX_NFE)
    # -- losses ------------------------------------------------------------------------------
    sc_weight: float = _salt(0.0, "λ_SC (Salt: 0.2); 0 disables SC-DMD", low=0)
    sc_steps: int = _salt(8, "SC applies to rollouts with this K (Salt: 8)", count=1)
    sc_symmetric: bool = _salt(False, "paper's reading: grad through both branches")
    sc_exit_sigma_max: float = _salt(1.0, "SC only at exits with σ_s ≤ this (an ablation; 1 = every exit)", low=0,
                                     high=1, low_open=True)
    align_weight: float = _salt(0.0, "alignment weight (Salt: 0.1); 0 disables", low=0)
    align_delta: float = _salt(0.1, "hinge margin δ", low=0)
    align_start_iter: int = _salt(0, "trainer iteration where alignment starts (released: 700/1000/1200)", count=0)
    align_block: int = _salt(2, "teacher block whose tokens are aligned (14B: 20)", count=0)
    align_coupling: str = _salt("noise_aligned", "reference noise coupling", choices=COUPLINGS)
    align_k4: bool = _salt(False, "also align K = 4 rollouts (exits 1-3, half of them) to an 8-step reference "
                                  "(paper variant)")
    # -- optimisation ------------------------------------------------------------------------
    grad_accum: int = _length(1, "micro-batches per optimizer step", count=1, maximum=MAX_GRAD_ACCUM)
    critic_ratio: int = _length(5, "critic updates per generator update (trainer iterations = gen_steps × "
                                   "critic_ratio)", count=1, maximum=MAX_CRITIC_RATIO)
    lr_critic: float = _critic_opt(4e-7, "critic AdamW learning rate (Self Forcing: 4e-7)", low=0, low_open=True)
    beta1_critic: float = _critic_opt(0.0, "critic AdamW beta1 (released: 0)", low=0, high=1, high_open=True)
    beta2_critic: float = _critic_opt(0.999, "critic AdamW beta2 (released: 0.999)", low=0, high=1, high_open=True)
    ema_start_iter: int = _gen_opt(200, "trainer iteration at which the EMA is created (release ema_start_step: "
                                        "200)", count=0)
    autocast_bf16: bool = _runtime(False, "bf16 autocast where supported (GPU)")
    sharding: str = _runtime("full", "FSDP2 under torchrun: full (over every rank), hybrid (within a node, "
                                     "replicated across nodes), replicate (every rank holds everything)",
                             choices=SHARDINGS)
    teacher_offload: bool = _runtime(False, "sharded runs: the frozen teacher's shards wait on the CPU between uses")
    eval_every: int = _logs(50, "generator steps between toy evaluations; 0 disables", count=0)
    eval_clips: int = _logs(32, "prompts per evaluation", count=1, maximum=MAX_EVAL_CLIPS)
    grad_probes: bool = _logs(True, "log how strongly SC and the alignment pull against DMD (gradient ratios, the "
                                    "SC/DMD cosine: training/diagnostics.py); off computes nothing extra")

    def __post_init__(self):
        validate_distill_config(self)
        object.__setattr__(self, "step_choices", tuple(int(k) for k in self.step_choices))
        object.__setattr__(self, "step_probs", tuple(float(p) for p in self.step_probs))
        object.__setattr__(self, "eval_nfe", tuple(int(k) for k in self.eval_nfe))

    @property
    def aligns_to_frozen_critic(self) -> bool:
        """The exact teacher has no features: the alignment then reads those of a frozen copy of the critic's
        initial weights (training.distill builds it; training.validate counts its memory)."""
        return self.teacher == EXACT and bool(self.align_weight)

    @classmethod
    def upgrade_stored(cls, d: dict) -> dict:
        """A stored config.json in this release's keys: a distillation folder written before the ODE-init split
        holds job="dmd" (or, older, no job) and the ODE keys (dropped here); an ODE-init folder keeps its job,
        refused by from_dict."""
        d = dict(d)
        d.setdefault("job", cls.JOB)           # older still: no job recorded, always a distillation
        if d["job"] == cls.JOB:
            for key in ODE_KEYS_BEFORE_SPLIT:
                d.pop(key, None)
            for key, value in ADDED_LATER.items():   # trained before the setting existed: as its default does
                d.setdefault(key, value)
        return d


# Toy: EMA from iteration 100 (after generator update 21) at decay 0.95; the critic 5× faster than the generator,
# chosen by the sweep in docs/toy_world.md "The Salt arm re-run with the released recipe" (4e-6 / 2e-5 / 1e-4:
# 1e-4 best).
_TOY = DistillConfig(lr_gen=2e-5, lr_critic=1e-4, ema_start_iter=100, ema_decay=0.95, gen_steps=200)
_REAL = DistillConfig(teacher="", teacher_kind="bidirectional", student_init="", critic_init="", world="",
                      num_frames=21, height=60, width=104, shift=5.0, guidance_scale=4.0, batch_size=1,
                      gen_steps=120, checkpoint_every=20, eval_every=0, align_block=20, autocast_bf16=True,
                      grad_checkpointing=True, threads=0)
_MIXED = dict(step_choices=(8, 4, 2), step_probs=(0.4, 0.4, 0.2), sc_weight=0.2, align_weight=0.1)
# Released alignment starts (mmd_start_step, trainer iterations) per backbone. The release sets no total length
# (its loop runs until stopped), so our Salt presets train for twice that: alignment acts on the second half.
# Clips a released generator update averages: its trainer reads batch_size (1) per GPU, with no accumulation, and its
# launch script (scripts/train.sh) starts one node of 8 GPUs. Its configs' total_batch_size (64, Self Forcing's 64-GPU
# recipe) is a key the trainer never reads.
RELEASED_CLIPS_PER_UPDATE = 8
CONFIGS_TOTAL_BATCH = 64
RELEASED_ALIGN_START = {"salt-causal-forcing": 700, "salt-self-forcing": 1000, "salt-longlive": 1200}


def _salt_real(name: str, **fields) -> DistillConfig:
    """A real-scale Salt preset: the released mixed-step SC-DMD + alignment, 2 × the alignment start long."""
    start = RELEASED_ALIGN_START[name]
    return replace(_REAL, **_MIXED, align_start_iter=start, gen_steps=2 * start // _REAL.critic_ratio, **fields)


DISTILL_PRESETS = {
    # toy world, autoregressive arm (the _TOY base is plain DMD with K = 4)
    "toy-dmd": _TOY,
    "toy-sc-dmd": replace(_TOY, step_choices=(8,), step_probs=(1.0,), sc_weight=0.2),
    "toy-salt": replace(_TOY, **_MIXED, align_start_iter=250),
    # toy-salt with L_SC's gradient through both branches (the paper's equation read literally) instead of the
    # released stop-gradient on the composed target: this pack's option, not the paper's code (docs/method_lab.md)
    "toy-salt-sym": replace(_TOY, **_MIXED, align_start_iter=250, sc_symmetric=True),
    # toy world, bidirectional arm
    "toy-bidir-dmd": replace(_TOY, student_kind="bidirectional"),
    "toy-bidir-sc-dmd": replace(_TOY, student_kind="bidirectional", step_choices=(8,), step_probs=(1.0,),
                                sc_weight=0.2),
    # the method lab (docs/method_lab.md): the toy recipes above on the lab's world (filled in below)
    # real scale (Wan 2.1 1.3B student, 14B teacher); paths from the user. The DMD baseline (the _REAL base, K = 4):
    # Self Forcing's 600 iterations (120 generator updates); Causal Forcing's DMD stage is the same recipe from its
    # own ODE-initialised student (student_init).
    "self-forcing-dmd": _REAL,
    "salt-causal-forcing": _salt_real("salt-causal-forcing"),
    "salt-self-forcing": _salt_real("salt-self-forcing", align_coupling="independent"),
    "salt-longlive": _salt_real("salt-longlive", local_attn_frames=12, sink_frames=3),
    "salt-wan-bidirectional": replace(_REAL, student_kind="bidirectional", step_choices=(8,), step_probs=(1.0,),
                                      sc_weight=0.2),
}
# The method lab: each toy recipe on the lab world, with guidance 1 (the lab's truth is the conditional law; CFG
# would sharpen samples away from the data) and the lab's shift (toy.lab.LAB_SHIFT = the toy shift; training cannot
# import the toy wing, tests/test_lab_experiment.py checks they agree). No default teacher: pass the learned lab
# teacher's file, or teacher=exact (then student_init and critic_init must be files).
LAB_FIELDS = dict(world="lab:default", guidance_scale=1.0, shift=TOY_SHIFT, teacher="")
DISTILL_PRESETS.update({"lab-" + name[len("toy-"):]: replace(DISTILL_PRESETS[name], **LAB_FIELDS)
                        for name in ("toy-dmd", "toy-sc-dmd", "toy-salt", "toy-salt-sym",
                                     "toy-bidir-dmd", "toy-bidir-sc-dmd")})
# Names folded into another preset with the same settings: refused with the name to use.
RENAMED_PRESETS = {
    "toy-sc-single-k": "toy-sc-dmd (the same recipe: SC-DMD on the 8-step grid, single K)",
    "causal-forcing-dmd": "self-forcing-dmd (the same recipe; pass Causal Forcing's ODE-initialised student as "
                          "student_init)",
}
# Presets of the ODE initialisation, its own job since (training.ode_init_config): refused with the command to use.
MOVED_PRESETS = {name: f"`python -m comfyui_salt ode-init --preset {name}` (the ODE initialisation is its own job: "
                       f"training.ode_init_config)" for name in ("toy-ode-init", "lab-ode-init", "wan-ode-init")}


def get_preset(name: str, **overrides) -> DistillConfig:
    """A preset with field overrides (an unknown preset, renamed or moved preset or unknown field → an error naming
    the choices, the new name or the command)."""
    if name in RENAMED_PRESETS:
        raise KeyError(f"distillation preset {name!r} was folded into {RENAMED_PRESETS[name]}")
    if name in MOVED_PRESETS:
        raise KeyError(f"{name!r} is not a distillation preset; run {MOVED_PRESETS[name]}")
    if name not in DISTILL_PRESETS:
        raise KeyError(f"unknown distillation preset {quote(name)}; choose one of {sorted(DISTILL_PRESETS)}")
    return with_overrides(DISTILL_PRESETS[name], overrides, where="DistillConfig", renamed=RENAMED)
