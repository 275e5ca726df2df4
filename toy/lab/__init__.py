"""The method lab: a world whose denoisers, likelihoods and metrics are exact (issue 13).

`world` defines per-caption mixtures of low-rank Gaussians over clips, `posterior` the closed-form
posterior at per-frame noise levels, `teacher` an exact velocity model with WanModel's signature,
`metrics` exact two-sided metrics. Pure: no files, no ComfyUI; move it as a unit.
"""
from .world import (DIRECTIONS, LAB_SHIFT, PATTERNS, LAB_WORLD_PRESETS, LabTextEncoder, LabWorld, LabWorldConfig,
                    get_lab_world)
from .posterior import Posterior, clean_posterior, posterior
from .teacher import ExactTeacher, FrameCache

__all__ = ["DIRECTIONS", "LAB_SHIFT", "PATTERNS", "LAB_WORLD_PRESETS", "ExactTeacher", "FrameCache", "LabTextEncoder",
           "LabWorld", "LabWorldConfig", "Posterior", "clean_posterior", "get_lab_world", "posterior"]
