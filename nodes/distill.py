"""Distillation inside the ComfyUI queue: SaltDistill runs training.distill.run_distillation, or
training.ode_init.run_ode_init for an ODE-init preset.

The job runs in `<output>/salt_runs/<name>` (checkpoints, metrics.jsonl, preview GIFs, export/); re-queuing
the same name resumes from its newest checkpoint. Progress and previews flow through the job's callback
into ComfyUI's progress bar; Cancel is raised from that callback, so the job first saves a resumable
checkpoint. The trained student is exported (weights.files.export_student) and published as
`models/diffusion_models/salt/<name>.safetensors` for SaltLoadCausalModel. Knows nothing of the losses.
"""
import logging
import os

import torch

from ..salt_core.validate import GIB, available_memory, format_bytes, quote
from ..toy.jobs import distill_world
from ..training.distill import run_distillation
from ..training.config_fields import parse_overrides
from ..training.distill_config import DISTILL_PRESETS, DistillConfig, get_preset
from ..training.distill_models import fill_prompt_cache, prompt_cache_path
from ..training.prompts import cache_is_current, read_prompts_file
from ..training.ode_init import run_ode_init
from ..training.ode_init_config import ODE_INIT_PRESETS, OdeInitConfig, get_ode_init_preset
from ..weights.files import export_student
from ..training.publish import check_publish_dest, claim_published, publish_student, run_identity
from ..training.runs import check_run_name
from .bridge import io
from .bridge.convert import clip_text_encoder
from .bridge.memory import free_memory_for_training, model_offload_device, model_patcher, torch_device, training_mode
from .bridge.paths import (diffusion_model_files, diffusion_model_path, diffusion_models_directory, input_file,
                           models_subfolder, output_directory)
from .bridge.progress import Progress, interrupt_requested, raise_interrupted
from .types import SaltModel, SaltModelType, latent_format_for

log = logging.getLogger("salt.nodes")

RUNS_FOLDER = "salt_runs"          # under ComfyUI's output folder
PUBLISH_FOLDER = "salt"            # under models/diffusion_models
TOY_SOURCE, FROM_TEACHER = "toy", "teacher"   # model-source words of the dropdowns (DistillConfig.teacher / *_init)
# Fields with their own widget (so `overrides` cannot set them).
WIDGET_FIELDS = ("teacher", "student_init", "critic_init", "gen_steps", "batch_size", "seed")


class TrainingCancelled(KeyboardInterrupt):
    """Raised on Cancel from the job's callback or its interrupt hook (before every trainer iteration and between the
    micro-batches of its first update); the job saves a checkpoint first when it has trained since its last one."""


def _model_source(value: str, allowed: str, what: str) -> str:
    """A dropdown value → `allowed` ('toy' / 'teacher') as is, or the full path of a diffusion_models file."""
    if value == allowed:
        return value
    try:
        return diffusion_model_path(value)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"SaltDistill: {what}={quote(value)}: {e}") from e


def distill_config(preset: str, teacher: str, student_init: str, critic_init: str, gen_steps: int, batch_size: int,
                   seed: int, overrides: str = "") -> DistillConfig | OdeInitConfig:
    """The job's config: preset + widgets + overrides (file names resolved to paths). A distillation preset gives
    a DistillConfig, an ODE-init preset (toy-ode-init, lab-ode-init, wan-ode-init) an OdeInitConfig, whose job has
    no critic: critic_init is then ignored."""
    ode = preset in ODE_INIT_PRESETS
    cls, get = (OdeInitConfig, get_ode_init_preset) if ode else (DistillConfig, get_preset)
    try:
        base = get(preset)
    except KeyError as e:
        raise ValueError(f"SaltDistill: preset={quote(preset)}: {e.args[0]}") from None
    fields = dict(teacher=_model_source(teacher, TOY_SOURCE, "teacher"),
                  student_init=_model_source(student_init, FROM_TEACHER, "student_init"),
                  gen_steps=gen_steps or base.gen_steps, batch_size=batch_size or base.batch_size,
                  seed=seed, threads=0)   # threads 0: keep ComfyUI's
    if ode:
        if critic_init != FROM_TEACHER:
            log.info("SaltDistill: preset %s trains no critic; critic_init=%r is ignored", preset, critic_init)
    else:
        fields["critic_init"] = _model_source(critic_init, FROM_TEACHER, "critic_init")
    typed = parse_overrides(cls, overrides, where="SaltDistill: overrides", renamed=cls.RENAMED,
                            reserved={k: "has its own widget; set it there instead" for k in WIDGET_FIELDS})
    if teacher == TOY_SOURCE and not typed.get("world", base.world):   # the run's world, overrides included
        if "world" in typed:   # a toy preset made real-scale by overrides
            raise ValueError(f"SaltDistill: overrides world={quote(typed['world'])} with teacher='toy': the toy "
                             f"teacher lives in a toy world; remove world= from the overrides, or set it to one of "
                             f"the toy worlds (e.g. world=default, world=lab:default)")
        raise ValueError(f"SaltDistill: teacher='toy' with the real-scale preset {quote(preset)}; pick a Wan 2.1 "
                         f"teacher file from models/diffusion_models, or a toy-* preset")
    # Paths sent over HTTP resolve inside ComfyUI's folders only (as LoadImage's files do).
    if typed.get("prompts_file"):
        typed["prompts_file"] = input_file(typed["prompts_file"], "SaltDistill: overrides: prompts_file")
    if typed.get("text_encoder"):
        typed["text_encoder"] = models_subfolder("text_encoders", typed["text_encoder"],
                                                 "SaltDistill: overrides: text_encoder")
    try:
        return get(preset, **{**fields, **typed})
    except (KeyError, ValueError) as e:
        raise ValueError(f"SaltDistill: {e}") from e


def run_folder(name: str) -> str:
    """`<output>/salt_runs/<name>`, with an error for names that are not plain folder names."""
    return os.path.join(output_directory(), RUNS_FOLDER, check_run_name(name, "SaltDistill"))


def publish_path(name: str) -> str:
    """Where the student of run `name` is published: <diffusion_models>/salt/<name>.safetensors."""
    return os.path.join(diffusion_models_directory(), PUBLISH_FOLDER, f"{name}.safetensors")


PUBLISHED = "SaltDistill: the published student"


def check_memory_limit(cfg, device) -> None:
    """From the node, `memory_limit_gib` may lower the memory check's limit, not raise it above the host's free memory
    when the job trains on the CPU: a client's number must not let a run take the server's RAM (on a GPU an
    over-estimate only ends in the job's own out-of-memory error)."""
    if cfg.memory_limit_gib <= 0 or torch.device(device).type != "cpu":
        return
    free = available_memory(torch.device("cpu"))
    if cfg.memory_limit_gib * GIB > free:
        raise ValueError(f"SaltDistill: overrides memory_limit_gib={cfg.memory_limit_gib:g} is more than the host's "
                         f"free memory ({format_bytes(free)}); training on the CPU, the node only lowers the limit: "
                         f"remove it, or lower num_frames, height / width or batch_size")


def check_publish(name: str) -> bool:
    """Whether publish_path(name) holds a student run `name` published (replaced by its next one); a ValueError
    when a file is there that Salt did not write, or that another run published (never replaced)."""
    try:
        return check_publish_dest(publish_path(name), run_folder(name), PUBLISHED)
    except ValueError as e:
        raise ValueError(f"{e} (the name input, {quote(name)}, chooses that file)") from None


def embed_prompts(cfg: DistillConfig | OdeInitConfig, folder: str, clip=None) -> None:
    """Fill a real-scale run's prompt-embedding cache from a ComfyUI CLIP (once per run folder, and again when the
    prompts changed), unless the overrides name a Hugging Face umT5 folder (text_encoder=...), which the job then
    reads itself."""
    if cfg.world or cfg.text_encoder:
        return
    cache = prompt_cache_path(folder)
    if os.path.exists(cache):
        try:
            if cache_is_current(cache, read_prompts_file(cfg.prompts_file), cfg.negative_prompt):
                return
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"SaltDistill: {e}") from e
    if clip is None:
        state = "holds embeddings of other prompts" if os.path.exists(cache) else "has none yet"
        raise ValueError(f"SaltDistill: the real-scale preset needs prompt embeddings and {folder!r} {state}: "
                         f"connect ComfyUI's umT5 to the clip input (Load CLIP, type 'wan', "
                         f"umt5_xxl_*.safetensors), or set overrides text_encoder=<Hugging Face umT5 folder>")
    try:
        fill_prompt_cache(cfg, folder, clip_text_encoder(clip))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"SaltDistill: {e}") from e
    except ValueError as e:
        raise ValueError(f"SaltDistill: {e}") from e
    log.info("SaltDistill: embedded the prompts of %s with the CLIP input into %s", cfg.prompts_file, folder)


def distill(cfg: DistillConfig | OdeInitConfig, name: str, clip=None) -> tuple:
    """Run (or resume) the job in the queue; returns (SaltModel of the student, path of export/student.safetensors).
    `clip` (a ComfyUI CLIP, optional) embeds a real-scale run's prompts once (see embed_prompts)."""
    folder = run_folder(name)
    check_publish(name)                  # before training: the student's file name is free or this run's own
    claim_published(publish_path(name), folder)   # a student of this run's without a run id stays its own
    check_memory_limit(cfg, torch_device())
    embed_prompts(cfg, folder, clip)
    free_memory_for_training()
    progress = Progress(cfg.gen_steps, "pixels" if cfg.world else "wan21")
    step = [0]

    def cancel():                        # before every trainer iteration, between micro-batches, after every step
        if interrupt_requested():
            raise TrainingCancelled(f"cancelled at generator step {step[0]}")

    def callback(d):
        if "preview" in d:
            progress.update(step[0], d["preview"])
        else:
            step[0] = d["gen_step"]
            progress.update(step[0])
        cancel()
    try:
        with training_mode():
            if isinstance(cfg, OdeInitConfig):     # one optimizer step a loop step: the callback answers Cancel
                model = run_ode_init(cfg, folder, callback=callback, device=torch_device(), world=distill_world())
            else:
                model = run_distillation(cfg, folder, callback=callback, device=torch_device(), world=distill_world(),
                                         interrupt=cancel)
    except TrainingCancelled:
        log.info("SaltDistill: cancelled; %s holds a resumable checkpoint (queue the same name again)", folder)
        raise_interrupted()
    except ValueError as e:
        raise ValueError(f"SaltDistill: {e}") from e
    model = model.requires_grad_(False).eval()
    export = export_student(model, folder, causal=cfg.student_kind == "causal",
                            run_id=run_identity(folder, create=True))[0]
    published = publish_student(export, publish_path(name), PUBLISHED, folder=folder)
    log.info("SaltDistill: exported %s; load it as %s/%s.safetensors", export, PUBLISH_FOLDER, name)
    # managed like a loaded file: offloaded now, loaded onto the compute device by the sampler that uses it
    model = model.to(model_offload_device())
    salt = SaltModel(model, latent_format_for(model), f"{os.path.basename(published)} (SaltDistill {name}, "
                     f"{cfg.gen_steps} generator steps)", causal=cfg.student_kind == "causal",
                     patcher=model_patcher(model))
    return salt, export


class SaltDistill(io.ComfyNode):
    """Distil a few-step student (DMD / SC-DMD / Salt) inside the queue → SALT_MODEL + export path."""

    @classmethod
    def define_schema(cls):
        files = diffusion_model_files()
        return io.Schema(
            node_id="SaltDistill",
            display_name="Salt Distill",
            category="Salt/training",
            description="Runs a distillation job (training.distill.run_distillation) in <output>/salt_runs/<name>: "
                        "checkpoints, metrics.jsonl, preview GIFs and export/student.safetensors. Queue the same "
                        "name again to resume after Cancel (a checkpoint is saved) or to train further with a "
                        "larger gen_steps. The student is also published as models/diffusion_models/salt/"
                        "<name>.safetensors for SaltLoadCausalModel. Toy presets run on a CPU; real-scale presets "
                        "need Wan 2.1 files, overrides prompts_file=... and the prompt embeddings: ComfyUI's umT5 on the "
                        "clip input, or overrides text_encoder=... (a Hugging Face umT5 folder).",
            inputs=[
                io.Combo.Input("preset", options=list(DISTILL_PRESETS) + list(ODE_INIT_PRESETS), default="toy-salt",
                               tooltip="A training/distill_config.py preset: toy-* in the toy world (CPU), the "
                                       "others real scale (Self Forcing, Causal Forcing, LongLive, bidirectional); "
                                       "or an ODE-pair initialisation (*-ode-init, training/ode_init_config.py: no "
                                       "critic, so critic_init is ignored), whose student a later run starts from."),
                io.Combo.Input("teacher", options=[TOY_SOURCE] + files, default=TOY_SOURCE,
                               tooltip="'toy': the shipped toy teacher; or a teacher file in models/diffusion_models "
                                       "(any layout)."),
                io.Combo.Input("student_init", options=[FROM_TEACHER] + files, default=FROM_TEACHER,
                               tooltip="'teacher': start from a copy of the teacher; or a file (e.g. an ODE-init "
                                       "student)."),
                io.Combo.Input("critic_init", options=[FROM_TEACHER] + files, default=FROM_TEACHER,
                               tooltip="'teacher': start the critic (fake score) from the teacher; or a file."),
                io.Int.Input("gen_steps", default=0, min=0, max=100000,
                             tooltip="Generator updates in total (each follows critic_ratio critic updates); 0: the "
                                     "preset's (toy: 200; real DMD: 120; Salt: 280 / 400 / 480 for Causal Forcing / "
                                     "Self Forcing / LongLive). Re-queue with a larger value to continue a finished run."),
                io.Int.Input("batch_size", default=0, min=0, max=256,
                             tooltip="Clips per micro-batch; 0: the preset's (toy: 8, real scale: 1 per GPU)."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=False,
                             tooltip="Every step is seeded from (seed, step): the same seed resumes exactly "
                                     "(fixed: a changed seed is another run)."),
                io.String.Input("name", default="toy_salt",
                                tooltip="Run folder under <output>/salt_runs and the published model name; the same "
                                        "name resumes that run."),
                io.String.Input("overrides", default="", multiline=True, optional=True,
                                placeholder="critic_ratio=1; eval_clips=4",
                                tooltip="Further DistillConfig (OdeInitConfig for *-ode-init) fields as field=value, "
                                        "separated by ';' or new lines "
                                        "(e.g. lr_gen=1e-5; step_choices=8,4,2; sc_symmetric=true), parsed as the "
                                        "CLI's flags are (docs/training.md, 'Settings', lists every field). Unknown "
                                        "fields are rejected with a did-you-mean and the list of known ones."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Real-scale presets: ComfyUI's umT5 (Load CLIP, type 'wan') embeds the "
                                      "prompts_file once into the run folder (a resumed run does not need it). "
                                      "Ignored by toy presets and when overrides set text_encoder=<umT5 folder>."),
            ],
            outputs=[SaltModelType.Output(tooltip="The trained student (EMA weights once EMA has started), for "
                                                  "SaltStreamingSampler and SaltSemigroupDefect."),
                     io.String.Output(tooltip="Path of export/student.safetensors (original Wan layout) in the run "
                                              "folder; export/student_release.pt beside it is the release format.")],
        )

    @classmethod
    def validate_inputs(cls, name) -> bool | str:
        """Reject a bad run name when the prompt is queued. ComfyUI attaches the message to every input this
        method takes, so it takes `name` only; missing files are reported by execute, naming their input."""
        try:
            run_folder(name)
            check_publish(name)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, preset, teacher, student_init, critic_init, gen_steps, batch_size, seed, name,
                overrides="", clip=None) -> io.NodeOutput:
        cfg = distill_config(preset, teacher, student_init, critic_init, gen_steps, batch_size, seed, overrides)
        return io.NodeOutput(*distill(cfg, name, clip))
