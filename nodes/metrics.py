"""Few-step quality report of a SALT_MODEL: semigroup defect and, in the toy world, the oracle metric table.

The measures are training.distill_eval's (defect_report, sample_student) and the toy wing's oracle metrics
(toy.metrics: score_table, format_table); this module only builds their inputs from node widgets and writes the
report. Toy models are measured on a CPU float32 copy (1.2M parameters): the evaluation helpers draw
their noise on the CPU. Knows nothing of training loops.
"""
import copy
import dataclasses
import re

import torch

from ..salt_core.kv_cache import CachePolicy
from ..salt_core.schedules import MAX_NFE
from ..salt_core.streaming import stream_memory_bytes
from ..salt_core.validate import check_count, check_latent, check_memory
from ..toy.metrics.score import format_table, score_table
from ..toy.text import ToyTextEncoder
from ..toy.world import TOY_SHIFT
from ..toy.worlds import get_world
from ..training.distill_config import DISTILL_PRESETS, get_preset
from ..training.distill_eval import defect_report, format_defect_report, sample_student
from .bridge import io, ui
from .bridge.memory import free_memory
from .models import salt_in_use
from .streaming import text_context
from .types import SaltModel, SaltModelType

# Distillation presets whose sizes, shift and chunking the measured rollouts use.
TOY_DISTILL_PRESET, WAN_DISTILL_PRESET = "toy-dmd", "self-forcing-dmd"
WAN_SHIFT = DISTILL_PRESETS[WAN_DISTILL_PRESET].shift
COLUMNS = ["toy_score", "sharpness_error", "adherence", "direction_ok", "smoothness_px", "dynamic_px", "flicker"]
DEFAULT_PROMPTS = ("a red disc moving left on a dark background\na blue square moving up on a light background\n"
                   "a green bar moving right on a dark background\na yellow disc moving down on a light background")
MAX_PROMPTS = 64
LINE = re.compile("[^\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")   # a line as str.splitlines ends it


def toy_captions(prompts: str) -> list:
    """Non-empty lines of `prompts`, at most MAX_PROMPTS, with a node error when there are none."""
    captions = []
    for match in re.finditer(LINE, prompts or ""):    # one line at a time, at most one past the limit
        line = match.group().strip()
        if line:
            captions.append(line)
            if len(captions) > MAX_PROMPTS:
                break
    if not 1 <= len(captions) <= MAX_PROMPTS:
        many = f"more than {MAX_PROMPTS}" if captions else "0"
        raise ValueError(f"SaltSemigroupDefect: prompts has {many} captions; expected 1..{MAX_PROMPTS}, one "
                         f"per line, e.g. 'a red disc moving left on a dark background'")
    return captions


def measure_config(salt: SaltModel, latent=None):
    """The DistillConfig whose sizes / shift / chunking the rollouts use (toy world, or the LATENT's size for Wan)."""
    kind = "causal" if salt.causal else "bidirectional"
    if salt.latent_format == "pixels":
        return get_preset(TOY_DISTILL_PRESET, student_kind=kind)
    if latent is None:
        raise ValueError(f"SaltSemigroupDefect: {salt.name} is not a toy-world model; connect `latent` (e.g. "
                         f"EmptyHunyuanLatentVideo) to set the video size, and `positive` for the prompt")
    samples = latent.get("samples") if isinstance(latent, dict) else None
    check_latent("latent", samples, salt.model.cfg.in_dim, where="SaltSemigroupDefect", finite=False)   # shape only
    _, _, frames, height, width = samples.shape
    cfg = get_preset(WAN_DISTILL_PRESET, student_kind=kind)
    if salt.causal and frames % cfg.chunk_frames:   # a bidirectional model denoises the whole clip: any length
        raise ValueError(f"SaltSemigroupDefect: latent has {frames} latent frames; a causal model streams chunks of "
                         f"{cfg.chunk_frames}, so expected a multiple of {cfg.chunk_frames} (pixel length 4·F−3, "
                         f"e.g. 33 → 9 latent frames)")
    return dataclasses.replace(cfg, num_frames=frames, height=height, width=width)


def measure_bytes(salt: SaltModel, cfg, clips: int = 1) -> int:
    """Estimated bytes of the measured rollouts of `clips` Wan clips of cfg's size (one batch), in the model's
    compute dtype, by the streaming sampler's estimate: a causal model streams chunk by chunk over a cache of every
    frame; a bidirectional one denoises the whole clip at once with no cache."""
    policy, chunk = ((CachePolicy.full(cfg.num_frames), cfg.chunk_frames) if salt.causal
                     else (None, cfg.num_frames))
    return stream_memory_bytes(salt.model.cfg, clips, cfg.num_frames, (cfg.height, cfg.width), policy, chunk,
                               dtype=salt.model.patch_embedding.weight.dtype)


def wan_clips(latent) -> int:
    """How many clips a Wan measurement rolls out: the LATENT's batch (measure_config has checked its shape), at
    most MAX_PROMPTS."""
    return check_count("latent batch", latent["samples"].shape[0], where="SaltSemigroupDefect", maximum=MAX_PROMPTS,
                       fix=f"one clip is measured per latent in the batch: a batch of 4-8 gives an interval, at "
                           f"most {MAX_PROMPTS}")


def semigroup_report(salt: SaltModel, prompts: str, nfe: int, grid_steps: int, seed: int, positive=None,
                     latent=None) -> str:
    """Markdown report: the semigroup defect on the `grid_steps` grid and (toy world) oracle metrics at `nfe`."""
    where = "SaltSemigroupDefect"
    nfe = check_count("nfe", nfe, where=where, maximum=MAX_NFE)
    grid_steps = check_count("grid_steps", grid_steps, where=where, minimum=3, maximum=2 * MAX_NFE,
                             fix="a defect needs three grid levels")
    seed = check_count("seed", seed, where=where, minimum=0, maximum=2 ** 63 - 1)
    cfg = measure_config(salt, latent)
    toy = salt.latent_format == "pixels"
    clips = None if toy else wan_clips(latent)
    need = 0 if toy else measure_bytes(salt, cfg, clips)
    # loaded as for sampling (a native MODEL's view bound to it); Wan is measured on the compute device, toy on the CPU
    with torch.no_grad(), salt_in_use(salt, need) as model:
        if not toy:
            device = model.patch_embedding.weight.device
            check_memory(f"the rollouts of {clips} clip(s) of {cfg.num_frames} latent frames at {cfg.height}×"
                         f"{cfg.width} latent px", need, free_memory(device, salt.patcher), where="SaltSemigroupDefect",
                         limit_what=f"ComfyUI's free memory on {device}",
                         fix="connect a smaller latent (a batch of fewer clips, fewer frames or a lower width/height)")
        if toy:
            model = copy.deepcopy(model).float().cpu()
            captions = toy_captions(prompts)
            world = get_world(cfg.world).cfg
            try:
                context = ToyTextEncoder(model.cfg.text_dim, max_tokens=model.cfg.text_len, world=world).encode(captions)
            except ValueError as e:
                raise ValueError(f"SaltSemigroupDefect: prompts: {e}") from e
        else:
            context = text_context(positive, salt, clips, "positive", "SaltSemigroupDefect").to(
                model.patch_embedding.weight.dtype)   # one prompt for every clip, or one each
        grids = tuple(dict.fromkeys(g for g in (grid_steps, nfe) if g >= 2))   # a triplet needs 2 steps + the end
        report = defect_report(model, cfg, context, grids=grids, seed=seed)
        defect = report[grid_steps]["mean"]
        more = "more prompts" if toy else "a latent batch of more clips"
        verb = "" if toy else "s"
        if defect.lo == defect.lo:
            interval = f"95 % interval [{defect.lo:.4f}, {defect.hi:.4f}]"
        elif defect.n == 1:
            interval = f"no interval from one clip ({more} give{verb} one)"
        else:   # seed_t_interval: every clip the same value (e.g. 0), or a NaN among them
            interval = f"no interval: the {defect.n} clips' defects tie or one is not a number"
        lines = [f"Salt metrics: {salt.name}",
                 f"semigroup defect: {defect.mean:.4f}, {interval} "
                 f"({grid_steps}-step grid at shift {cfg.shift:g}, {context.shape[0]} clip(s), "
                 f"{'causal' if salt.causal else 'bidirectional'} rollout states, seed {seed}; 0 = one big jump "
                 f"equals two small ones; Student-t intervals over clips, each on its own noise: {more} "
                 f"narrow{verb} them)", "", format_defect_report(report)]
        if toy:
            videos = sample_student(model, cfg, context, nfe, seed=seed)
            table = format_table({f"{nfe} NFE": score_table(videos, captions, world)}, COLUMNS)
            lines += ["", f"toy oracle metrics at {nfe} NFE ({len(captions)} clips, seed {seed}; Fréchet distance "
                          f"omitted: it needs dozens of clips):", table]
        else:
            lines += ["", "toy oracle metrics: toy-world models only"]
    return "\n".join(lines)


class SaltSemigroupDefect(io.ComfyNode):
    """Measure a few-step model: semigroup defect + (toy world) oracle metrics of generated clips → STRING."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SaltSemigroupDefect",
            display_name="Salt Semigroup Defect",
            category="Salt/metrics",
            description="Report on a SALT_MODEL: the semigroup defect (how far one big denoising jump is from two "
                        "smaller jumps to the same level, on the model's own rollout states; Salt trains it down) "
                        "and, for toy-world models, the oracle metric table (sharpness, prompt adherence, motion, "
                        "flicker, toy score) of one clip per prompt at `nfe` steps. Toy shift "
                        f"{TOY_SHIFT:g}; Wan models use shift {WAN_SHIFT:g}, `positive` and `latent`'s size.",
            inputs=[
                SaltModelType.Input("model", tooltip="The model to measure (SaltDistill, SaltToyModel, "
                                                     "SaltLoadCausalModel)."),
                io.String.Input("prompts", multiline=True, default=DEFAULT_PROMPTS,
                                tooltip="Toy world: one caption per line, one clip each (colour, shape, direction, "
                                        "background). Ignored for Wan models."),
                io.Int.Input("nfe", default=4, min=1, max=MAX_NFE,
                             tooltip="Denoising steps of the clips scored by the oracle metrics (toy world)."),
                io.Int.Input("grid_steps", default=8, min=3, max=2 * MAX_NFE,
                             tooltip="Grid on which the defect is measured (Salt's training grid: 8)."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=False,
                             tooltip="Seed of the noise of every rollout (fixed, so reports compare)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Wan models: the prompt (umT5 CONDITIONING), one for every clip or one "
                                              "per latent in the batch. Unused for the toy world."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Wan models: an empty latent whose shape (frames, height, width) sets the "
                                        "measured video size and whose batch the number of clips (one rollout "
                                        "each, on its own noise; 4-8 give an interval). Unused for the toy world."),
            ],
            outputs=[io.String.Output(tooltip="The report (markdown), also shown on the node.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, prompts, nfe, grid_steps, seed, positive=None, latent=None) -> io.NodeOutput:
        report = semigroup_report(model, prompts, nfe, grid_steps, seed, positive, latent)
        return io.NodeOutput(report, ui=ui.PreviewText(report))
