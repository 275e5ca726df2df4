"""The main job on the embedded default: the toy world end to end, on CPU, in a few minutes.

Generates clips for fixed prompts with the shipped toy teacher (40 Euler steps + CFG, then 4 and 2 steps: the
gap distillation closes) and with the shipped Salt toy student at 4 and 2 steps, scores them and real clips
with the oracle metrics, prints the table, and writes an animated preview GIF. Then runs workflow 1
(`workflows/salt_toy_streaming.json`: the Salt student, 4-step streaming) through a real ComfyUI, headless
(`comfy_runner`), copies its animated WEBP to `<out>/salt_toy_streaming.webp`, decodes it back to pixels and
scores it the same way.
"""
import json
import logging
import os
import shutil
import time

import numpy as np
import torch

from ..toy.metrics.frechet import reference_features
from ..toy.metrics.score import format_table, score_table
from ..toy.preview import save_gif
from ..toy.prompts import eval_prompts
from ..toy.shipped import TOY_STUDENT, TOY_TEACHER, load_toy_student, load_toy_teacher
from ..toy.text import ToyTextEncoder
from ..toy.world import TOY_SHIFT, render, sample_params
from ..toy.worlds import get_world
from ..training.distill_config import get_preset
from ..training.distill_eval import sample_student
from ..training.teacher import sample_teacher
from .comfy_runner import check_comfyui, comfy_server, run_workflow

log = logging.getLogger("salt.demo")

WORKFLOW_1 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows",
                          "salt_toy_streaming.json")
WORKFLOW_1_ROW = "ComfyUI workflow 1 (Salt student, 4 steps, rolling cache)"
COLUMNS = ["toy_score", "sharpness_error", "adherence", "direction_ok", "smoothness_px", "dynamic_px", "flicker",
           "frechet", "seconds"]


def widget(workflow: dict, node_type: str, index: int = 0):
    """widgets_values[index] of the one node of `node_type` in a UI-format workflow."""
    nodes = [n for n in workflow["nodes"] if n["type"] == node_type]
    assert len(nodes) == 1, f"expected one {node_type} node in the workflow, found {len(nodes)}"
    return nodes[0]["widgets_values"][index]


def read_webp_video(path: str, upscale: int) -> torch.Tensor:
    """Animated WEBP of upscaled toy frames → video (1, 3, F, H/upscale, W/upscale) in [-1, 1] (box average, which
    undoes the nearest-neighbour upscale and averages out the lossy codec)."""
    from PIL import Image, ImageSequence
    with Image.open(path) as im:
        frames = np.stack([np.asarray(f.convert("RGB"), dtype=np.float32) for f in ImageSequence.Iterator(im)])
    f, h, w, c = frames.shape   # (F, H·upscale, W·upscale, 3)
    frames = frames.reshape(f, h // upscale, upscale, w // upscale, upscale, c).mean(axis=(2, 4))
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None]   # (1, 3, F, H, W)
    return video / 127.5 - 1.0


def run_workflow_1(out_dir: str, student: str, comfyui_dir=None) -> tuple:
    """Run workflow 1 in a headless ComfyUI; returns (caption, video (1, 3, F, 16, 16), webp path, seconds).

    A model other than the shipped student is linked into models/diffusion_models and loaded with
    SaltLoadCausalModel in place of SaltToyModel (which only knows the shipped files)."""
    with open(WORKFLOW_1) as f:
        workflow = json.load(f)
    custom = os.path.abspath(student) != os.path.abspath(TOY_STUDENT)
    name = "salt_demo_student.safetensors"

    def swap_model(prompt):
        for node in prompt.values():
            if custom and node["class_type"] == "SaltToyModel":
                node.update(class_type="SaltLoadCausalModel", inputs={"ckpt_name": name, "use_ema": True,
                                                                      "dtype": "fp32"})

    t = time.time()
    with comfy_server(models={name: student} if custom else None, threads=1, comfyui_dir=comfyui_dir) as server:
        boot = time.time() - t
        t = time.time()
        files = [p for p in run_workflow(server, workflow, edit=swap_model) if str(p).endswith(".webp")]
        seconds = time.time() - t
        assert len(files) == 1, f"workflow 1 should save one animated WEBP, saved {files}"
        webp = shutil.copyfile(files[0], os.path.join(out_dir, "salt_toy_streaming.webp"))
    log.info("ComfyUI booted in %.1f s, ran workflow 1 in %.1f s", boot, seconds)
    video = read_webp_video(webp, int(widget(workflow, "SaltToyDecode")))
    return widget(workflow, "SaltToyTextEncode"), video, webp, seconds


DEMO_OUTPUTS = ("preview.gif", "salt_toy_streaming.webp")
DEMO_MARK = ".salt_demo"      # in --out: the files a demo wrote there (a rerun replaces those, and only those)


def _written(out_dir: str) -> set:
    """The names DEMO_MARK lists in `out_dir` (none without it)."""
    path = os.path.join(out_dir, DEMO_MARK)
    if not os.path.isfile(path):
        return set()
    with open(path, encoding="utf-8") as f:
        return set(f.read().split())


def check_demo_outputs(out_dir: str, comfyui: bool) -> None:
    """Refuse an --out holding a file of a demo output's name that no demo wrote (a user's file is never replaced),
    before any sampling."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"demo --out {out_dir!r} is a file; give a folder (it is created if missing)")
    ours = _written(out_dir)
    for name in DEMO_OUTPUTS[:2 if comfyui else 1]:
        if os.path.exists(os.path.join(out_dir, name)) and name not in ours:
            raise ValueError(f"demo --out {out_dir!r} holds a {name} the demo did not write; it is never replaced: "
                             f"choose another --out, or move that file away")


def mark_demo_outputs(out_dir: str, comfyui: bool) -> None:
    """Record the outputs this demo is about to write (check_demo_outputs lets a rerun replace them)."""
    names = sorted(_written(out_dir) | set(DEMO_OUTPUTS[:2 if comfyui else 1]))
    with open(os.path.join(out_dir, DEMO_MARK), "w", encoding="utf-8") as f:
        f.write("\n".join(names) + "\n")


def run_demo(out_dir: str = "out/demo", num_clips: int = 16, threads: int = 2, seed: int = 0,
             teacher: str = TOY_TEACHER, student: str = TOY_STUDENT, comfyui: bool = True,
             comfyui_dir: str = None) -> dict:
    """Run the toy-world demo; returns {row label: metric means} and writes out_dir/preview.gif (and, with
    `comfyui`, out_dir/salt_toy_streaming.webp from workflow 1 in a real ComfyUI at `comfyui_dir`)."""
    torch.set_num_threads(threads)
    if comfyui:
        check_comfyui(comfyui_dir)        # before minutes of sampling, not after
    world = get_world("default").cfg
    model, mode, source = load_toy_teacher(teacher)
    salt, salt_source = load_toy_student(student)
    check_demo_outputs(out_dir, comfyui)
    os.makedirs(out_dir, exist_ok=True)   # once the inputs load: a refused run leaves no folder behind
    encoder = ToyTextEncoder(text_dim=model.cfg.text_dim, max_tokens=model.cfg.text_len, world=world)
    captions = eval_prompts(world, num_clips)
    ref = reference_features(world, 256)
    real = render(world, sample_params(world, 1234, num_clips))
    rows, videos = {"real data": score_table(real, captions, world, ref)}, {"real": real}
    runs = [(label, short, lambda k=steps: sample_teacher(model, mode, captions, encoder, world, steps=k,
                                                          cfg_scale=3.0, shift=TOY_SHIFT, seed=seed))
            for label, short, steps in (("teacher 40 steps + CFG", "teacher 40", 40),
                                        ("teacher 4 steps", "teacher 4", 4), ("teacher 2 steps", "teacher 2", 2))]
    salt_cfg, context = get_preset("toy-salt"), encoder.encode(captions)
    runs += [(f"Salt student {k} steps", f"Salt {k}", lambda k=k: sample_student(salt, salt_cfg, context, k, seed=seed))
             for k in (4, 2)]
    for label, short, sample in runs:
        t = time.time()
        v = sample()
        rows[label] = {**score_table(v, captions, world, ref), "seconds": time.time() - t}
        videos[short] = v
    table = format_table(rows, COLUMNS)
    mark_demo_outputs(out_dir, comfyui)
    gif = save_gif({k: v[:8] for k, v in videos.items()}, os.path.join(out_dir, "preview.gif"))
    print(f"\nSalt toy world — teacher: {source}; student: {salt_source}\n\n{table}\n\npreview: {gif}  (rows: " +
          ", ".join(videos) + f"; first 8 of {num_clips} prompts)")
    if comfyui:
        caption, video, webp, seconds = run_workflow_1(out_dir, student, comfyui_dir)
        # one clip has no covariance: no Fréchet distance, and the toy score leaves that term out
        rows[WORKFLOW_1_ROW] = {**score_table(video, [caption], world), "seconds": seconds}
        table = format_table({WORKFLOW_1_ROW: rows[WORKFLOW_1_ROW]}, COLUMNS)
        print(f"\nThe same student in a real ComfyUI, headless: workflows/salt_toy_streaming.json, one clip of "
              f"{caption!r} (no Fréchet distance for one clip)\n\n{table}\n\nvideo: {webp}")
    return rows
