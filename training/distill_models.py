"""Build the networks and the prompt source of a student job (a distillation, an ODE initialisation) from its
config.

File reading happens here (and in files.py), never in salt_core. The student and critic are
trainable copies; the teacher stays frozen and is never copied. A toy-world run (`cfg.world` set, or
`teacher="toy"` or `"exact"`) borrows its teacher, prompts and evaluation from a `DistillWorld` its front door
builds (the toy wing's `toy.jobs.distill_world()`); this package imports no world. `teacher="exact"` is a world's
closed-form teacher (the method lab's): no parameters, so student and critic must come from files.
"""
import copy
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..salt_core.scorenet import KINDS
from ..salt_core.validate import quote
from .distill_config import DistillConfig
from .student_config import EXACT, StudentJobConfig
from ..weights.files import load_model, read_metadata
from .prompts import EmbeddedPrompts, cache_is_current, cache_prompt_embeddings, read_prompts_file
from .runs import PROMPT_CACHE

log = logging.getLogger("salt.distill")



@dataclass(frozen=True)
class DistillWorld:
    """What a synthetic world lends the distillation and ODE-init jobs (built by a front door: the CLI and
    SaltDistill pass the toy wing's `toy.jobs.distill_world()`). Real-scale runs need none."""
    teacher_file: str          # the file `teacher="toy"` names (its `teacher_mode` metadata picks the scoring kind)
    load_teacher: Callable     # () -> that teacher, a WanModel in eval mode
    prompts: Callable          # (cfg, text_dim, text_len) -> prompt source for cfg.world (see training.prompts)
    evaluate: Callable         # (model, cfg, callback, preview_path) -> {f"nfe{k}": metric means}
    exact_teacher: Optional[Callable] = None   # (cfg) -> the closed-form teacher of cfg.world for teacher="exact"
    #                                            (WanModel's forward signature, no parameters); None = no world has one
    check: Optional[Callable] = None   # (cfg) -> None: ValueError naming the field when cfg does not fit the world
    #                                    (unknown world, clip size, a teacher of another world), before any model loads


def needs_world(cfg: StudentJobConfig) -> bool:
    """Whether a run borrows from a world: the toy teacher or toy prompts."""
    return cfg.teacher in ("toy", EXACT) or bool(cfg.world)


def check_world(cfg: StudentJobConfig, world, where: str) -> None:
    """A ValueError naming the fix when a toy-world run got no DistillWorld, or when cfg does not fit its world."""
    if not needs_world(cfg):
        return
    if world is None:
        raise ValueError(f"{where}: teacher={cfg.teacher!r}, world={cfg.world!r} is a toy-world run but world=None; "
                         f"pass world=comfyui_salt.toy.jobs.distill_world() (the CLI and SaltDistill do)")
    if world.check is not None:
        world.check(cfg)


def check_models_fit(cfg: StudentJobConfig, teacher, student, critic=None) -> None:
    """The models and the clip size of `cfg` fit together, checked once they are built and before any step:
    a ValueError naming the field (student_init, critic_init, height, width, num_frames, align_block), not a tensor
    shape deep in a forward. `critic` None: a job without one (the ODE initialisation)."""
    ref, where = teacher.cfg, type(cfg).__name__
    for what, model in (("student_init", student), ("critic_init", critic)):
        if model is None:
            continue
        c = model.cfg
        if (c.in_dim, c.out_dim, c.text_dim, tuple(c.patch_size)) != (ref.in_dim, ref.out_dim, ref.text_dim,
                                                                    tuple(ref.patch_size)):
            raise ValueError(f"{where}.{what}={quote(getattr(cfg, what))} is a model with {c.in_dim} latent "
                             f"channels, text width {c.text_dim} and patch {tuple(c.patch_size)}; the teacher has "
                             f"{ref.in_dim}, {ref.text_dim} and {tuple(ref.patch_size)}: pass a model of the "
                             f"teacher's family")
    pt, ph, pw = ref.patch_size
    for name, size, patch in (("num_frames", cfg.num_frames, pt), ("height", cfg.height, ph), ("width", cfg.width, pw)):
        if size % patch:
            raise ValueError(f"{where}.{name}={size} is not a multiple of the models' patch size {patch}")
    if critic is None:
        return
    features = critic if cfg.aligns_to_frozen_critic else teacher
    if cfg.align_weight > 0 and cfg.align_block >= features.cfg.num_layers:
        raise ValueError(f"DistillConfig.align_block={cfg.align_block}; the network whose features are aligned has "
                         f"{features.cfg.num_layers} blocks: expected 0..{features.cfg.num_layers - 1}")


def _load(source: str, cfg: StudentJobConfig, teacher, what: str):
    """A model from 'teacher' (a trainable copy of the teacher) or a checkpoint path."""
    if source == "teacher":
        if any(p.dtype != torch.float32 for p in teacher.parameters()):   # a teacher file stored in bf16: the
            source = cfg.teacher     # trained copy reads the file's own weights in float32 (its master weights)
        else:
            return copy.deepcopy(teacher).requires_grad_(True).train()
    if not source:
        raise ValueError(f"{type(cfg).__name__}.{what} is empty: pass a checkpoint path (any supported layout) or "
                         f"'teacher'")
    model, _ = load_model(source, use_ema=cfg.use_ema_weights)
    return model.train()


def exact_teacher(cfg: DistillConfig, world: DistillWorld):
    """The world's closed-form teacher for teacher="exact"; a ValueError naming the fix where it cannot be one."""
    check_world(cfg, world, "build_models")
    if world.exact_teacher is None:
        raise ValueError(f"teacher='exact' but this DistillWorld has no exact teacher; pass a teacher checkpoint path")
    for what in ("student_init", "critic_init"):
        if getattr(cfg, what) == "teacher":
            raise ValueError(f"teacher='exact' has no weights to copy, so {what}='teacher' cannot work; pass {what}="
                             f"<a checkpoint> (the critic: the learned teacher of the same world; the student: its "
                             f"ODE initialisation)")
    return world.exact_teacher(cfg)


def build_teacher(cfg: StudentJobConfig, world: DistillWorld = None, dtype=torch.float32):
    """The frozen teacher of a run, in eval mode (`world` lends the teacher of teacher="toy" and "exact"); a teacher
    file's weights are stored in `dtype` (the RoPE table stays float32)."""
    if cfg.teacher == EXACT:
        teacher = exact_teacher(cfg, world)
    elif cfg.teacher == "toy":
        check_world(cfg, world, "build_models")
        teacher = world.load_teacher()
    elif cfg.teacher:
        teacher, _ = load_model(cfg.teacher, use_ema=cfg.use_ema_weights, dtype=dtype)
    else:
        raise ValueError(f"{type(cfg).__name__}.teacher is empty: pass 'toy' (the sprite world), 'exact' (the method "
                         f"lab's closed-form teacher) or a teacher checkpoint path")
    return teacher.requires_grad_(False).eval()


def build_student(cfg: StudentJobConfig, teacher):
    """The trainable student of an ODE initialisation (student_init: a copy of `teacher` or a file), checked
    against the teacher and the clip size."""
    student = _load(cfg.student_init, cfg, teacher, "student_init")
    check_models_fit(cfg, teacher, student)
    return student


def build_models(cfg: DistillConfig, world: DistillWorld = None, teacher_dtype=torch.float32):
    """(teacher, student, critic) WanModels for a distillation (`world` lends the teacher of teacher="toy" and
    "exact"); a teacher file's weights in `teacher_dtype`, student and critic in float32 whatever it is."""
    teacher = build_teacher(cfg, world, teacher_dtype)
    student = _load(cfg.student_init, cfg, teacher, "student_init")
    critic = _load(cfg.critic_init, cfg, teacher, "critic_init")
    check_models_fit(cfg, teacher, student, critic)
    return teacher, student, critic


def resolve_teacher_kind(cfg: StudentJobConfig, world: DistillWorld = None) -> str:
    """How teacher and critic score a clip (a ScoreNet kind): `cfg.teacher_kind`, or for "auto" the teacher file's
    `teacher_mode` metadata (our teachers record it) and otherwise "bidirectional" (Wan 2.1 teachers score the
    whole clip, as the released DMD does; so does an exact teacher). Reads the file header only."""
    if cfg.teacher_kind != "auto":
        return cfg.teacher_kind
    if cfg.teacher == EXACT:
        return "bidirectional"
    if cfg.teacher == "toy":
        check_world(cfg, world, "resolve_teacher_kind")
        path = world.teacher_file
    else:
        path = cfg.teacher
    mode = read_metadata(path).get("teacher_mode") if path.lower().endswith(".safetensors") else None
    return mode if mode in KINDS else "bidirectional"


def prompt_cache_path(out_dir: str) -> str:
    """Where a run keeps its prompt embeddings (computed once, then read by every resume)."""
    return os.path.join(out_dir, PROMPT_CACHE)


def fill_prompt_cache(cfg: StudentJobConfig, out_dir: str, encoder) -> bool:
    """Embed a real-scale run's prompt file (and negative prompt) with `encoder` (texts → rows (L_i, D)) unless the
    run folder already holds the cache; returns whether it was written. Toy runs need no cache."""
    path = prompt_cache_path(out_dir)
    if cfg.world:
        return False
    prompts = read_prompts_file(cfg.prompts_file)
    if os.path.exists(path):
        if cache_is_current(path, prompts, cfg.negative_prompt):
            return False
        log.warning("the prompts changed since %s was made (prompts file or negative_prompt); embedding them again",
                    path)
    os.makedirs(out_dir, exist_ok=True)
    cache_prompt_embeddings(prompts, cfg.negative_prompt, path, encoder)
    return True


def build_prompts(cfg: StudentJobConfig, teacher, out_dir: str, world: DistillWorld = None):
    """The prompt source: the world's captions (toy world) or cached umT5 embeddings of a prompt file."""
    if cfg.world:
        check_world(cfg, world, "build_prompts")
        return world.prompts(cfg, teacher.cfg.text_dim, teacher.cfg.text_len)
    prompts = EmbeddedPrompts(cfg.prompts_file, prompt_cache_path(out_dir), cfg.text_encoder, cfg.negative_prompt)
    width = prompts.embeds.shape[-1]
    if width != teacher.cfg.text_dim:
        raise ValueError(f"the prompt embeddings in {prompt_cache_path(out_dir)!r} are {width} wide but the teacher "
                         f"takes text_dim={teacher.cfg.text_dim}; embed the prompts with the teacher's text encoder "
                         f"(umT5-XXL for Wan 2.1: 4096) in a new run folder, or delete that file")
    return prompts
