"""Bad input, class 3: degenerate arguments are errors that name the argument, not arithmetic.

Zero and negative counts, fractional counts, wrong tensor ranks and widths, empty schedules and
unknown words for booleans, through the Python API, node overrides and the CLI.
"""
import dataclasses
import re
import subprocess
import sys
import types

import pytest
import torch

from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.salt_core.losses import sc_triplet
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.samplers import sample_fewstep_deterministic, sample_fewstep_stochastic
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep, get_sigmas_uniform
from comfyui_salt.salt_core.streaming import stream_video
from comfyui_salt.salt_core.validate import parse_bool
from comfyui_salt.training.distill_config import DistillConfig, get_preset
from comfyui_salt.training.ode_init_config import OdeInitConfig
from comfyui_salt.training.teacher import TeacherConfig

# int fields whose declaration says "a count >= 1" (the rule read from the field metadata, as validation does)
COUNTS_FROM_ONE = [f.name for f in dataclasses.fields(DistillConfig) if f.metadata["rule"]["count"] == 1
                   and f.type is int]
ODE_COUNTS_FROM_ONE = [f.name for f in dataclasses.fields(OdeInitConfig) if f.metadata["rule"]["count"] == 1
                       and f.type is int]


@pytest.fixture(scope="module")
def toy():
    return build_model("toy", seed=0).eval()


# -- configs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", COUNTS_FROM_ONE)
@pytest.mark.parametrize("value", [0, -1])
def test_every_distillation_count_refuses_zero_and_negative_values(field, value):
    with pytest.raises(ValueError, match=rf"DistillConfig: {field}={value}; expected an integer (>= 1|in \[1, )"):
        DistillConfig(**{field: value})


@pytest.mark.parametrize("field", ODE_COUNTS_FROM_ONE)
@pytest.mark.parametrize("value", [0, -1])
def test_every_ode_init_count_refuses_zero_and_negative_values(field, value):
    assert {"grid_steps", "ode_pairs", "ode_teacher_steps"} <= set(ODE_COUNTS_FROM_ONE)
    with pytest.raises(ValueError, match=rf"OdeInitConfig: {field}={value}; expected an integer (>= 1|in \[1, )"):
        OdeInitConfig(**{field: value})


@pytest.mark.parametrize("field", ["critic_ratio", "batch_size", "checkpoint_every", "chunk_frames", "gen_steps"])
@pytest.mark.parametrize("value", [2.5, 10**0.5, "x"])
def test_counts_refuse_fractions_and_words(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        DistillConfig(**{field: value})


@pytest.mark.parametrize("field", ["sink_frames", "ema_start_iter", "eval_every", "seed", "threads", "align_start_iter"])
def test_counts_that_may_be_zero_refuse_negative_values(field):
    DistillConfig(**{field: 0})
    with pytest.raises(ValueError, match=rf"{field}=-1; expected an integer (>= 0|in \[0, )"):
        DistillConfig(**{field: -1})


@pytest.mark.parametrize("kw, words", [
    (dict(step_choices=(), step_probs=()), "step_choices=()"),
    (dict(step_choices=(0,), step_probs=(1.0,)), "step_choices=0"),
    (dict(step_choices=(9,), step_probs=(1.0,)), "step_choices=9"),
    (dict(eval_nfe=(0,)), "eval_nfe=0"),
    (dict(shift=1e17), "shift=1e+17; expected a finite number in (0, 100]"),   # the grid's levels would collapse to 1
    (dict(local_attn_frames=0), "local_attn_frames=0"),
    (dict(local_attn_frames=-2), "local_attn_frames=-2"),
    (dict(local_attn_frames=2, chunk_frames=3, num_frames=21), "local_attn_frames=2 is less than sink_frames=0 + "
                                                              "chunk_frames=3"),
    (dict(local_attn_frames=4, sink_frames=2, chunk_frames=3, num_frames=21), "e.g. local_attn_frames=5"),
])
def test_degenerate_step_and_window_settings_are_refused(kw, words):
    with pytest.raises(ValueError) as e:
        DistillConfig(**kw)
    assert words in str(e.value), e.value


@pytest.mark.parametrize("kw, words", [
    (dict(sc_steps=4, step_choices=(8,), step_probs=(1.0,)), "sc_steps=4 is not a K the rollouts draw"),
    (dict(step_probs=(0.0, 0.5, 0.5)), "sc_steps=8 is not a K the rollouts draw"),   # drawn with probability 0
    (dict(sc_steps=1, step_choices=(1,), step_probs=(1.0,)), "sc_steps=1: that grid has no triplet"),
    (dict(sc_steps=2, step_choices=(8, 2), step_probs=(0.5, 0.5)), "sc_steps=2: that grid has no triplet"),
    (dict(sc_exit_sigma_max=0.49), "sc_exit_sigma_max=0.49 is below every exit where L_SC acts"),
    (dict(sc_exit_sigma_max=0.49, shift=5.0), "expected sc_exit_sigma_max >= 0.625"),
])
def test_sc_settings_under_which_sc_never_acts_are_refused_unless_sc_is_off(kw, words):
    """sc_weight > 0 that would train plain DMD (L_SC never acts) is refused naming the setting and the fix; the same
    settings with sc_weight=0 are plain DMD and accepted."""
    with pytest.raises(ValueError) as e:
        get_preset("toy-salt", **kw)
    assert words in str(e.value) and "or sc_weight=0 for plain DMD" in str(e.value), e.value
    get_preset("toy-salt", sc_weight=0.0, align_weight=0.0, **kw)


@pytest.mark.parametrize("kw", [dict(step_choices=(8, 4), step_probs=(0.5, 0.5)), dict(step_probs=(0.5, 0.5, 0.0)),
                                dict(step_choices=(8,), step_probs=(1.0,), align_k4=True)])
def test_an_alignment_no_drawn_rollout_carries_is_refused_unless_it_is_off(kw):
    """align_weight > 0 acts only on K = 2 rollouts (K = 4 too with align_k4, training/distill.py alignment_acts):
    a mixture that never draws one is refused naming the fix; with align_weight=0 it is accepted, and align_k4 makes
    a mixture drawing 4 valid."""
    with pytest.raises(ValueError) as e:
        get_preset("toy-salt", **kw)
    assert "would never act" in str(e.value) and "or align_weight=0" in str(e.value), e.value
    get_preset("toy-salt", align_weight=0.0, **kw)
    if 4 in kw.get("step_choices", (8, 4, 2)) and kw.get("step_probs", (1,) * 3)[1] > 0:
        get_preset("toy-salt", align_k4=True, **kw)


def _acts_in_draws(kw, draws=300):
    """(SC acts, alignment acts) with settings `kw` in any of `draws` generator steps, by brute force through
    training's own rules: `Distiller.draws` (K, exit index, SC triplet) and `alignment_acts`, on an unvalidated
    namespace of the toy-salt fields (a refused config cannot be built); L_SC weighs a triplet 1 − σ_s."""
    from comfyui_salt.training.distill import Distiller, alignment_acts
    fields = {**dataclasses.asdict(get_preset("toy-salt")), **kw, "sc_weight": 0.2, "align_weight": 0.1,
              "align_start_iter": 0}
    job = types.SimpleNamespace(cfg=types.SimpleNamespace(**fields))
    sc = align = False
    for it in range(draws):
        d = Distiller.draws(job, it, "gen")
        sc = sc or (d["triplet"] is not None and d["triplet"].sigma_s < 1)
        align = align or alignment_acts(job.cfg, it, d["K"], d["exit"], d.get("ref8", True))
    return sc, align


@pytest.mark.parametrize("choices, probs", [((8, 4, 2), (0.4, 0.4, 0.2)), ((8, 4), (0.5, 0.5)), ((4, 2), (0.5, 0.5)),
                                            ((8,), (1.0,)), ((2,), (1.0,)), ((1,), (1.0,)), ((8, 2), (1.0, 0.0)),
                                            ((8, 2), (0.0, 1.0)), ((4, 1), (0.5, 0.5))])
@pytest.mark.parametrize("sc_steps, sc_max, align_k4", [(8, 1.0, False), (8, 0.45, True), (4, 1.0, True),
                                                        (2, 1.0, False), (1, 1.0, False), (4, 0.4, False)])
@pytest.mark.parametrize("shift", [3.0, 5.0])
def test_a_salt_config_is_accepted_exactly_when_sc_and_alignment_each_act_in_training_draws(choices, probs, sc_steps,
                                                                                            sc_max, align_k4, shift):
    kw = dict(step_choices=choices, step_probs=probs, sc_steps=sc_steps, sc_exit_sigma_max=sc_max, align_k4=align_k4,
              shift=shift)
    sc, align = _acts_in_draws(kw)
    for sc_weight, align_weight in ((0.2, 0.0), (0.0, 0.1)):
        acts = sc if sc_weight else align
        try:
            get_preset("toy-salt", sc_weight=sc_weight, align_weight=align_weight, **kw)
            accepted = True
        except ValueError as e:
            assert "would never act" in str(e), e
            accepted = False
        assert accepted == acts, (kw, sc_weight, align_weight)


@pytest.mark.parametrize("shift", [3.0, 5.0, 7.5])
@pytest.mark.parametrize("sc_steps", [3, 4, 8])
def test_the_sc_exit_bound_a_refusal_states_is_accepted_and_anything_below_the_lowest_exit_is_not(shift, sc_steps):
    """The refusal's "expected sc_exit_sigma_max >= b": b itself is accepted (rounded up, never down to below the
    exit), and b is within 0.001 above the lowest exit where sc_triplet draws a triplet L_SC weighs (σ_s < 1)."""
    grid = get_sigmas_fewstep(sc_steps, shift)
    gen = torch.Generator().manual_seed(0)
    lowest = min(float(grid[i]) for i in range(sc_steps) if (t := sc_triplet(i, gen, grid)) and t.sigma_s < 1)
    kw = dict(shift=shift, sc_steps=sc_steps, step_choices=(sc_steps, 2), step_probs=(0.5, 0.5))
    with pytest.raises(ValueError) as e:
        get_preset("toy-salt", sc_exit_sigma_max=lowest * 0.999, **kw)
    bound = float(re.search(r"expected sc_exit_sigma_max >= ([0-9.]+)", str(e.value)).group(1))
    assert lowest <= bound < lowest + 0.001, (bound, lowest)
    get_preset("toy-salt", sc_exit_sigma_max=bound, **kw)
    get_preset("toy-salt", sc_exit_sigma_max=lowest, **kw)


def test_sc_steps_sent_as_a_whole_float_is_accepted_as_before():
    assert get_preset("toy-salt", sc_steps=8.0).sc_steps == 8


@pytest.mark.parametrize("field", ["batch_size", "total_steps", "checkpoint_every", "eval_steps", "chunk_frames"])
def test_teacher_counts_refuse_zero(field):
    with pytest.raises(ValueError, match=f"TeacherConfig: {field}=0"):
        TeacherConfig(**{field: 0})


def test_a_teacher_warm_start_step_without_weights_or_past_the_last_step_is_refused():
    with pytest.raises(ValueError, match="init_step=5 without init_from"):
        TeacherConfig(init_step=5)
    with pytest.raises(ValueError, match="init_step=100 with total_steps=100"):
        TeacherConfig(init_from="w.safetensors", init_step=100, total_steps=100)
    assert TeacherConfig(init_from="w.safetensors", init_step=99, total_steps=100).init_step == 99


def test_max_gen_steps_zero_is_refused_rather_than_exporting_the_untouched_teacher(tmp_path):
    from comfyui_salt.toy.jobs import distill_world
    from comfyui_salt.training.distill import run_distillation
    with pytest.raises(ValueError, match="max_gen_steps=0"):
        run_distillation(get_preset("toy-dmd"), str(tmp_path / "run"), max_gen_steps=0, world=distill_world())
    assert not (tmp_path / "run").exists()


# -- tensors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (3, 3, 16, 16, 1, 1), (1, 4, 3, 16, 16), (1, 3, 0, 16, 16)])
def test_the_model_refuses_latents_of_the_wrong_rank_or_channels_naming_the_shape(toy, shape):
    ctx = torch.randn(1, 8, 32)
    with pytest.raises(ValueError, match=r"WanModel: x has shape .*expected a latent video \(B, C=3, F, H, W\)"):
        toy(torch.randn(shape), torch.zeros(1), ctx)


@pytest.mark.parametrize("shape", [(1, 8, 64), (1, 8, 4096), (8, 32), (1, 0, 32)])
def test_the_model_refuses_text_features_of_the_wrong_width_or_rank(toy, shape):
    with pytest.raises(ValueError, match=r"WanModel: context has shape .*\(B, L, 32\)"):
        toy(torch.randn(1, 3, 3, 16, 16), torch.zeros(1), torch.randn(shape))


@pytest.mark.parametrize("sampler", [sample_fewstep_stochastic, sample_fewstep_deterministic],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("sigmas", [[], [1.0], [0.5, 0.5, 0.0], [0.0, 0.5]])   # [0.0]: a split's done tail
def test_samplers_given_empty_or_degenerate_sigmas_fail_instead_of_returning_the_noise(sampler, sigmas):
    with pytest.raises(ValueError, match="sigmas="):
        sampler(lambda x, s, **_: x, torch.randn(1, 3, 1, 4, 4), torch.tensor(sigmas))


@pytest.mark.parametrize("kw, words", [
    (dict(chunk_frames=0), "chunk_frames=0"),
    (dict(chunk_frames=-3), "chunk_frames=-3"),
    (dict(sigmas=torch.tensor([])), "sigmas=[]"),
    (dict(sigmas=torch.tensor([1.0])), "sigmas=[1.0]"),
    (dict(noise=torch.randn(1, 3, 16, 16)), "noise has shape (1, 3, 16, 16)"),
    (dict(context=torch.randn(1, 8, 64)), "context has shape (1, 8, 64)"),
    (dict(context=torch.randn(2, 8, 32)), "context has batch 2"),
])
def test_stream_video_refuses_degenerate_arguments_naming_them(toy, kw, words):
    g = torch.Generator().manual_seed(0)
    args = dict(noise=torch.randn(1, 3, 3, 16, 16, generator=g), context=torch.randn(1, 8, 32, generator=g),
                sigmas=get_sigmas_fewstep(2, 3.0), chunk_frames=3, policy=CachePolicy.full(3))
    args.update(kw)
    with pytest.raises(ValueError) as e:
        stream_video(toy, args.pop("noise"), args.pop("context"), args.pop("sigmas"), **args)
    assert words in str(e.value), e.value


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_uniform_schedules_refuse_non_positive_or_fractional_step_counts(n):
    with pytest.raises(ValueError, match="num_steps="):
        get_sigmas_uniform(n)


# -- booleans --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("word, value", [("true", True), ("YES", True), ("on", True), ("1", True), ("False", False),
                                         ("no", False), ("off", False), ("0", False)])
def test_boolean_words_parse(word, value):
    assert parse_bool("flag", word) is value


@pytest.mark.parametrize("word", ["maybe", "ture", "2", "", "none", "y"])
def test_unknown_words_for_a_boolean_are_errors_not_false(word):
    with pytest.raises(ValueError, match="expected a boolean"):
        parse_bool("flag", word)


@pytest.mark.parametrize("text", ["critic_ratio=0", "checkpoint_every=0", "chunk_frames=0", "sc_symmetric=maybe",
                                  "num_frames=-3", "step_choices=0"])
def test_node_overrides_with_degenerate_values_are_refused_naming_the_field(text):
    from comfy_import import import_nodes
    import_nodes()
    from comfyui_salt.nodes.distill import distill_config
    with pytest.raises(ValueError, match=text.split("=")[0]):
        distill_config("toy-dmd", "toy", "teacher", "teacher", 1, 1, 0, text)


def test_the_toy_teacher_goes_where_the_runs_world_is_a_toy_one_overrides_included():
    """A real-scale preset made a toy-world run by its overrides takes the toy teacher (it was refused by the
    preset's own world); without a world, the refusal names the preset."""
    from comfy_import import import_nodes
    import_nodes()
    from comfyui_salt.nodes.distill import distill_config
    cfg = distill_config("self-forcing-dmd", "toy", "teacher", "teacher", 1, 1, 0, "world=default; height=16; width=16")
    assert (cfg.world, cfg.teacher) == ("default", "toy")
    with pytest.raises(ValueError, match=r"teacher='toy' with the real-scale preset 'self-forcing-dmd'"):
        distill_config("self-forcing-dmd", "toy", "teacher", "teacher", 1, 1, 0, "")


# -- the CLI (subprocesses: a few only) ---------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--gen-steps", "0"], "gen_steps=0"),
    (["--sc-symmetric", "maybe"], "expected a boolean"),
])
def test_the_cli_refuses_degenerate_flags_with_a_message_and_no_run(tmp_path, args, words):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "comfyui_salt", "distill", "--preset", "toy-dmd", "--out",
                           str(out)] + args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (out / "export").exists()


@pytest.mark.parametrize("argv, words", [
    (["demo", "--num-clips", "0", "--no-comfyui"], "num_clips=0"),
    (["demo", "--threads", "0", "--no-comfyui"], "threads=0"),
    (["demo", "--threads", "100000", "--no-comfyui"], "threads=100000.*256"),   # the training configs' cap
    (["teacher", "--out", "unused", "--max-steps", "-1"], "max_steps=-1"),
    (["distill", "--preset", "toy-dmd", "--out", "unused", "--max-gen-steps", "0"], "max_gen_steps=0"),
])
def test_cli_step_and_clip_counts_are_checked_before_any_job_starts(tmp_path, monkeypatch, argv, words):
    from comfyui_salt.__main__ import main
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=words):
        main(argv)
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("make, kw, words", [
    ("distill", dict(eval_clips=1), "eval_clips=1 with eval_every=50.*eval_clips >= 2"),
    ("distill", dict(eval_nfe=()), "eval_nfe is empty with eval_every=50"),
    ("teacher", dict(eval_clips=1), "eval_clips=1 with eval_every=500"),
])
def test_evaluations_of_one_clip_or_no_nfe_are_refused_before_training_and_allowed_without_evaluations(make, kw,
                                                                                                       words):
    """They used to train, then fail at the first evaluation (a Fréchet distance of one clip; max() of nothing)."""
    from comfyui_salt.training.distill_config import get_preset
    from comfyui_salt.training.teacher import TeacherConfig
    build = (lambda **k: get_preset("toy-dmd", **k)) if make == "distill" else (lambda **k: TeacherConfig(**k))
    with pytest.raises(ValueError, match=words):
        build(**kw)
    build(eval_every=0, **kw)


def test_export_teacher_refuses_a_folder_that_is_no_run_and_a_destination_inside_a_checkpoint(tmp_path):
    from comfyui_salt.training.teacher import export_teacher
    with pytest.raises(FileNotFoundError, match=r"run_dir \(--run\) .* is no run folder"):
        export_teacher(str(tmp_path / "typo" / "deep"), str(tmp_path / "t.safetensors"))
    assert not (tmp_path / "typo").exists()                     # no checkpoints/ made on the way
    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_00000002.old").mkdir()   # a checkpoint a cut save was replacing
    for inside in (step / "ema.safetensors", step / "sub" / "x.safetensors",
                   tmp_path / "run" / "checkpoints" / "step_00000002.old" / "ema.safetensors"):
        with pytest.raises(ValueError, match="inside a run's checkpoint; an export never replaces"):
            export_teacher(str(tmp_path / "run"), str(inside))
    link = tmp_path / "elsewhere"
    link.symlink_to(step, target_is_directory=True)              # the same folder by another name
    with pytest.raises(ValueError, match="inside a run's checkpoint"):
        export_teacher(str(tmp_path / "run"), str(link / "ema.safetensors"))


def test_a_folder_the_system_refuses_is_an_error_naming_the_path_not_a_traceback():
    """Linux's /sys refuses new folders to every user, root included (as a read-only mount or a full disk would):
    the CLI says so with the path (it printed an OSError traceback)."""
    import os
    if not sys.platform.startswith("linux") or os.access("/sys", os.W_OK) and os.path.exists("/sys/salt_run"):
        pytest.skip("needs Linux's /sys")
    proc = subprocess.run([sys.executable, "-m", "comfyui_salt", "distill", "--preset", "toy-dmd", "--out",
                           "/sys/salt_run", "--gen-steps", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error:" in proc.stderr and "/sys/salt_run" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_an_unknown_boolean_word_is_an_argparse_error_in_process(capsys):
    from comfyui_salt.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["distill", "--preset", "toy-dmd", "--out", "unused", "--grad-checkpointing", "ture"])
    assert e.value.code == 2 and "expected a boolean" in capsys.readouterr().err
