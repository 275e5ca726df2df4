"""Oracle metrics for toy-world videos: per-frame sprite fits and the scores built on them.

`fit` fits the sprite model per frame, `oracle` scores sharpness, prompt adherence, motion
smoothness, dynamic degree and flicker (per clip and per frame), `frechet` measures diversity, and
`score` aggregates a 0–100 toy score and prints tables. World-free measures (the semigroup defect,
bootstrap intervals) are salt_core.metrics'.
"""
from .fit import SpriteFit, fit_bounce_path, fit_sprites
from .frechet import clip_features, feature_names, frechet_distance, reference_features
from .oracle import (drift_curves, dynamic_degree, evaluate, flicker, motion_smoothness, prompt_adherence,
                     sharpness_error)
from .score import format_table, qualities, score_table, toy_score

__all__ = ["SpriteFit", "clip_features", "drift_curves", "dynamic_degree", "evaluate", "feature_names",
           "fit_bounce_path", "fit_sprites", "flicker", "format_table", "frechet_distance", "motion_smoothness",
           "prompt_adherence", "qualities", "reference_features", "score_table", "sharpness_error", "toy_score"]
