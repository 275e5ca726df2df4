"""Bad input, class 1: non-finite numbers never pass silently (issue 11).

NaN, ±Inf and out-of-range values at every front door — schedules, samplers, streaming, the model
config, distillation / teacher configs, node inputs, the CLI, file metadata and weights — end in an
error naming the argument and the value; a training step whose loss terms are mostly non-finite stops
the run with an error naming the term, after saving. The independent reference is the value itself:
each case feeds a value the rule must refuse and checks the refusal names it.
"""
import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

from comfyui_salt.salt_core.config import get_config
from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.samplers import sample_fewstep_deterministic, sample_fewstep_stochastic
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep, get_sigmas_uniform, get_sigmas_warped
from comfyui_salt.salt_core.streaming import stream_video
from comfyui_salt.training.loop import check_loss_terms
from comfyui_salt.training.distill_config import DistillConfig, get_preset
from comfyui_salt.weights.files import load_model, save_model
from comfyui_salt.training.teacher import TeacherConfig

DISTILL_FLOATS = [f.name for f in dataclasses.fields(DistillConfig) if f.type is float]   # every float field
TEACHER_FLOATS = [f.name for f in dataclasses.fields(TeacherConfig) if f.type is float]

NAN, INF = float("nan"), float("inf")
NON_FINITE = [NAN, INF, -INF]
SAMPLERS = [sample_fewstep_stochastic, sample_fewstep_deterministic]


@pytest.fixture(scope="module")
def toy():
    return build_model("toy", seed=0).eval()


def toy_inputs(model, frames=3, batch=1):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, model.cfg.in_dim, frames, 16, 16, generator=g)
    ctx = torch.randn(batch, model.cfg.text_len, model.cfg.text_dim, generator=g)
    return noise, ctx


# -- schedules -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", NON_FINITE + [0.0, -1.0])
def test_a_non_finite_or_non_positive_shift_is_refused_by_every_schedule(shift):
    for make in (lambda: get_sigmas_fewstep(4, shift), lambda: get_sigmas_uniform(10, shift),
                 lambda: get_sigmas_warped([1000, 500], shift)):
        with pytest.raises(ValueError, match="shift="):
            make()


@pytest.mark.parametrize("raw", [[NAN], [1000, NAN], [INF, 500], [1000, -INF], [1000, 0], [2000, 500]])
def test_a_raw_step_list_with_non_finite_or_out_of_range_steps_is_refused(raw):
    with pytest.raises(ValueError, match="raw step list"):
        get_sigmas_warped(raw, 5.0)


# -- samplers and streaming ------------------------------------------------------------------------------
BAD_SIGMAS = [[1.0, NAN, 0.0], [INF, 0.5, 0.0], [1.0, 0.5, -INF], [NAN, 0.0], [1.0, 0.5, -0.1], [1.5, 0.5, 0.0]]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("sigmas", BAD_SIGMAS)
def test_samplers_refuse_non_finite_or_out_of_range_sigmas(sampler, sigmas):
    calls = []
    with pytest.raises(ValueError, match="sigmas="):
        sampler(lambda x, s, **_: calls.append(1) or x, torch.randn(1, 3, 1, 4, 4), torch.tensor(sigmas))
    assert calls == [], "the model ran before the sigmas were checked"


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("value", NON_FINITE)
def test_samplers_refuse_noise_holding_nan_or_inf(sampler, value):
    x = torch.randn(1, 3, 1, 4, 4)
    x[0, 0, 0, 1, 1] = value
    with pytest.raises(ValueError, match="x holds 1 non-finite"):
        sampler(lambda x, s, **_: x, x, get_sigmas_fewstep(2, 3.0))


@pytest.mark.parametrize("what", ["noise", "context"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_stream_video_refuses_non_finite_noise_and_text_features(toy, what, value):
    noise, ctx = toy_inputs(toy)
    (noise if what == "noise" else ctx).view(-1)[5] = value
    with pytest.raises(ValueError, match=f"{what} holds 1 non-finite"):
        stream_video(toy, noise, ctx, get_sigmas_fewstep(2, 3.0), chunk_frames=3, policy=CachePolicy.full(3))


@pytest.mark.parametrize("kw", [dict(context_noise=NAN), dict(context_noise=INF), dict(context_noise=-0.1),
                                dict(context_noise=1.0), dict(cfg_scale=NAN), dict(cfg_scale=INF),
                                dict(sigmas=torch.tensor([1.0, NAN, 0.0]))])
def test_stream_video_refuses_non_finite_arguments(toy, kw):
    noise, ctx = toy_inputs(toy)
    args = dict(sigmas=get_sigmas_fewstep(2, 3.0), chunk_frames=3, policy=CachePolicy.full(3))
    args.update(kw)
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"{name}="):
        stream_video(toy, noise, ctx, **args)


# -- configs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", DISTILL_FLOATS)
@pytest.mark.parametrize("value", NON_FINITE)
def test_every_float_of_the_distillation_config_refuses_nan_and_inf(field, value):
    with pytest.raises(ValueError, match=f"DistillConfig: {field}="):
        get_preset("toy-salt", **{field: value})


@pytest.mark.parametrize("field, value", [("lr_gen", 0.0), ("lr_critic", -1e-5), ("shift", 0.0), ("beta1", 1.0),
                                          ("beta2", -0.1), ("ema_decay", 1.0), ("grad_clip", 0.0),
                                          ("guidance_scale", -3.0), ("sc_weight", -0.2), ("context_noise", 1.0),
                                          ("weight_decay", -0.01)])
def test_distillation_floats_outside_their_range_are_refused(field, value):
    with pytest.raises(ValueError, match=f"DistillConfig: {field}={value}"):
        DistillConfig(**{field: value})


@pytest.mark.parametrize("field", TEACHER_FLOATS)
def test_every_float_of_the_teacher_config_refuses_nan(field):
    with pytest.raises(ValueError, match=f"TeacherConfig: {field}=nan"):
        TeacherConfig(**{field: NAN})


@pytest.mark.parametrize("field", ["eps", "rope_theta"])
@pytest.mark.parametrize("value", NON_FINITE + [0.0, -1.0])
def test_the_model_config_refuses_non_finite_or_non_positive_numbers(field, value):
    import dataclasses
    with pytest.raises(ValueError, match=f"WanConfig: {field}="):
        dataclasses.replace(get_config("toy"), **{field: value})


@pytest.mark.parametrize("probs", [(NAN,), (INF,), (-1.0, 2.0), (0.5,)])
def test_step_probabilities_must_be_finite_and_sum_to_one(probs):
    choices = (4,) if len(probs) == 1 else (4, 2)
    with pytest.raises(ValueError, match="step_probs"):
        get_preset("toy-dmd", step_choices=choices, step_probs=probs)


# -- files -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", NON_FINITE)
def test_weights_holding_nan_or_inf_are_refused_on_load_naming_the_tensor_and_the_file(tmp_path, value):
    model = build_model("toy", seed=0)
    with torch.no_grad():
        model.blocks[1].ffn[0].weight[3, 4] = value
    path = tmp_path / "broken.safetensors"
    save_model(model, path)
    with pytest.raises(ValueError, match=r"broken\.safetensors.*NaN/Inf.*blocks\.1\.ffn\.0\.weight"):
        load_model(path)


@pytest.mark.parametrize("field, value", [("eps", NAN), ("rope_theta", INF), ("eps", -INF)])
def test_non_finite_numbers_in_a_files_config_metadata_are_refused_naming_the_field_and_the_file(tmp_path, field,
                                                                                                     value):
    cfg = json.loads(get_config("toy").to_json())
    cfg[field] = value
    path = tmp_path / "meta.safetensors"
    save_model(build_model("toy", seed=0), path, extra_metadata={"salt_config": json.dumps(cfg)})
    # save_model writes its own salt_config last; write the bad one explicitly
    from safetensors.torch import load_file, save_file
    save_file(load_file(str(path)), str(path), metadata={"salt_config": json.dumps(cfg), "salt_layout": "wan"})
    with pytest.raises(ValueError, match=rf"meta\.safetensors.*salt_config.*{field}="):
        load_model(path)


# -- training: a step whose loss terms are mostly non-finite ----------------------------------------------
@pytest.mark.parametrize("loss, stats, term", [
    (torch.tensor(NAN), {}, "gen loss became nan"),
    (torch.tensor(INF), {}, "gen loss became inf"),
    (torch.tensor(0.0), {"dmd_nonfinite_frac": 1.0}, "dmd loss: 100%"),
    (torch.tensor(0.0), {"dmd_nonfinite_frac": 0.75}, "dmd loss: 75%"),
    (torch.tensor(0.1), {"dmd_nonfinite_frac": NAN}, "dmd loss: nan%"),
    (torch.tensor(0.1), {"sc_loss": INF, "dmd_nonfinite_frac": 0.0}, "sc_loss became inf"),
])
def test_a_step_with_mostly_non_finite_loss_terms_is_a_failure_naming_the_term(loss, stats, term):
    with pytest.raises(FloatingPointError, match=term):
        check_loss_terms(loss, stats, "gen", 7)


def test_a_few_non_finite_score_entries_do_not_stop_training():
    check_loss_terms(torch.tensor(0.1), {"dmd_nonfinite_frac": 0.01, "dmd_loss": 0.1}, "gen", 0)


def test_a_teacher_that_outputs_nan_stops_distillation_naming_the_dmd_term_after_saving(tmp_path, monkeypatch):
    """Before this check a NaN score was masked to zero and the run 'trained' to the end (dmd_nonfinite_frac 1)."""
    import comfyui_salt.training.distill as job
    from comfyui_salt.toy.jobs import distill_world
    real_build = job.build_models

    def nan_teacher(cfg, world=None, *dtype):
        teacher, student, critic = real_build(cfg, world, *dtype)
        with torch.no_grad():
            teacher.head.head.bias.fill_(NAN)
        return teacher, student, critic
    monkeypatch.setattr(job, "build_models", nan_teacher)
    teacher_path = tmp_path / "teacher.safetensors"
    save_model(build_model("toy", seed=0), teacher_path)
    cfg = get_preset("toy-dmd", teacher=str(teacher_path), batch_size=1, gen_steps=3, critic_ratio=1, eval_every=0,
                     threads=1, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"dmd loss: 100% of its entries were non-finite.*last good state"):
        job.run_distillation(cfg, str(tmp_path / "run"), quiet=True, world=distill_world())
    assert not (tmp_path / "run" / "export").exists()
    assert list((tmp_path / "run" / "checkpoints").glob("step_*/COMPLETE"))


# -- front doors: node overrides and the CLI ---------------------------------------------------------------
@pytest.mark.parametrize("text", ["guidance_scale=nan", "lr_gen=inf", "shift=-inf", "context_noise=nan"])
def test_node_overrides_with_non_finite_numbers_are_refused(text):
    from comfy_import import import_nodes
    import_nodes()
    from comfyui_salt.nodes.distill import distill_config
    with pytest.raises(ValueError, match=text.split("=")[0]):
        distill_config("toy-dmd", "toy", "teacher", "teacher", 1, 1, 0, text)


def test_the_cli_refuses_a_nan_guidance_scale_with_a_message_and_no_run(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "comfyui_salt", "distill", "--preset", "toy-dmd", "--out",
                           str(out), "--guidance-scale", "nan"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "guidance_scale=nan" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_nan_is_never_a_finite_number_in_the_rules():
    from comfyui_salt.salt_core.validate import check_number
    for v in (NAN, INF, -INF, "nan", "inf", 1e309):
        with pytest.raises(ValueError):
            check_number("v", v, low=0)
    assert check_number("v", 2.5, low=0) == 2.5 and math.isfinite(check_number("v", "3", low=0))


@pytest.mark.parametrize("chunk", [7, 1 << 24])
def test_the_finite_check_counts_every_bad_entry_chunk_by_chunk(monkeypatch, chunk):
    """check_finite_tensor reads a tensor in chunks (its masks stay small however large the tensor): the count is
    the brute-force count, across chunk edges and for a non-contiguous view."""
    import comfyui_salt.salt_core.validate as v
    monkeypatch.setattr(v, "FINITE_CHUNK", chunk)
    t = torch.zeros(5, 11)
    t.view(-1)[[0, 6, 7, 13, 54]] = torch.tensor([float("nan"), float("inf"), -float("inf"), float("nan"), 1e39])
    seen, real = [], torch.isfinite
    monkeypatch.setattr(v.torch, "isfinite", lambda x: seen.append(x.numel()) or real(x))
    for x in (t, t.t()):
        want = int((~real(x)).sum())
        seen.clear()
        with pytest.raises(ValueError, match=f"holds {want} non-finite value\\(s\\) \\(NaN/Inf\\) out of 55"):
            v.check_finite_tensor("x", x)
        row = x[:1].numel()          # whole rows of the first axis, as many as fit a chunk (one at least)
        assert sum(seen) == 55 and max(seen) == max(row, chunk // row * row if chunk < 55 else 55), (seen, row)
    assert v.check_finite_tensor("x", torch.ones(5, 11)) is not None
