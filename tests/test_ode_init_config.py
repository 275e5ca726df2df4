"""ODE initialisation as its own job and config: presets, validation, stored run folders of both jobs (including
those written before the split), the front doors' refusals, and the sampling view of an ODE student."""
import dataclasses
import json

import pytest
import torch

from comfyui_salt.salt_core.model import build_model
from comfyui_salt.toy.jobs import distill_world
from comfyui_salt.training.distill import run_distillation
from comfyui_salt.training.distill_config import DISTILL_PRESETS, DistillConfig, get_preset
from comfyui_salt.training.job_configs import as_distill_config, read_run_config, stored_config
from comfyui_salt.training.ode_init import run_ode_init
from comfyui_salt.training.ode_init_config import ODE_INIT_PRESETS, OdeInitConfig, get_ode_init_preset
from comfyui_salt.training.runs import changed_settings, check_resumable, stored_settings
from comfyui_salt.training.student_config import SHARED_FIELDS
from comfyui_salt.weights.files import save_model

TOY = distill_world()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "t.safetensors"
    save_model(build_model("toy", seed=0), path, extra_metadata={"teacher_mode": "teacher_forcing"})
    return str(path)


def tiny(teacher, **kw):
    return get_ode_init_preset("toy-ode-init", **{**dict(teacher=teacher, batch_size=2, gen_steps=2, ode_pairs=4,
                                                        ode_teacher_steps=4, threads=1, checkpoint_every=1), **kw})


def pre_split_file(cfg: OdeInitConfig) -> dict:
    """The config.json an ODE-init run wrote before the split: DistillConfig(job="ode_init") — every distillation
    field at its default, the shared and ODE fields as run, K in step_choices."""
    old = {**stored_settings(DistillConfig()), "job": "ode_init", "step_choices": [cfg.grid_steps]}
    old.update({k: v for k, v in stored_settings(cfg).items() if k not in ("grid_steps",)})
    return old


def test_the_presets_are_the_old_recipes_and_the_fields_split_cleanly():
    toy = ODE_INIT_PRESETS["toy-ode-init"]
    assert (toy.lr_gen, toy.gen_steps, toy.beta1, toy.beta2, toy.weight_decay, toy.grad_clip, toy.ema_decay) == (
        3e-4, 1000, 0.9, 0.99, 0.0, 1.0, 0.999)
    assert toy.grid_steps == 4 and toy.world == "default"
    wan, sf = ODE_INIT_PRESETS["wan-ode-init"], DISTILL_PRESETS["self-forcing-dmd"]
    assert all(getattr(wan, f) == getattr(sf, f) for f in SHARED_FIELDS)
    ode_only = {f.name for f in dataclasses.fields(OdeInitConfig)} - set(SHARED_FIELDS)
    distill_only = {f.name for f in dataclasses.fields(DistillConfig)} - set(SHARED_FIELDS)
    assert ode_only == {"grid_steps", "ode_pairs", "ode_teacher_steps", "ode_warmup_steps", "ode_min_lr_ratio"}
    assert not ode_only & distill_only and "critic_init" in distill_only and "job" not in distill_only


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match=r"ode_teacher_steps=30 is not a multiple of grid_steps=4.*=40"):
        get_ode_init_preset("toy-ode-init", ode_teacher_steps=30)
    with pytest.raises(ValueError, match=r"step_choices was renamed to grid_steps"):
        get_ode_init_preset("toy-ode-init", step_choices=(4,))
    with pytest.raises(ValueError, match=r"OdeInitConfig: unknown keys \['critic_init'\]"):
        get_ode_init_preset("toy-ode-init", critic_init="teacher")
    with pytest.raises(KeyError, match=r"ode-init --preset toy-ode-init"):
        get_preset("toy-ode-init")
    with pytest.raises(KeyError, match=r"toy-ode-init"):
        get_ode_init_preset("toy-dmd")


def test_each_job_refuses_the_others_config(teacher, tmp_path):
    with pytest.raises(TypeError, match="run_ode_init"):
        run_distillation(tiny(teacher), str(tmp_path / "a"), world=TOY)
    with pytest.raises(TypeError, match="OdeInitConfig"):
        run_ode_init(get_preset("toy-dmd", teacher=teacher), str(tmp_path / "b"), world=TOY)


def test_a_folder_of_one_job_is_never_resumed_by_the_other(teacher, tmp_path):
    cfg = tiny(teacher, gen_steps=1)
    run_ode_init(cfg, str(tmp_path), quiet=True, world=TOY)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["job"] == "ode_init" and stored["grid_steps"] == 4
    assert read_run_config(str(tmp_path)) == cfg
    dmd = get_preset("toy-dmd", teacher=teacher, student_init=teacher)
    for allow in (False, True):   # not even with the explicit override: the checkpoints hold no critic
        with pytest.raises(ValueError, match=r"job='ode_init' run, not 'dmd'"):
            check_resumable(dmd, str(tmp_path), allow_changes=allow)


def test_a_pre_split_ode_folder_resumes_as_it_is_and_continues_bit_identically(teacher, tmp_path):
    import torch
    cfg = tiny(teacher, gen_steps=2)
    run_ode_init(cfg, str(tmp_path / "old"), max_gen_steps=1, quiet=True, world=TOY)
    (tmp_path / "old" / "config.json").write_text(json.dumps(pre_split_file(cfg), indent=1, sort_keys=True))
    assert stored_config(pre_split_file(cfg)) == cfg
    assert changed_settings(cfg, str(tmp_path / "old")) == {}
    assert changed_settings(dataclasses.replace(cfg, grid_steps=2, ode_teacher_steps=4), str(tmp_path / "old")) == {
        "grid_steps": (4, 2)}
    resumed = run_ode_init(cfg, str(tmp_path / "old"), quiet=True, world=TOY)
    straight = run_ode_init(cfg, str(tmp_path / "new"), quiet=True, world=TOY)
    for (k, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_pre_split_distillation_file_reads_back_without_its_ode_keys():
    cfg = get_preset("toy-salt")
    old = {**stored_settings(cfg), "job": "dmd", "ode_pairs": 512, "ode_teacher_steps": 40, "ode_warmup_steps": 50,
           "ode_min_lr_ratio": 0.1}
    assert stored_config(old) == cfg and DistillConfig.from_dict(old) == cfg
    del old["job"]   # older still: no job key at all
    assert stored_config(old) == cfg and DistillConfig.upgrade_stored(old)["job"] == "dmd"
    with pytest.raises(ValueError, match=r"job='ode_init' run, not 'dmd'"):
        DistillConfig.from_dict({**stored_settings(cfg), "job": "ode_init"})
    with pytest.raises(ValueError, match=r"job='teacher'; expected one of \['dmd', 'ode_init'\]"):
        stored_config({"job": "teacher"})


def test_an_ode_student_samples_with_the_distillations_defaults():
    ode = get_ode_init_preset("lab-ode-init", student_kind="bidirectional", seed=3)
    view = as_distill_config(ode)
    assert isinstance(view, DistillConfig) and all(getattr(view, f) == getattr(ode, f) for f in SHARED_FIELDS)
    base = DistillConfig()
    assert (view.local_attn_frames, view.sink_frames, view.context_noise, view.sc_weight) == (
        base.local_attn_frames, base.sink_frames, base.context_noise, 0.0)
    dmd = get_preset("toy-dmd")
    assert as_distill_config(dmd) is dmd


def test_a_distillation_folder_without_a_job_key_resumes(teacher, tmp_path):
    from comfyui_salt.training.runs import write_config
    cfg = get_preset("toy-dmd", teacher=teacher, batch_size=2, gen_steps=1, critic_ratio=1, eval_every=0, threads=1,
                     checkpoint_every=1)
    run_distillation(cfg, str(tmp_path), quiet=True, world=TOY)
    old = {k: v for k, v in stored_settings(cfg).items() if k != "job"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert changed_settings(cfg, str(tmp_path)) == {}
    write_config(cfg, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["job"] == "dmd"


@pytest.mark.parametrize("argv, words", [
    (["distill", "--preset", "toy-dmd", "--job", "ode_init"], ["--job was renamed", "ode-init --preset wan-ode-init"]),
    (["distill", "--preset", "wan-ode-init"], ["not a distillation preset", "ode-init --preset wan-ode-init"]),
    (["ode-init", "--preset", "toy-ode-init", "--step-choices", "4"], ["--step-choices was renamed to --grid-steps"]),
])
def test_the_old_ways_to_run_an_ode_init_name_the_new_command(argv, words, tmp_path, capsys):
    from comfyui_salt.__main__ import main
    with pytest.raises((SystemExit, KeyError)) as stop:
        main(argv + ["--out", str(tmp_path / "r")])
    said = capsys.readouterr().err + (str(stop.value) if isinstance(stop.value, KeyError) else "")
    assert all(w in said for w in words), said


def test_config_files_written_by_the_release_before_the_split_read_back_as_their_presets():
    """Two config.json files the pre-split code wrote for the method lab's 8-seed run (copied unchanged into
    tests/data): its causal ODE initialisation (`distill --preset lab-ode-init`) and its dmd seed 0. Each reads back
    as its preset with the overrides the lab runner passed, so both folders resume under this release."""
    import pathlib
    data = pathlib.Path(__file__).parent / "data"
    ode = json.loads((data / "pre_split_ode_init_config.json").read_text())
    assert ode["job"] == "ode_init" and "critic_init" in ode and "grid_steps" not in ode
    assert stored_config(ode) == get_ode_init_preset("lab-ode-init", teacher="runs/lab_teacher.safetensors",
                                                     student_kind="causal", threads=2)
    dmd = json.loads((data / "pre_split_dmd_config.json").read_text())
    assert dmd["job"] == "dmd" and "ode_pairs" in dmd
    assert stored_config(dmd) == get_preset("lab-dmd", teacher="runs/lab_teacher.safetensors", seed=0, threads=1,
                                            student_init="runs/lab-exp8/ode-causal/export/student.safetensors",
                                            gen_steps=300)


def test_pairs_made_with_other_settings_are_made_again_and_the_same_settings_reuse_them(tmp_path, caplog):
    """A folder whose run stopped after making its ODE pairs and before a checkpoint takes new settings: the pairs
    are those a fresh folder makes with them (they were reused, from the old teacher and grid, in silence);
    unchanged settings read the kept file again."""
    import shutil
    from safetensors.torch import load_file
    from comfyui_salt.toy.jobs import distill_world
    from comfyui_salt.training.ode_init import run_ode_init
    teacher = str(tmp_path / "t.safetensors")
    save_model(build_model("toy", seed=0), teacher, extra_metadata={"teacher_mode": "teacher_forcing"})
    kw = dict(teacher=teacher, batch_size=2, gen_steps=1, ode_pairs=2, ode_teacher_steps=4, threads=1,
              checkpoint_every=1)
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    run_ode_init(get_ode_init_preset("toy-ode-init", **kw), str(run), quiet=True, world=distill_world())
    shutil.rmtree(run / "checkpoints")                          # stopped before its first checkpoint
    first = (run / "ode_pairs.safetensors").read_bytes()
    run_ode_init(get_ode_init_preset("toy-ode-init", **kw), str(run), quiet=True, world=distill_world())
    assert (run / "ode_pairs.safetensors").read_bytes() == first   # the same settings: reused
    shutil.rmtree(run / "checkpoints")
    changed = dict(kw, ode_pairs=3, guidance_scale=2.0)
    with caplog.at_level("WARNING", logger="salt.ode_init"):
        run_ode_init(get_ode_init_preset("toy-ode-init", **changed), str(run), quiet=True, world=distill_world())
    assert "made with other settings (guidance_scale: 3.0 -> 2.0, ode_pairs: 2 -> 3)" in caplog.text, caplog.text
    run_ode_init(get_ode_init_preset("toy-ode-init", **changed), str(fresh), quiet=True, world=distill_world())
    got, want = (load_file(str(f / "ode_pairs.safetensors")) for f in (run, fresh))
    assert got["x0"].shape[0] == 3 and all(torch.equal(got[k], want[k]) for k in want)
    # with checkpoints, pairs their training read are not replaced unasked: a teacher written again at its path
    save_model(build_model("toy", seed=1), teacher, extra_metadata={"teacher_mode": "teacher_forcing"})
    again = get_ode_init_preset("toy-ode-init", **dict(changed, gen_steps=2))
    with pytest.raises(ValueError, match=r"its ODE pairs were made with other settings \(teacher_file: .*"
                                         r"--allow-changed-settings"):
        run_ode_init(again, str(fresh), quiet=True, world=distill_world())
    run_ode_init(again, str(fresh), quiet=True, world=distill_world(), allow_changed_settings=True)
    assert not torch.equal(load_file(str(fresh / "ode_pairs.safetensors"))["x0"], want["x0"])


def test_a_stop_signal_while_the_pairs_are_made_stops_at_the_next_batch(teacher, tmp_path, monkeypatch):
    """Ctrl-C while the teacher makes its ODE pairs (minutes at real scale) was noted and then ignored until every
    pair was made; it stops at the next batch now (the pairs are drawn again from the seed on the rerun)."""
    from comfyui_salt.training import loop, ode_init
    batches = []
    real = ode_init.check_stop

    def stop_at_second():
        batches.append(1)
        if len(batches) == 2:
            loop._STOP["signal"] = 2        # as the handler records Ctrl-C
        real()
    monkeypatch.setattr(ode_init, "check_stop", stop_at_second)
    with pytest.raises(KeyboardInterrupt, match="signal 2"):
        run_ode_init(tiny(teacher, ode_pairs=130), str(tmp_path / "run"), quiet=True, world=TOY)
    assert len(batches) == 2                # the first batch made, the second not started
