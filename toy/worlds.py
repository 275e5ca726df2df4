"""Worlds as objects: `get_world(name)` is the one way from a world's name to the world, for every world a run can
name: a sprite-world preset ("default", "fast", "sanity") or the method lab's "lab:<preset>". Each world answers
what the jobs and the front doors ask of it (prompts, the teacher job's data, evaluations, its exact teacher, a check
of a run's settings), so nothing else parses a world's name.
"""
import torch

from ..salt_core.validate import quote
from .evaluate import evaluate_lab_student, evaluate_student
from .world import TOY_WORLD_PRESETS, sample_batch, sprite_world

LAB_PREFIX = "lab:"   # a world name "lab:<preset>" is the method lab's world


class SpriteWorld:
    """A sprite-world preset: sprites on backgrounds with oracle metrics (toy.world, toy.metrics)."""

    kind = "sprite"

    def __init__(self, preset: str):
        self.name, self.cfg = preset, sprite_world(preset)
        self.height, self.width = self.cfg.height, self.cfg.width

    def text_encoder(self, text_dim: int, text_len: int):
        from .text import ToyTextEncoder
        return ToyTextEncoder(text_dim=text_dim, max_tokens=text_len, world=self.cfg)

    def prompts(self, text_dim: int, text_len: int):
        """The distillation jobs' prompt source: random sprite captions (ToyPrompts)."""
        from .prompts import ToyPrompts
        return ToyPrompts(self.cfg, text_dim, text_len)

    def draw(self, rng, n: int) -> tuple:
        """The teacher job's data: (videos (n, 3, F, H, W), captions) drawn with the numpy Generator `rng`."""
        videos, captions, _ = sample_batch(self.cfg, rng, n)
        return videos, captions

    def eval_captions(self, n: int) -> list:
        from .prompts import eval_prompts
        return eval_prompts(self.cfg, n)

    def evaluator(self, num_ref: int = 256):
        """evaluate(videos, captions) -> the oracle metric means (incl. Fréchet vs real clips and the toy score)."""
        from .metrics.frechet import reference_features
        from .metrics.score import score_table
        ref = reference_features(self.cfg, num_ref)
        return lambda videos, captions: score_table(videos, captions, self.cfg, ref)

    def evaluate_student(self, model, cfg, callback=None, preview_path: str = None) -> dict:
        """The distillation job's evaluation: oracle metric means at each eval NFE (toy.evaluate.evaluate_student)."""
        return evaluate_student(model, cfg, self.cfg, callback, preview_path)

    def exact_teacher(self):
        raise ValueError(f"teacher='exact' needs a method-lab world (world='lab:<preset>'); world={self.name!r} has "
                         f"no exact teacher: pass 'toy' or a checkpoint path")

    def check_teacher(self, teacher: str) -> None:
        """Whether a DistillConfig.teacher fits this world (every source does)."""


class MethodLabWorld:
    """The method lab's world "lab:<preset>": per-caption Gaussian mixtures with an exact teacher and exact metrics
    (toy.lab)."""

    kind = "lab"

    def __init__(self, preset: str):
        from .lab.world import LabWorld
        self.name, self.lab = LAB_PREFIX + preset, LabWorld(preset)
        self.cfg = self.lab.cfg
        self.height, self.width = self.cfg.height, self.cfg.width

    def text_encoder(self, text_dim: int, text_len: int):
        from .lab.world import LabTextEncoder
        return LabTextEncoder(self.lab, text_dim, text_len)

    def prompts(self, text_dim: int, text_len: int):
        """The distillation jobs' prompt source: random caption ids (LabPrompts)."""
        from .prompts import LabPrompts
        return LabPrompts(self.lab, text_dim, text_len)

    def draw(self, rng, n: int) -> tuple:
        """The teacher job's data: (videos (n, C, F, H, W) float32, caption ids) from the mixture."""
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        captions = torch.randint(self.cfg.num_captions, (n,), generator=gen)
        return self.lab.sample(captions, generator=gen)[0].float(), captions.tolist()

    def eval_captions(self, n: int) -> list:
        return [i % self.cfg.num_captions for i in range(n)]

    def evaluator(self, num_ref: int = 256):
        """evaluate(videos, captions) -> the lab's exact metric means (toy.lab.metrics)."""
        from .lab.metrics import evaluate_clips
        return lambda videos, captions: evaluate_clips(self.lab, videos, torch.as_tensor(captions))

    def evaluate_student(self, model, cfg, callback=None, preview_path: str = None) -> dict:
        """The distillation job's evaluation: the lab's exact metrics at each eval NFE (evaluate_lab_student)."""
        return evaluate_lab_student(model, cfg, self.lab, callback, preview_path)

    def exact_teacher(self):
        from .lab.teacher import ExactTeacher
        return ExactTeacher(self.lab)

    def check_teacher(self, teacher: str) -> None:
        if teacher == "toy":
            raise ValueError(f"teacher='toy' is the sprite world's teacher; world={self.name!r} is the "
                             f"method lab's: pass teacher='exact' (its closed form) or a teacher trained on that "
                             f"world")


def get_world(name: str):
    """The world named `name` (a SpriteWorld or a MethodLabWorld); ValueError naming the choices if none is."""
    from .lab.world import LAB_WORLD_PRESETS
    labs = [LAB_PREFIX + p for p in sorted(LAB_WORLD_PRESETS)]
    if isinstance(name, str) and name.startswith(LAB_PREFIX):
        if name[len(LAB_PREFIX):] not in LAB_WORLD_PRESETS:
            raise ValueError(f"world={quote(name)}: unknown lab world {name[len(LAB_PREFIX):]!r}; choose one of {labs}")
        return MethodLabWorld(name[len(LAB_PREFIX):])
    if isinstance(name, str) and name in TOY_WORLD_PRESETS:
        return SpriteWorld(name)
    raise ValueError(f"world={quote(name)}: unknown toy-world preset; choose one of {sorted(TOY_WORLD_PRESETS)}, or "
                     f"one of the method lab's {labs}")
