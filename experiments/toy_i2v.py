"""Image-to-video in the toy world: does the streamed video continue a given first frame?

    .venv/bin/python experiments/toy_i2v.py [--clips 64] [--threads 2]

First frames are frame 0 of real world clips (known colour, shape, background, position). The Salt toy student
streams 4 chunks of 3 frames at 4 steps (Self Forcing grid, toy shift) after that frame, which is written
to the KV cache first (`rollout_stream(first_frames=...)`, what SaltStreamingSampler does with start_image);
text-to-video from the same noise is the baseline. Oracle metrics of the generated frames against the
first frame (`first_frame_agreement`): share of frames whose colour / shape / background match it, and
the distance (px) of the first generated sprite from the given one (the world moves 1 px per frame).
With the matching caption and with the empty prompt (the caption then says nothing). Prints markdown.
"""
import argparse

import numpy as np
import torch

from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.toy.metrics.oracle import first_frame_agreement
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
from comfyui_salt.salt_core.streaming import stream_video
from comfyui_salt.toy.text import ToyTextEncoder
from comfyui_salt.toy.world import sample_batch
from comfyui_salt.toy.worlds import get_world
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.toy.shipped import TOY_STUDENT, load_toy_student

COLUMNS = ("colour_ok", "shape_ok", "background_ok", "start_px")


@torch.no_grad()
def generate(model, context, first, cfg, num_chunks: int, seed: int):
    """(B, 3, F, H, W) generated frames only (the first frame, if any, is dropped)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(context.shape[0], 3, num_chunks * cfg.chunk_frames, cfg.height, cfg.width, generator=g)
    policy = CachePolicy.full(num_chunks * cfg.chunk_frames + 1)
    video = stream_video(model, noise, context, get_sigmas_fewstep(4, cfg.shift), policy=policy,
                         chunk_frames=cfg.chunk_frames, generator=g, first_frames=first)
    return video[:, :, 0 if first is None else first.shape[2]:]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, description = load_toy_student(TOY_STUDENT)
    cfg = get_preset("toy-salt")
    world = get_world(cfg.world).cfg
    clips, captions, _ = sample_batch(world, 7, args.clips)
    first = clips[:, :, :1]                                              # (B, 3, 1, H, W)
    enc = ToyTextEncoder(text_dim=model.cfg.text_dim, max_tokens=model.cfg.text_len, world=world)
    rows = {}
    for prompt, context in (("caption", enc.encode(captions)), ("empty prompt", enc.encode([""] * len(captions)))):
        for mode, given in (("image-to-video", first), ("text-to-video", None)):
            videos = generate(model, context, given, cfg, args.chunks, seed=11)
            rows[f"{mode}, {prompt}"] = first_frame_agreement(videos, first, world)
    print(f"{description}; {args.clips} clips, {args.chunks} chunks × {cfg.chunk_frames} frames at 4 steps, "
          f"{torch.get_num_threads()} threads\n")
    print("| run | colour = first frame's | shape = first frame's | background = first frame's | "
          "first sprite's distance from the given one (px), median | mean |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['colour_ok'].mean():.3f} | {r['shape_ok'].mean():.3f} | {r['background_ok'].mean():.3f} "
              f"| {np.median(r['start_px']):.2f} | {r['start_px'].mean():.2f} |")


if __name__ == "__main__":
    main()
