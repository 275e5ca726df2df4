"""The config of a stored run folder: config.json names the job that wrote it (training.runs.stored_settings), and
this reads it back as that job's config. Folders written before the job was recorded are distillations."""
import json
import os

from .distill_config import DistillConfig
from .ode_init_config import OdeInitConfig
from .student_config import SHARED_FIELDS

JOB_CONFIGS = {cls.JOB: cls for cls in (DistillConfig, OdeInitConfig)}


def stored_config(d: dict):
    """The DistillConfig or OdeInitConfig a stored config.json dict describes (its "job"; "dmd" when absent)."""
    job = d.get("job", DistillConfig.JOB)
    if job not in JOB_CONFIGS:
        raise ValueError(f"config.json: job={job!r}; expected one of {sorted(JOB_CONFIGS)}")
    return JOB_CONFIGS[job].from_dict(d)


def read_run_config(folder: str):
    """`stored_config` of `<folder>/config.json`; a FileNotFoundError naming the folder when it has none."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} holds no config.json: expected the folder of a distillation or "
                                f"ODE-initialisation run")
    with open(path) as f:
        return stored_config(json.load(f))


def as_distill_config(cfg):
    """The DistillConfig that samples and measures a student trained by `cfg` (training.distill_eval takes one):
    `cfg` itself, or for an ODE initialisation its shared fields with the distillation's defaults for the rest
    (a global KV cache, no sink, a clean context pass, no Salt terms)."""
    if isinstance(cfg, DistillConfig):
        return cfg
    shared = {f: getattr(cfg, f) for f in SHARED_FIELDS}
    return DistillConfig(**shared)
