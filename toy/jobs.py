"""What the training jobs borrow from a world, built for the front doors (the CLI and the nodes).

training imports no world: `train_teacher` takes a `TeacherWorld` (`teacher_world`) and an evaluation
callback (`toy.evaluate.toy_evaluator`); `run_distillation` takes a `DistillWorld` (`distill_world`) that lends
the shipped toy teacher, toy prompts and the oracle-metric evaluation.
"""
import torch

from ..salt_core.config import get_config
from ..salt_core.validate import quote
from ..training.distill_models import DistillWorld
from ..training.teacher import TeacherWorld
from .evaluate import LAB_PREFIX, evaluate_any_student
from .prompts import LabPrompts, ToyPrompts, eval_prompts
from .shipped import TOY_TEACHER, load_toy_teacher
from .text import ToyTextEncoder
from .world import get_world, sample_batch


def teacher_world(cfg) -> TeacherWorld:
    """The TeacherWorld of a TeacherConfig `cfg`: the sprite world by preset name (cfg.world), or the method lab's
    world as "lab:<preset>", with a text encoder sized for cfg.model_preset."""
    mcfg = get_config(cfg.model_preset)
    if cfg.world.startswith(LAB_PREFIX):
        from .lab.world import LabTextEncoder, LabWorld
        lab = LabWorld(cfg.world[len(LAB_PREFIX):])
        encoder = LabTextEncoder(lab, mcfg.text_dim, mcfg.text_len)

        def draw(rng, n):
            gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
            captions = torch.randint(lab.cfg.num_captions, (n,), generator=gen)
            return lab.sample(captions, generator=gen)[0].float(), captions.tolist()
        return TeacherWorld(lab.cfg, encoder, draw, lambda n: [i % lab.cfg.num_captions for i in range(n)])
    world = get_world(cfg.world)
    encoder = ToyTextEncoder(text_dim=mcfg.text_dim, max_tokens=mcfg.text_len, world=world)

    def draw(rng, n):
        videos, captions, _ = sample_batch(world, rng, n)
        return videos, captions
    return TeacherWorld(world, encoder, draw, lambda n: eval_prompts(world, n))


def distill_prompts(cfg, text_dim: int, text_len: int):
    """The prompt source of cfg.world: LabPrompts on "lab:<preset>", else ToyPrompts (sprite captions)."""
    if cfg.world.startswith(LAB_PREFIX):
        return LabPrompts(cfg.world[len(LAB_PREFIX):], text_dim, text_len)
    return ToyPrompts(cfg.world, text_dim, text_len)


def exact_teacher(cfg):
    """teacher="exact": the lab world's ExactTeacher (closed form, no parameters); refused on other worlds."""
    if not cfg.world.startswith(LAB_PREFIX):
        raise ValueError(f"teacher='exact' needs a method-lab world (world='lab:<preset>'); world={cfg.world!r} "
                         f"has no exact teacher: pass 'toy' or a checkpoint path")
    from .lab.teacher import ExactTeacher
    from .lab.world import LabWorld
    return ExactTeacher(LabWorld(cfg.world[len(LAB_PREFIX):]))


def check_distill_config(cfg) -> None:
    """A toy-world run's DistillConfig against its world, before any model loads: the world exists, the clip size
    is the world's, and the teacher belongs to that world (the sprite teacher cannot score the lab's world)."""
    lab = cfg.world.startswith(LAB_PREFIX)
    try:
        if lab:
            from .lab.world import get_lab_world
            world = get_lab_world(cfg.world[len(LAB_PREFIX):])
        else:
            world = get_world(cfg.world)
    except KeyError as e:
        raise ValueError(f"DistillConfig.world={quote(cfg.world)}: {e.args[0]} (or lab:<preset> for the method "
                         f"lab)") from None
    for name in ("height", "width"):
        if getattr(cfg, name) != getattr(world, name):
            raise ValueError(f"DistillConfig.{name}={getattr(cfg, name)}; the world {cfg.world!r} is "
                             f"{world.height}×{world.width} pixels: set {name}={getattr(world, name)}")
    if lab and cfg.teacher == "toy":
        raise ValueError(f"DistillConfig.teacher='toy' is the sprite world's teacher; world={cfg.world!r} is the "
                         f"method lab's: pass teacher='exact' (its closed form) or a teacher trained on that world")


def distill_world() -> DistillWorld:
    """The DistillWorld of toy-world runs: teacher="toy" is the shipped toy teacher, teacher="exact" the lab's
    ExactTeacher; prompts and evaluation follow cfg.world — sprite worlds: ToyPrompts and `evaluate_student`
    (oracle metrics, preview GIFs); "lab:<preset>": LabPrompts and the lab's exact metrics at each eval NFE."""
    return DistillWorld(teacher_file=TOY_TEACHER, load_teacher=lambda: load_toy_teacher()[0],
                        prompts=distill_prompts, evaluate=evaluate_any_student, exact_teacher=exact_teacher,
                        check=check_distill_config)
