"""The toy world: procedural sprite videos, a toy text encoder and known corruptions.

Small and exact on purpose: every clip is described by its `ClipParams`, so generated videos can
be scored against the truth (see `salt_core.metrics`). Imports only torch and numpy.
"""
from .world import (DIRECTION_VECTORS, TOY_WORLD_PRESETS, ClipParams, ToyWorldConfig, caption, coverage, get_world,
                    parse_caption, render, render_centres, sample_batch, sample_params, trajectory, with_frames)
from .text import ToyTextEncoder

__all__ = ["DIRECTION_VECTORS", "TOY_WORLD_PRESETS", "ClipParams", "ToyWorldConfig", "ToyTextEncoder", "caption",
           "coverage", "get_world", "parse_caption", "render", "render_centres", "sample_batch",
           "sample_params", "trajectory", "with_frames"]
