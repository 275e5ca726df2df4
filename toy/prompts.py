"""Toy-world prompts: the distillation jobs' prompt source and the fixed evaluation captions.

Knows nothing of models or training loops.
"""
import numpy as np
import torch

from .text import ToyTextEncoder
from .world import caption, sample_params


class ToyPrompts:
    """Toy-world captions → (context, uncond) each (B, L, text_dim); the unconditional branch is the empty
    prompt (zeros). A prompt source for training.distill (see training.prompts)."""

    def __init__(self, world, text_dim: int, max_tokens: int):
        """world: a sprite world's ToyWorldConfig (toy.worlds.get_world(name).cfg)."""
        self.world = world
        self.encoder = ToyTextEncoder(text_dim=text_dim, max_tokens=max_tokens, world=self.world)

    def sample(self, rng: np.random.Generator, batch: int):
        """(captions list[str], context (B, L, D), uncond (B, L, D)) for `batch` random toy prompts."""
        captions = [caption(p) for p in sample_params(self.world, rng, batch)]
        return captions, self.encoder.encode(captions), self.encoder.empty(batch)


class LabPrompts:
    """The method lab's captions → (context, uncond) each (B, L, text_dim): uniformly random caption ids as
    LabTextEncoder contexts, the unconditional branch the empty prompt (zeros). A prompt source for training.distill
    on a world "lab:<preset>"; captions come back as ids (B,) long."""

    def __init__(self, world, text_dim: int, max_tokens: int):
        """world: a LabWorld (toy.worlds.get_world("lab:<preset>").lab)."""
        from .lab.world import LabTextEncoder
        self.world = world
        self.encoder = LabTextEncoder(self.world, text_dim, max_tokens)

    def sample(self, rng: np.random.Generator, batch: int):
        """(caption ids (B,) long, context (B, L, D), uncond (B, L, D)) for `batch` random captions."""
        ids = torch.as_tensor(rng.integers(0, self.world.cfg.num_captions, batch), dtype=torch.long)
        return ids, self.encoder.encode(ids), self.encoder.empty(batch)


def lab_eval_captions(world, n: int) -> torch.Tensor:
    """The lab's fixed evaluation captions: ids 0, 1, …, num_captions - 1 repeated to n (B,) long."""
    return torch.arange(n) % world.cfg.num_captions


def eval_prompts(world_cfg, n: int, seed: int = 1234) -> list:
    """A fixed, reproducible list of evaluation captions."""
    return [caption(p) for p in sample_params(world_cfg, seed, n)]
