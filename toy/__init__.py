"""The toy wing: everything that belongs to the synthetic worlds, in one home.

- `worlds`: `get_world(name)`, the one way from a world's name ("default", "fast", "sanity", "lab:<preset>") to
  the world object the jobs and front doors use;
- `world`, `text`, `corrupt`: the sprite world (procedural clips described exactly by their `ClipParams`),
  its seeded toy text encoder and known corruptions;
- `metrics/`: the oracle metrics that score generated sprite clips against that truth (sprite fits,
  sharpness, adherence, motion, flicker, Fréchet distance, the toy score);
- `lab/`: the method lab, a second world whose teacher, posterior and metrics are exact;
- `assets/` + `shipped`: the shipped toy teacher and Salt toy student and their loaders;
- `prompts`, `evaluate`, `jobs`, `preview`: what the training jobs borrow from a world (prompt sources,
  a teacher world, evaluation callbacks, preview GIFs), built here and handed to training by the front doors.

Layering: nodes → toy → training → weights → salt_core (the CLI, a front door, may use the toy wing too). salt_core and
training never import this package; it imports both. Importing `comfyui_salt.toy` loads the sprite world only.
"""
from .world import (DIRECTION_VECTORS, TOY_WORLD_PRESETS, TOY_SHIFT, ClipParams, ToyWorldConfig, caption, coverage,
                    parse_caption, render, render_centres, sample_batch, sample_params, sprite_world, trajectory,
                    with_frames)
from .text import ToyTextEncoder
from .worlds import get_world

__all__ = ["DIRECTION_VECTORS", "TOY_WORLD_PRESETS", "TOY_SHIFT", "ClipParams", "ToyWorldConfig", "ToyTextEncoder",
           "caption", "coverage", "get_world", "parse_caption", "render", "render_centres", "sample_batch",
           "sample_params", "sprite_world", "trajectory", "with_frames"]
