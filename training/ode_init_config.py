"""ODE-pair initialisation configuration (the job of training.ode_init): the shared student-job fields
(training.student_config) and the ODE job's own, with its presets.

The job regresses a teacher's deterministic trajectories at the student's K-step grid onto their end points
(Self Forcing's first stage; Causal Forcing's causal pairs): no critic, no rollouts, no evaluation. Its student
is the `student_init` of a later distillation (`python -m comfyui_salt distill --student-init
<run>/export/student.safetensors`).

Before this config existed the job was `DistillConfig(job="ode_init")`; `upgrade_stored` reads those run folders'
config.json (their K was `step_choices[0]`), so they keep resuming.
"""
from dataclasses import dataclass, fields, replace
from typing import ClassVar

from ..salt_core.schedules import MAX_NFE
from ..salt_core.validate import quote
from .config_fields import grouped, with_overrides
from .distill_config import DISTILL_PRESETS, LAB_FIELDS
from .student_config import SHARED_FIELDS, StudentJobConfig
from .validate import validate_ode_init_config

MAX_TEACHER_STEPS = 1000       # Euler steps per teacher trajectory (the paper: 40); a bound before Cancel is checked
_grid, _ode = grouped("grid and guidance"), grouped("ODE pairs and schedule")


@dataclass(frozen=True)
class OdeInitConfig(StudentJobConfig):
    """ODE-pair initialisation of a few-step student; `gen_steps` counts its updates (lr_gen, beta1, ... its
    optimiser; the EMA runs from step 0)."""
    JOB: ClassVar[str] = "ode_init"
    RENAMED: ClassVar[dict] = {"step_choices": "grid_steps (one K: the grid whose levels the pairs are taken at)"}
    grid_steps: int = _grid(4, "K: the student's grid whose levels the pairs are taken at", count=1, maximum=MAX_NFE)
    ode_pairs: int = _ode(512, "teacher trajectories generated once", count=1)
    ode_teacher_steps: int = _ode(40, "Euler steps of the teacher (a multiple of grid_steps)", count=1,
                                  maximum=MAX_TEACHER_STEPS)
    ode_warmup_steps: int = _ode(50, "linear warm-up of lr_gen over these steps", count=0)
    ode_min_lr_ratio: float = _ode(0.1, "cosine floor at gen_steps, as a fraction of lr_gen", low=0, high=1)

    def __post_init__(self):
        validate_ode_init_config(self)

    @classmethod
    def upgrade_stored(cls, d: dict) -> dict:
        """A config.json of an ODE-init run in this release's keys: a pre-split file (DistillConfig keys,
        job="ode_init") keeps the shared and ODE keys, takes its K from step_choices[0] and drops the
        distillation's own; a current file is returned as it is."""
        d = dict(d)
        if "step_choices" not in d:
            return d
        keep = {f.name for f in fields(cls)} | {"job"}
        out = {k: v for k, v in d.items() if k in keep}
        out["grid_steps"] = int(d["step_choices"][0])
        return out


# Toy: the teacher's trajectories at the 4-step grid, 1,000 updates at 3e-4 (AdamW 0.9 / 0.99, no weight decay,
# clip 1, EMA 0.999) — what the shipped toy students start from (docs/toy_world.md).
_TOY_ODE = OdeInitConfig(lr_gen=3e-4, gen_steps=1000, beta1=0.9, beta2=0.99, weight_decay=0.0, grad_clip=1.0,
                         ema_decay=0.999)
ODE_INIT_PRESETS = {
    "toy-ode-init": _TOY_ODE,
    # the method lab (docs/method_lab.md): the same recipe on the lab world, with the lab's fields (guidance 1, no
    # default teacher: pass the learned lab teacher's file; the closed-form teacher has no network trajectories here)
    "lab-ode-init": replace(_TOY_ODE, **LAB_FIELDS),
    # real scale: the shared fields of self-forcing-dmd (Wan 2.1 sizes, shift 5, guidance 4, batch 1, gradient
    # checkpointing; paths from the user) with this job's defaults — what `distill --preset self-forcing-dmd
    # --job ode_init` ran before this job had its own config. Not a released recipe: the release ships ODE-initialised
    # students rather than the config that made them.
    "wan-ode-init": OdeInitConfig(**{f: getattr(DISTILL_PRESETS["self-forcing-dmd"], f)
                                     for f in SHARED_FIELDS}),
}


def get_ode_init_preset(name: str, **overrides) -> OdeInitConfig:
    """An ODE-init preset with field overrides (an unknown preset or field → an error naming the choices)."""
    if name not in ODE_INIT_PRESETS:
        raise KeyError(f"unknown ODE-init preset {quote(name)}; choose one of {sorted(ODE_INIT_PRESETS)} (the "
                       f"distillation presets run with `python -m comfyui_salt distill`)")
    return with_overrides(ODE_INIT_PRESETS[name], overrides, where="OdeInitConfig", renamed=OdeInitConfig.RENAMED)
