"""SaltDistill and SaltSemigroupDefect called in-process (ComfyUI importable, CPU), and the Wan LATENT scaling.

Distillation runs are CI-sized: a random toy-preset teacher from models/diffusion_models, batch 1,
one critic update per generator update. Independent reference for the LATENT scaling: ComfyUI's
own Wan21 latent format (process_in) applied to the streaming sampler's output.
"""
import json
import re

import pytest
import torch

from helpers import assert_close

TEACHER = "toy_teacher_random.safetensors"
# threads=1: two torch threads on a busy 2-core machine are several times slower than one.
CI_OVERRIDES = "critic_ratio=1; eval_every=0; checkpoint_every=1; threads=1"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread (tiny models; a busy 2-core machine runs them several times slower with two), restored
    afterwards: runs with a `threads` override also set the count process-wide."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def comfy_dirs(salt_nodes, tmp_path, monkeypatch):
    """Temporary diffusion_models and output folders registered with ComfyUI's folder_paths, and a toy teacher."""
    import folder_paths
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    models, output, inputs = tmp_path / "diffusion_models", tmp_path / "output", tmp_path / "input"
    models.mkdir()
    output.mkdir()
    inputs.mkdir()
    monkeypatch.setattr(folder_paths, "input_directory", str(inputs))
    exts = folder_paths.folder_names_and_paths["diffusion_models"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models", ([str(models)], exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setattr(folder_paths, "output_directory", str(output))
    save_model(build_model("toy", seed=0), models / TEACHER, extra_metadata={"teacher_mode": "teacher_forcing"})
    return models, output


@pytest.fixture
def progress_calls(salt_nodes, monkeypatch):
    """Progress-bar updates, with previews on (as ComfyUI started with --preview-method auto)."""
    import comfy.cli_args
    import comfy.utils
    monkeypatch.setattr(comfy.cli_args.args, "preview_method", comfy.cli_args.LatentPreviewMethod.Auto)
    calls = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, p, node_id=None: calls.append((v, t, p)))
    return calls


def run(node, **inputs):
    """The node's outputs (tuple) from a direct `execute` call, under inference mode as ComfyUI runs nodes."""
    with torch.inference_mode():
        return node.execute(**inputs).args


def distill_inputs(**kw):
    args = dict(preset="toy-dmd", teacher=TEACHER, student_init="teacher", critic_init="teacher", gen_steps=1,
                batch_size=1, seed=0, name="ci_run", overrides=CI_OVERRIDES)
    args.update(kw)
    return args


def toy_stream(salt_nodes, model, num_chunks=2):
    sigmas = run(salt_nodes.SaltFewStepSigmas, preset="2step", nfe=2, shift=1.0)[0]
    options = run(salt_nodes.SaltCacheOptions, chunk_frames=3, attention="full", window_frames=6, sink_frames=3,
                  relative_rope=False, context_noise=0.0, max_frames=12)[0]
    positive = run(salt_nodes.SaltToyTextEncode, text="a red disc moving left on a dark background")[0]
    return run(salt_nodes.SaltStreamingSampler, model=model, positive=positive, cache_options=options, sigmas=sigmas,
               seed=1, num_chunks=num_chunks, width=16, height=16, batch_size=1, sampling="stochastic",
               cfg=1.0)[0]["samples"]


# -- configuration ---------------------------------------------------------------------------------------
def test_the_config_is_the_preset_with_widgets_files_and_typed_overrides(salt_nodes, comfy_dirs):
    from comfyui_salt.nodes.distill import distill_config
    cfg = distill_config("toy-salt", TEACHER, "teacher", "teacher", 3, 2, 5,
                         "critic_ratio=1\nstep_choices=8,2; step_probs=0.5,0.5; sc_symmetric=true; lr_gen=1e-5")
    assert cfg.teacher == str(comfy_dirs[0] / TEACHER) and cfg.student_init == "teacher"
    assert (cfg.gen_steps, cfg.batch_size, cfg.seed, cfg.critic_ratio) == (3, 2, 5, 1)
    assert cfg.step_choices == (8, 2) and cfg.step_probs == (0.5, 0.5) and cfg.sc_symmetric and cfg.lr_gen == 1e-5
    assert cfg.sc_weight == 0.2 and cfg.threads == 0       # the rest from the preset; ComfyUI's threads untouched
    preset = distill_config("salt-longlive", TEACHER, "teacher", "teacher", 0, 0, 0)
    assert (preset.gen_steps, preset.batch_size, preset.sink_frames) == (480, 1, 3)   # 0: the preset's values


def test_an_ode_init_preset_runs_its_own_job_in_the_queue_and_ignores_critic_init(salt_nodes, comfy_dirs,
                                                                                   progress_calls):
    from comfyui_salt.nodes.distill import distill_config
    from comfyui_salt.training.ode_init_config import OdeInitConfig
    cfg = distill_config("toy-ode-init", TEACHER, "teacher", TEACHER, 2, 2, 1, "ode_pairs=4; ode_teacher_steps=4")
    assert isinstance(cfg, OdeInitConfig) and (cfg.gen_steps, cfg.batch_size, cfg.ode_pairs) == (2, 2, 4)
    with pytest.raises(ValueError, match=r"SaltDistill: overrides: unknown keys \['critic_ratio'\]"):
        distill_config("toy-ode-init", TEACHER, "teacher", "teacher", 2, 2, 1, "critic_ratio=1")
    models, output = comfy_dirs
    salt, export = run(salt_nodes.SaltDistill, **distill_inputs(
        preset="toy-ode-init", critic_init=TEACHER, gen_steps=2, batch_size=2, name="ode_run",
        overrides="ode_pairs=4; ode_teacher_steps=4; checkpoint_every=1; threads=1"))
    folder = output / "salt_runs" / "ode_run"
    assert json.loads((folder / "config.json").read_text())["job"] == "ode_init"
    assert (folder / "ode_pairs.safetensors").exists() and (models / "salt" / "ode_run.safetensors").exists()
    assert [(v, t) for v, t, p in progress_calls if p is None] == [(1, 2), (2, 2)] and salt.causal


@pytest.mark.parametrize("kw, words", [
    (dict(overrides="learning_rate=1"), ["overrides: unknown keys ['learning_rate']", "known keys", "critic_ratio"]),
    (dict(overrides="lr_gne=1e-5"), ["unknown keys ['lr_gne']", "did you mean lr_gen"]),
    (dict(overrides="ema_start=20"), ["ema_start was renamed to ema_start_iter", "critic_ratio"]),
    (dict(preset="toy-sc-single-k"), ["preset='toy-sc-single-k'", "folded into toy-sc-dmd"]),
    (dict(overrides="gen_steps=5"), ["gen_steps has its own widget"]),
    (dict(overrides="critic_ratio=fast"), ["critic_ratio='fast'", "int"]),
    (dict(overrides="sc_symmetric=maybe"), ["sc_symmetric='maybe'", "bool"]),
    (dict(preset="salt-longlive", teacher="toy"), ["teacher='toy'", "salt-longlive", "Wan 2.1 teacher file"]),
    (dict(student_init="gone.safetensors"), ["student_init='gone.safetensors'", "diffusion_models"]),
    (dict(name="../escape"), ["name='../escape'", "plain folder name"]),
])
def test_bad_distill_inputs_raise_errors_naming_the_input_and_the_fix(salt_nodes, comfy_dirs, kw, words):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        run(salt_nodes.SaltDistill, **distill_inputs(**kw))
    assert all(w in str(e.value) for w in ["SaltDistill"] + words), str(e.value)


def test_queue_time_validation_rejects_bad_names_and_execute_names_missing_files(salt_nodes, comfy_dirs):
    """validate_inputs takes `name` only (ComfyUI attaches its message to every input it takes); a missing
    file is refused by execute before any training, naming its input."""
    import inspect
    node = salt_nodes.SaltDistill
    assert list(inspect.signature(node.validate_inputs).parameters) == ["name"]
    assert node.validate_inputs(name="run1") is True
    assert "plain folder name" in node.validate_inputs(name="a/b")
    with pytest.raises(FileNotFoundError, match="teacher='gone.safetensors'"):
        run(node, **distill_inputs(teacher="gone.safetensors"))


def test_a_users_file_at_the_published_name_is_refused_at_queue_time_and_before_training(salt_nodes, comfy_dirs):
    """<diffusion_models>/salt/<name>.safetensors that Salt did not write is never replaced: validate_inputs and
    execute (before any training: no run folder) refuse the name, and the file keeps its bytes."""
    from comfyui_salt.training.publish import publish_student
    models, output = comfy_dirs
    mine = models / "salt" / "mine.safetensors"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_bytes(b"a user's model")
    node = salt_nodes.SaltDistill
    message = node.validate_inputs(name="mine")
    assert "was not written by Salt" in message and "name input, 'mine'" in message, message
    with pytest.raises(ValueError, match="was not written by Salt.*'mine'"):
        run(node, **distill_inputs(name="mine"))
    assert mine.read_bytes() == b"a user's model" and not (output / "salt_runs" / "mine").exists()
    export = output / "student.safetensors"                  # the last line of defence, after a run
    export.write_bytes(b"student")
    with pytest.raises(ValueError, match=f"never replaced.*the student stays at '{export}'"):
        publish_student(str(export), str(mine))
    assert mine.read_bytes() == b"a user's model"


def test_a_student_another_run_published_is_never_replaced_and_a_runs_own_is(salt_nodes, comfy_dirs):
    """Publishing replaces only the student this run published (its id in the file's metadata): queueing a name
    whose run folder was deleted (its student kept), or one a CLI export was put at, is refused at queue time and
    before training, the file kept; the same run queued again replaces its own."""
    import shutil
    from safetensors.torch import load_file, save_file
    from comfyui_salt.weights.files import RUN_META, read_metadata
    models, output = comfy_dirs
    published, folder = models / "salt" / "kept.safetensors", output / "salt_runs" / "kept"
    run(salt_nodes.SaltDistill, **distill_inputs(name="kept"))
    first = published.read_bytes()
    run_id = (folder / "run_id").read_text().strip()
    assert read_metadata(str(published))[RUN_META] == run_id and len(run_id) == 32
    run(salt_nodes.SaltDistill, **distill_inputs(name="kept", gen_steps=2))       # the same run, trained further
    assert published.read_bytes() != first and read_metadata(str(published))[RUN_META] == run_id
    kept = published.read_bytes()
    shutil.rmtree(folder)                                   # its run folder deleted, its student kept
    message = salt_nodes.SaltDistill.validate_inputs(name="kept")
    assert "another run's (run id" in message and "never replaced" in message and "'kept'" in message, message
    with pytest.raises(ValueError, match="another run's.*never replaced"):
        run(salt_nodes.SaltDistill, **distill_inputs(name="kept"))
    assert published.read_bytes() == kept and not folder.exists()
    cli = models / "salt" / "cli.safetensors"
    run(salt_nodes.SaltDistill, **distill_inputs(name="cli"))
    cli.unlink()                                            # replaced by a CLI export: Salt's metadata, no run id
    save_file(load_file(str(published)), str(cli),
              {k: v for k, v in read_metadata(str(published)).items() if k != RUN_META})
    with pytest.raises(ValueError, match="a student without a run id .*never replaced"):
        run(salt_nodes.SaltDistill, **distill_inputs(name="cli", gen_steps=2))
    assert read_metadata(str(cli)).get(RUN_META) is None


@pytest.mark.parametrize("published_as", ["link", "copy"])
def test_a_student_published_before_runs_had_ids_is_replaced_by_its_own_run(salt_nodes, comfy_dirs, published_as):
    """A run folder and its published student from before this release: no run id anywhere, the published file a
    hard link of the run's export (or a copy: a models folder on another file system). Queueing the run again trains
    on and replaces it (and the new one has an id)."""
    import os
    import shutil
    from safetensors.torch import load_file, save_file
    from comfyui_salt.weights.files import RUN_META, read_metadata
    models, output = comfy_dirs
    published, folder = models / "salt" / "old.safetensors", output / "salt_runs" / "old"
    run(salt_nodes.SaltDistill, **distill_inputs(name="old"))
    export = folder / "export" / "student.safetensors"
    legacy = {k: v for k, v in read_metadata(str(export)).items() if k != RUN_META}
    save_file(load_file(str(export)), str(export), legacy)
    (folder / "run_id").unlink()
    published.unlink()
    os.link(export, published) if published_as == "link" else shutil.copyfile(export, published)
    assert salt_nodes.SaltDistill.validate_inputs(name="old") is True
    run(salt_nodes.SaltDistill, **distill_inputs(name="old", gen_steps=2))
    assert read_metadata(str(published))[RUN_META] == (folder / "run_id").read_text().strip()


def test_a_student_published_before_run_ids_stays_its_runs_own_after_a_failed_export(salt_nodes, comfy_dirs,
                                                                                   monkeypatch):
    """The run id is made at export time; an export that fails after it (a full disk) used to leave the run's
    own id-less published file looking like a stranger's: every later queue of the name was refused. The claim
    recorded before training (its file's identity) keeps it the run's; a user's file put there later is not."""
    import os
    import sys
    from safetensors.torch import load_file, save_file
    from comfyui_salt.weights.files import RUN_META, read_metadata
    models, output = comfy_dirs
    published, folder = models / "salt" / "old.safetensors", output / "salt_runs" / "old"
    run(salt_nodes.SaltDistill, **distill_inputs(name="old"))
    export = folder / "export" / "student.safetensors"
    save_file(load_file(str(export)), str(export),
              {k: v for k, v in read_metadata(str(export)).items() if k != RUN_META})
    (folder / "run_id").unlink()
    published.unlink()
    os.link(export, published)
    node_module = sys.modules[salt_nodes.SaltDistill.__module__]
    real = node_module.export_student

    def disk_full(model, run_dir, causal=True, run_id=""):
        save_file({"x": torch.zeros(1)}, os.path.join(run_dir, "export", "student.safetensors"), {RUN_META: run_id})
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(node_module, "export_student", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run(salt_nodes.SaltDistill, **distill_inputs(name="old", gen_steps=2))
    monkeypatch.setattr(node_module, "export_student", real)
    assert (folder / "run_id").exists() and not read_metadata(str(published)).get(RUN_META)
    assert salt_nodes.SaltDistill.validate_inputs(name="old") is True
    run(salt_nodes.SaltDistill, **distill_inputs(name="old", gen_steps=3))
    assert read_metadata(str(published))[RUN_META] == (folder / "run_id").read_text().strip()
    published.unlink()                                        # a user's file there now: not the claimed one
    save_file({"x": torch.zeros(1)}, str(published), {})
    assert "never replaced" in str(salt_nodes.SaltDistill.validate_inputs(name="old"))


# -- running ---------------------------------------------------------------------------------------------
def test_distill_trains_in_the_queue_with_progress_previews_and_a_loadable_export(salt_nodes, comfy_dirs,
                                                                                    progress_calls):
    models, output = comfy_dirs
    overrides = "critic_ratio=1; eval_every=1; eval_clips=2; eval_nfe=2; threads=1"
    salt, export = run(salt_nodes.SaltDistill, **distill_inputs(gen_steps=2, overrides=overrides))
    assert salt.causal and salt.latent_format == "pixels" and "ci_run" in salt.name
    assert not any(p.requires_grad for p in salt.model.parameters())
    folder = output / "salt_runs" / "ci_run"
    assert export == str(folder / "export" / "student.safetensors") and (folder / "export" / "student_release.pt").exists()
    assert [(v, t) for v, t, p in progress_calls if p is None] == [(1, 2), (2, 2)]
    previews = [p for _, _, p in progress_calls if p is not None]
    assert len(previews) == 2 and previews[0][0] == "JPEG" and previews[0][1].size == (128, 128)

    published = models / "salt" / "ci_run.safetensors"
    assert published.exists()
    loaded = run(salt_nodes.SaltLoadCausalModel, ckpt_name="salt/ci_run.safetensors", use_ema=True, dtype="fp32")[0]
    for (k, a), b in zip(salt.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k
    import comfy.model_management as mm
    assert salt.patcher.model is salt.model and salt.patcher.loaded_size() == 0     # managed, not yet loaded
    latent = toy_stream(salt_nodes, salt)
    assert latent.shape == (1, 3, 6, 16, 16) and torch.isfinite(latent).all()
    assert salt.model in [m.model for m in mm.loaded_models()]                     # the sampler loaded it
    mm.unload_all_models()


REAL_PROMPTS = ["a cat walks on the beach", "a red car drives in the city at night"]
# A tiny real-scale run: 6 frames of 4×4 latents, one critic update per generator update.
REAL_OVERRIDES = ("num_frames=6; height=4; width=4; critic_ratio=1; align_start_iter=0; align_block=1; "
                  "step_choices=8,2; step_probs=0.5,0.5; eval_every=0; checkpoint_every=1; threads=1")


def test_a_real_scale_run_embeds_its_prompts_with_comfys_clip_once_and_resumes_without_it(salt_nodes, comfy_dirs,
                                                                                           tmp_path):
    import nodes as comfy_nodes
    from safetensors.torch import load_file
    from tiny_clip import tiny_umt5_clip
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    from comfyui_salt.training.prompts import WAN_NEGATIVE_PROMPT
    models, output = comfy_dirs
    save_model(build_model("tiny-hd128", seed=0), models / "tiny_wan.safetensors", layout="wan")   # text_dim 64
    (tmp_path / "input" / "prompts.txt").write_text("\n".join(REAL_PROMPTS) + "\n")   # uploaded to ComfyUI's input
    clip = tiny_umt5_clip(REAL_PROMPTS + [WAN_NEGATIVE_PROMPT], width=64)
    overrides = f"prompts_file=prompts.txt; {REAL_OVERRIDES}"
    inputs = distill_inputs(preset="salt-causal-forcing", teacher="tiny_wan.safetensors", name="real_clip",
                            overrides=overrides)
    run(salt_nodes.SaltDistill, **inputs, clip=clip)
    folder = output / "salt_runs" / "real_clip"
    embeds = load_file(str(folder / "prompt_embeds.safetensors"))["embeds"]
    assert embeds.shape == (3, 512, 64)
    for text, row in zip(REAL_PROMPTS + [WAN_NEGATIVE_PROMPT], embeds):       # what CLIPTextEncode gives a Wan model
        cond = comfy_nodes.CLIPTextEncode().encode(clip, text)[0][0][0][0]
        n = int((cond.abs().sum(-1) > 0).sum())
        assert 0 < n < 512 and cond.shape == (512, 64)
        assert_close(row, cond, what=text[:20])
    # the cache is in the run folder: queuing the same name again trains on without the CLIP
    run(salt_nodes.SaltDistill, **{**inputs, "gen_steps": 2})
    steps = [json.loads(line)["gen_step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    with pytest.raises(ValueError, match=r"clip input.*text_encoder=<Hugging Face umT5 folder>"):
        run(salt_nodes.SaltDistill, **{**inputs, "name": "real_no_clip"})
    assert not (output / "salt_runs" / "real_no_clip").exists()


def test_cancel_saves_a_checkpoint_and_queuing_the_same_name_resumes(salt_nodes, comfy_dirs):
    import comfy.model_management as mm
    folder = comfy_dirs[1] / "salt_runs" / "ci_run"
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(salt_nodes.SaltDistill, **distill_inputs(gen_steps=2))
        assert not mm.processing_interrupted(), "the Cancel flag was left set"
    finally:
        mm.interrupt_current_processing(False)
    assert not list((folder / "checkpoints").glob("step_*"))      # before the first iteration: nothing to save
    assert not (folder / "export").exists()
    run(salt_nodes.SaltDistill, **distill_inputs(gen_steps=2))
    steps = [json.loads(line)["gen_step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2], "the second run did not resume from the saved checkpoint"
    assert (folder / "export" / "student.safetensors").exists()


def test_cancel_between_generator_updates_stops_at_the_next_critic_iteration_and_resumes_exactly(salt_nodes,
                                                                                                 comfy_dirs,
                                                                                                 monkeypatch):
    """critic_ratio 3: generator updates at iterations 0 and 3. Cancel pressed during iteration 4 (the critic's
    alone) stops before iteration 5, not after the next generator update (Cancel was looked at only there: up to
    critic_ratio × grad_accum micro-batches later); the checkpoint holds iteration 5, and queueing again gives
    the student of a run never cancelled, bit for bit."""
    import comfy.model_management as mm
    from safetensors.torch import load_file
    from comfyui_salt.training import distill
    real, pressed = distill.Distiller.iteration, []

    def iteration(self, it, interrupt=None):
        stats = real(self, it, interrupt)
        if it == 4 and not pressed:                  # once: the first run only
            pressed.append(it)
            mm.interrupt_current_processing(True)
        return stats
    monkeypatch.setattr(distill.Distiller, "iteration", iteration)
    overrides = "critic_ratio=3; eval_every=0; checkpoint_every=1; threads=1"
    folder = comfy_dirs[1] / "salt_runs" / "ci_run"
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(salt_nodes.SaltDistill, **distill_inputs(gen_steps=3, overrides=overrides))
    finally:
        mm.interrupt_current_processing(False)
    state = torch.load(folder / "checkpoints" / "step_00000002" / "state.pt", weights_only=True)
    assert (state["gen_step"], state["iteration"]) == (2, 5)
    assert "step_00000003" not in {p.name for p in (folder / "checkpoints").iterdir()}
    run(salt_nodes.SaltDistill, **distill_inputs(gen_steps=3, overrides=overrides))
    run(salt_nodes.SaltDistill, **distill_inputs(gen_steps=3, overrides=overrides, name="uncancelled"))
    resumed, whole = (load_file(comfy_dirs[1] / "salt_runs" / n / "export" / "student.safetensors")
                      for n in ("ci_run", "uncancelled"))
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_a_threads_override_holds_for_its_run_only(salt_nodes, comfy_dirs):
    """The job sets torch's thread count (fixed for a bit-identical resume); inside ComfyUI's process it was left
    set for every later prompt of every user."""
    torch.set_num_threads(2)
    run(salt_nodes.SaltDistill, **distill_inputs(overrides="critic_ratio=1; eval_every=0; threads=3"))
    assert torch.get_num_threads() == 2


def test_a_run_name_holding_other_settings_is_refused_with_the_difference(salt_nodes, comfy_dirs):
    run(salt_nodes.SaltDistill, **distill_inputs())
    with pytest.raises(ValueError) as e:
        run(salt_nodes.SaltDistill, **distill_inputs(preset="toy-sc-dmd"))
    assert all(w in str(e.value) for w in ["SaltDistill", "ci_run", "sc_weight", "another name"]), str(e.value)


# -- metrics ---------------------------------------------------------------------------------------------
def test_the_metrics_report_has_the_defect_and_the_oracle_table(salt_nodes):
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    salt = SaltModel(build_model("toy", seed=0).eval(), "pixels", "random toy", causal=True)
    prompts = "a red disc moving left on a dark background\na blue bar moving up on a light background"
    out = salt_nodes.SaltSemigroupDefect.execute(model=salt, prompts=prompts, nfe=2, grid_steps=4, seed=0)
    report = out.args[0]
    assert out.ui.as_dict() == {"text": (report,)}
    lines = report.splitlines()
    assert lines[0] == "Salt metrics: random toy" and lines[1].startswith("semigroup defect: ")
    assert 0 < float(lines[1].split()[2].rstrip(",")) < 10 and "95 % interval [" in lines[1]
    assert "| 4 steps | **mean over triplets**" in report and "| 2 steps | **mean over triplets**" in report
    assert "toy oracle metrics at 2 NFE (2 clips" in report and "| 2 NFE |" in report and "toy_score" in report


@pytest.mark.parametrize("kw, words", [
    (dict(prompts="a purple disc"), ["prompts", "purple"]),
    (dict(prompts="  \n"), ["prompts has 0 captions"]),
    (dict(grid_steps=2), ["grid_steps=2", "three grid levels"]),
])
def test_bad_metrics_inputs_raise_errors_naming_the_input(salt_nodes, kw, words):
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    salt = SaltModel(build_model("toy", seed=0).eval(), "pixels", "random toy", causal=True)
    args = {**dict(model=salt, prompts="a red disc moving left", nfe=2, grid_steps=4, seed=0), **kw}
    with pytest.raises(ValueError) as e:
        salt_nodes.SaltSemigroupDefect.execute(**args)
    assert all(w in str(e.value) for w in ["SaltSemigroupDefect"] + words), str(e.value)


@pytest.mark.parametrize("causal, frames, clips", [(True, 6, 1), (False, 6, 3), (False, 5, 1)])
def test_the_defect_of_a_wan_model_uses_the_prompt_and_the_latent_size(salt_nodes, causal, frames, clips):
    """Any length for a bidirectional model (it denoises the whole clip); whole chunks for a causal one. One clip
    per latent in the batch, one prompt for all: an interval from 2 clips on (it measured one clip whatever the
    batch, with a zero-width interval)."""
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    salt = SaltModel(build_model("tiny-hd128", seed=0).eval(), "wan21", "tiny wan", causal=causal)
    with pytest.raises(ValueError, match="connect `latent`"):
        salt_nodes.SaltSemigroupDefect.execute(model=salt, prompts="", nfe=2, grid_steps=4, seed=0)
    positive = [[torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0)), {}]]
    latent = {"samples": torch.zeros(clips, 16, frames, 4, 4)}
    report = salt_nodes.SaltSemigroupDefect.execute(model=salt, prompts="", nfe=2, grid_steps=4, seed=0,
                                                    positive=positive, latent=latent).args[0]
    assert "semigroup defect: " in report and "at shift 5" in report and "toy-world models only" in report
    assert f"{clips} clip(s)" in report and f"| {clips} |" in report
    assert ("95 % interval [" in report) == (clips > 1)
    assert ("no interval from one clip (a latent batch of more clips gives one)" in report) == (clips == 1)
    with pytest.raises(ValueError, match="positive holds 2 conditionings .*every prompt written into its one text"):
        salt_nodes.SaltSemigroupDefect.execute(model=salt, prompts="", nfe=2, grid_steps=4, seed=0,
                                               positive=positive * 2, latent=latent)
    if causal:
        with pytest.raises(ValueError, match="latent has 5 latent frames; a causal model streams chunks of 3"):
            salt_nodes.SaltSemigroupDefect.execute(model=salt, prompts="", nfe=2, grid_steps=4, seed=0,
                                                   positive=positive, latent={"samples": torch.zeros(1, 16, 5, 4, 4)})


@pytest.mark.parametrize("shape, words", [
    ((1, 16, 3, 4096, 4096), ["needs about", "smaller latent"]),
    ((1, 16, 30000, 64, 64), ["needs about", "smaller latent"]),
    ((1, 16, 64, 64), ["latent has shape (1, 16, 64, 64)", "(B, C=16, F, H, W)"]),
    ((1, 4, 3, 8, 8), ["C=16"]),
])
def test_the_defect_of_a_wan_model_checks_the_latents_shape_and_size_before_any_rollout(salt_nodes, shape, words):
    """The latent only gives the size (a meta tensor here: nothing is allocated); too large for the free memory is
    refused with the estimate, a wrong shape names the input."""
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    salt = SaltModel(build_model("tiny-hd128", seed=0).eval(), "wan21", "tiny wan", causal=True)
    positive = [[torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0)), {}]]
    with pytest.raises((ValueError, MemoryError)) as e:
        salt_nodes.SaltSemigroupDefect.execute(model=salt, prompts="", nfe=2, grid_steps=4, seed=0, positive=positive,
                                               latent={"samples": torch.empty(shape, device="meta")})
    assert all(w in str(e.value) for w in ["SaltSemigroupDefect"] + words), str(e.value)


def test_the_defect_measurements_estimate_follows_the_compute_dtype_and_counts_a_cache_only_when_causal(salt_nodes):
    import dataclasses
    from comfyui_salt.nodes import metrics
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.salt_core.config import get_config
    model = build_model("tiny-hd128", seed=0).eval()
    cfg = metrics.measure_config(SaltModel(model, "wan21", "w", causal=True),
                                 {"samples": torch.empty(1, 16, 21, 60, 104, device="meta")})
    deeper = build_model(dataclasses.replace(get_config("tiny-hd128"), num_layers=4)).eval()   # tiny-hd128 has 2

    def estimate(m, causal):
        return metrics.measure_bytes(SaltModel(m, "wan21", "w", causal=causal), cfg)
    assert estimate(deeper, False) == estimate(model, False)              # no cache: depth does not count
    assert estimate(deeper, True) > estimate(model, True)                 # a cache per layer
    half = estimate(model.to(torch.bfloat16), True) / estimate(model.float(), True)
    assert 0.45 < half < 0.6                                 # bf16: half the cache and activations, latents fp32


# -- Wan latents -----------------------------------------------------------------------------------------
def test_streamed_wan_latents_are_in_comfys_latent_space_by_comfys_own_wan21_format(salt_nodes):
    """ComfyUI's Wan21 process_in (what a native sampler applies before the model) maps the streaming
    sampler's LATENT back to the model-space rollout: VAEDecode then sees ComfyUI's scaling."""
    import comfy.latent_formats
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.salt_core.seeding import seeded_noise
    from comfyui_salt.salt_core.streaming import stream_video
    salt = SaltModel(build_model("tiny-hd128", seed=0).eval(), "wan21", "tiny wan", causal=True)
    positive = [[torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0)), {}]]
    sigmas = run(salt_nodes.SaltFewStepSigmas, preset="self_forcing_4step", nfe=4, shift=5.0)[0]
    options = run(salt_nodes.SaltCacheOptions, chunk_frames=3, attention="sink", window_frames=6, sink_frames=3,
                  relative_rope=True, context_noise=0.0, max_frames=21)[0]
    latent = run(salt_nodes.SaltStreamingSampler, model=salt, positive=positive, cache_options=options, sigmas=sigmas,
                 seed=4, num_chunks=3, width=32, height=48, batch_size=1, sampling="stochastic",
                 cfg=1.0)[0]["samples"]
    assert latent.shape == (1, 16, 9, 6, 4)
    noise, gen = seeded_noise(4, (1, 16, 9, 6, 4))                             # the node's seed convention
    context = torch.nn.functional.pad(positive[0][0], (0, 0, 0, 3))            # padded to text_len 8
    ref = stream_video(salt.model, noise, context, sigmas.double(), policy=options.policy, chunk_frames=3,
                       generator=gen)
    wan = comfy.latent_formats.Wan21()
    assert_close(wan.process_in(latent), ref, 1e-5, "process_in(LATENT) vs model-space rollout")
    assert (latent - ref).abs().max() > 0.1, "the LATENT was not converted to ComfyUI's scale"


@pytest.mark.parametrize("text, words", [
    ("critic_ratio=1000000000", "critic_ratio=1000000000; expected an integer in [1, 100]"),
    ("grad_accum=1000000000", "grad_accum=1000000000; expected an integer in [1, 1024]"),
    ("eval_clips=100000", "eval_clips=100000; expected an integer in [1, 1024]"),
])
def test_overrides_that_would_keep_a_job_from_its_next_cancel_check_are_bounded(salt_nodes, comfy_dirs, text, words):
    """Cancel is checked before every iteration and between an iteration's first micro-batches; the critic's
    grad_accum micro-batches after a generator update, or an evaluation of eval_clips clips, lie between two checks,
    so a client's number must not make that hours (critic_ratio is bounded beside them)."""
    with pytest.raises(ValueError, match=re.escape(words)):
        run(salt_nodes.SaltDistill, **distill_inputs(overrides=text))


def test_an_ode_init_with_a_huge_teacher_step_count_is_refused(salt_nodes, comfy_dirs):
    with pytest.raises(ValueError, match=re.escape("ode_teacher_steps=4000000; expected an integer in [1, 1000]")):
        run(salt_nodes.SaltDistill, **distill_inputs(preset="toy-ode-init",
                                                     overrides="ode_pairs=1; ode_teacher_steps=4000000"))


def test_memory_limit_gib_from_the_node_cannot_raise_the_limit_above_the_hosts_free_memory(salt_nodes, comfy_dirs):
    models, output = comfy_dirs
    with pytest.raises(ValueError, match="memory_limit_gib=100000 is more than the host's free memory"):
        run(salt_nodes.SaltDistill, **distill_inputs(name="big", overrides=f"{CI_OVERRIDES}; num_frames=30000; "
                                                                           f"memory_limit_gib=100000"))
    assert not (output / "salt_runs" / "big").exists()
