"""What the training jobs borrow from a world, built for the front doors (the CLI and the nodes).

training imports no world: `train_teacher` takes a `TeacherWorld` (`teacher_world`) and an evaluation
callback (`toy_evaluator`); `run_distillation` takes a `DistillWorld` (`distill_world`) that lends
the shipped toy teacher, the world's prompts and its evaluation. The world itself comes from its name once,
through `toy.worlds.get_world`.
"""
from ..salt_core.config import get_config
from ..training.distill_models import DistillWorld
from ..training.teacher import TeacherWorld
from ..training.validate import whole_lengths
from .shipped import TOY_TEACHER, load_toy_teacher
from .worlds import get_world


def teacher_world(cfg) -> TeacherWorld:
    """The TeacherWorld of a TeacherConfig `cfg`: the world named cfg.world (a sprite preset or "lab:<preset>"),
    with a text encoder sized for cfg.model_preset."""
    mcfg = get_config(cfg.model_preset)
    world = get_world(cfg.world)
    return TeacherWorld(world.cfg, world.text_encoder(mcfg.text_dim, mcfg.text_len), world.draw, world.eval_captions)


def toy_evaluator(world: str, num_ref: int = 256):
    """The teacher job's evaluate(videos, captions) -> metric means of the world named `world`: a sprite world's
    oracle metrics (incl. Fréchet vs `num_ref` real clips and the toy score), the method lab's exact metrics."""
    return get_world(world).evaluator(num_ref)


def evaluate_any_student(model, cfg, callback=None, preview_path: str = None) -> dict:
    """The distillation job's evaluation callback: the world's own (oracle metrics and preview GIFs on sprite
    worlds, exact metrics on the method lab's); {} for a run without a world."""
    if not cfg.world:
        return {}
    return get_world(cfg.world).evaluate_student(model, cfg, callback, preview_path)


def distill_prompts(cfg, text_dim: int, text_len: int):
    """The prompt source of cfg.world (ToyPrompts on a sprite world, LabPrompts on the method lab's)."""
    return get_world(cfg.world).prompts(text_dim, text_len)


def exact_teacher(cfg):
    """teacher="exact": the world's closed-form teacher (the method lab's ExactTeacher); refused on other worlds."""
    return get_world(cfg.world).exact_teacher()


def check_distill_config(cfg) -> None:
    """A toy-world run's config (DistillConfig, OdeInitConfig) against its world, before any model loads: the world
    exists, the clip size is the world's (the lab's: whole chunks of its modes where evaluations measure them), and
    the teacher belongs to that world (the sprite teacher cannot score the lab's world)."""
    where = type(cfg).__name__
    try:
        world = get_world(cfg.world)
    except ValueError as e:
        raise ValueError(f"{where}.{e}") from None
    for name in ("height", "width"):
        if getattr(cfg, name) != getattr(world, name):
            raise ValueError(f"{where}.{name}={getattr(cfg, name)}; the world {cfg.world!r} is "
                             f"{world.height}×{world.width} pixels: set {name}={getattr(world, name)}")
    modes = getattr(world.cfg, "chunk_frames", None)   # the lab's metrics read a mode per chunk of its law
    if modes and getattr(cfg, "eval_every", 0) > 0 and cfg.num_frames % modes:
        raise ValueError(f"{where}.num_frames={cfg.num_frames}; the world {cfg.world!r} measures its modes in chunks "
                         f"of {modes} frames at every evaluation (eval_every={cfg.eval_every}): set num_frames="
                         f"{whole_lengths(cfg.num_frames, modes)}, or eval_every=0 to train without evaluations")
    world.check_teacher(cfg.teacher)


def distill_world() -> DistillWorld:
    """The DistillWorld of toy-world runs: teacher="toy" is the shipped toy teacher, teacher="exact" the world's
    closed form; prompts and evaluation follow cfg.world (sprite worlds: ToyPrompts and the oracle metrics with
    preview GIFs; "lab:<preset>": LabPrompts and the lab's exact metrics at each eval NFE)."""
    return DistillWorld(teacher_file=TOY_TEACHER, load_teacher=lambda: load_toy_teacher()[0],
                        prompts=distill_prompts, evaluate=evaluate_any_student, exact_teacher=exact_teacher,
                        check=check_distill_config)
