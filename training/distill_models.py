"""Build the three networks and the prompt source of a distillation run from its config.

File reading happens here (and in files.py), never in salt_core. The student and critic are
trainable copies; the teacher stays frozen and is never copied.
"""
import copy
import os

from ..salt_core.scorenet import KINDS
from .distill_config import DistillConfig
from .files import load_model, read_metadata
from .prompts import EmbeddedPrompts, ToyPrompts, cache_prompt_embeddings, read_prompts_file

PROMPT_CACHE = "prompt_embeds.safetensors"   # in the run folder: {"embeds": (prompts + 1, 512, D)}


def _load(source: str, cfg: DistillConfig, teacher, what: str):
    """A model from 'teacher' (a trainable copy of the teacher) or a checkpoint path."""
    if source == "teacher":
        return copy.deepcopy(teacher).requires_grad_(True).train()
    if not source:
        raise ValueError(f"DistillConfig.{what} is empty: pass a checkpoint path (any supported layout) or 'teacher'")
    model, _ = load_model(source, use_ema=cfg.use_ema_weights)
    return model.train()


def build_models(cfg: DistillConfig):
    """(teacher, student, critic) WanModels for a run."""
    if cfg.teacher == "toy":
        from .toy_assets import load_toy_teacher
        teacher, _, _ = load_toy_teacher()
    elif cfg.teacher:
        teacher, _ = load_model(cfg.teacher, use_ema=cfg.use_ema_weights)
    else:
        raise ValueError("DistillConfig.teacher is empty: pass 'toy' or a teacher checkpoint path")
    teacher.requires_grad_(False).eval()
    student = _load(cfg.student_init, cfg, teacher, "student_init")
    critic = _load(cfg.critic_init, cfg, teacher, "critic_init")
    return teacher, student, critic


def resolve_teacher_kind(cfg: DistillConfig) -> str:
    """How teacher and critic score a clip (a ScoreNet kind): `cfg.teacher_kind`, or for "auto" the teacher file's
    `teacher_mode` metadata (our teachers record it) and otherwise "bidirectional" (Wan 2.1 teachers score the
    whole clip, as the released DMD does). Reads the file header only."""
    if cfg.teacher_kind != "auto":
        return cfg.teacher_kind
    if cfg.teacher == "toy":
        from .toy_assets import TOY_TEACHER
        path = TOY_TEACHER
    else:
        path = cfg.teacher
    mode = read_metadata(path).get("teacher_mode") if path.endswith(".safetensors") else None
    return mode if mode in KINDS else "bidirectional"


def prompt_cache_path(out_dir: str) -> str:
    """Where a run keeps its prompt embeddings (computed once, then read by every resume)."""
    return os.path.join(out_dir, PROMPT_CACHE)


def fill_prompt_cache(cfg: DistillConfig, out_dir: str, encoder) -> bool:
    """Embed a real-scale run's prompt file (and negative prompt) with `encoder` (texts → rows (L_i, D)) unless the
    run folder already holds the cache; returns whether it was written. Toy runs need no cache."""
    path = prompt_cache_path(out_dir)
    if cfg.world or os.path.exists(path):
        return False
    os.makedirs(out_dir, exist_ok=True)
    cache_prompt_embeddings(read_prompts_file(cfg.prompts_file), cfg.negative_prompt, path, encoder)
    return True


def build_prompts(cfg: DistillConfig, teacher, out_dir: str):
    """The prompt source: toy captions (toy world) or cached umT5 embeddings of a prompt file."""
    if cfg.world:
        return ToyPrompts(cfg.world, teacher.cfg.text_dim, teacher.cfg.text_len)
    prompts = EmbeddedPrompts(cfg.prompts_file, prompt_cache_path(out_dir), cfg.text_encoder, cfg.negative_prompt)
    width = prompts.embeds.shape[-1]
    if width != teacher.cfg.text_dim:
        raise ValueError(f"the prompt embeddings in {prompt_cache_path(out_dir)!r} are {width} wide but the teacher "
                         f"takes text_dim={teacher.cfg.text_dim}; embed the prompts with the teacher's text encoder "
                         f"(umT5-XXL for Wan 2.1: 4096) in a new run folder, or delete that file")
    return prompts
