"""The main job on the embedded default: the toy world end to end, on CPU, in a few minutes.

Generates clips for fixed prompts with the shipped toy teacher (40 Euler steps + CFG) and with the
same teacher at 4 and 2 steps (the gap distillation closes), scores them and real clips with the
oracle metrics, prints the table, and writes an animated preview GIF.
"""
import logging
import os
import time

import torch

from ..salt_core.metrics.frechet import reference_features
from ..salt_core.metrics.score import format_table, score_table
from ..salt_core.toy.text import ToyTextEncoder
from ..salt_core.toy.world import TOY_SHIFT, get_world, render, sample_params
from .preview import save_gif
from .teacher import eval_prompts, sample_teacher
from .toy_assets import load_toy_teacher

log = logging.getLogger("salt.demo")


def run_demo(out_dir: str = "out/demo", num_clips: int = 16, threads: int = 2, seed: int = 0) -> dict:
    """Run the toy-world demo; returns {row label: metric means} and writes out_dir/preview.gif."""
    torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    world = get_world("default")
    model, mode, source = load_toy_teacher()
    encoder = ToyTextEncoder(text_dim=model.cfg.text_dim, max_tokens=model.cfg.text_len, world=world)
    captions = eval_prompts(world, num_clips)
    ref = reference_features(world, 256)
    real = render(world, sample_params(world, 1234, num_clips))
    rows, videos = {"real data": score_table(real, captions, world, ref)}, {"real": real}
    timings = {}
    for label, steps in (("teacher 40 steps + CFG", 40), ("teacher 4 steps", 4), ("teacher 2 steps", 2)):
        t = time.time()
        v = sample_teacher(model, mode, captions, encoder, world, steps=steps, cfg_scale=3.0, shift=TOY_SHIFT, seed=seed)
        timings[label] = time.time() - t
        rows[label] = {**score_table(v, captions, world, ref), "seconds": timings[label]}
        videos[label.split()[1] + " steps"] = v
    table = format_table(rows, ["toy_score", "sharpness_error", "adherence", "direction_ok", "smoothness_px",
                                "dynamic_px", "flicker", "frechet", "seconds"])
    gif = save_gif({k: v[:8] for k, v in videos.items()}, os.path.join(out_dir, "preview.gif"))
    print(f"\nSalt toy world — teacher: {source}\n\n{table}\n\npreview: {gif}  (rows: " +
          ", ".join(videos) + f"; first 8 of {num_clips} prompts)")
    return rows
