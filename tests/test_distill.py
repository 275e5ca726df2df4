"""Distillation job: every toy preset runs a few steps; an interrupted run resumes bit-identically."""
import pytest
import torch

from comfyui_salt.salt_core.model import build_model
from comfyui_salt.training.distill import run_distillation
from comfyui_salt.training.distill_config import DISTILL_PRESETS, DistillConfig, get_preset
from comfyui_salt.training.ode_init import run_ode_init
from comfyui_salt.training.ode_init_config import ODE_INIT_PRESETS, get_ode_init_preset
from comfyui_salt.weights.files import export_student, load_model, save_model
from comfyui_salt.toy.jobs import distill_world

TOY = distill_world()   # what toy-world runs borrow: the shipped teacher, toy prompts, oracle evaluation


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "toy_teacher.safetensors"
    save_model(build_model("toy", seed=0), path, extra_metadata={"teacher_mode": "teacher_forcing"})
    return str(path)


def tiny(preset, teacher_path, **kw):
    """A tiny run of a distillation preset, or of an ODE-init preset (its own config: no critic, no evaluation)."""
    base = dict(teacher=teacher_path, batch_size=2, gen_steps=2, threads=1, checkpoint_every=1)
    if preset in ODE_INIT_PRESETS:
        return get_ode_init_preset(preset, **{**base, "ode_pairs": 4, "ode_teacher_steps": 4, **kw})
    base.update(critic_ratio=2, eval_every=0, align_start_iter=0, ema_start_iter=1)
    return get_preset(preset, **{**base, **kw})


@pytest.mark.parametrize("preset", sorted(p for p in [*DISTILL_PRESETS, *ODE_INIT_PRESETS] if p.startswith("toy-")))
def test_every_toy_preset_runs_a_few_steps_and_exports(preset, teacher_path, tmp_path):
    if preset in ODE_INIT_PRESETS:
        model = run_ode_init(tiny(preset, teacher_path), str(tmp_path), quiet=True, world=TOY)
    else:
        cfg = tiny(preset, teacher_path, eval_every=2 if preset == "toy-dmd" else 0, eval_clips=2)
        model = run_distillation(cfg, str(tmp_path), quiet=True, world=TOY)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    paths = export_student(model, str(tmp_path))
    loaded, layout = load_model(paths[1])
    assert layout == "self_forcing"
    assert (tmp_path / "metrics.jsonl").exists()


def test_salt_iteration_exercises_sc_and_alignment(teacher_path, tmp_path):
    import json
    cfg = tiny("toy-salt", teacher_path, step_choices=(8, 2), step_probs=(0.5, 0.5), gen_steps=8, critic_ratio=1)
    run_distillation(cfg, str(tmp_path), quiet=True, world=TOY)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "K" in r]
    assert any("sc_loss" in r for r in rows if r["K"] == 8 and r["exit"] < 7)
    assert any(r["aligned"] == 1.0 and "align_loss" in r for r in rows)
    assert all(r["aligned"] == 0.0 for r in rows if not (r["K"] == 2 and r["exit"] == 1))


@pytest.mark.parametrize("start, warned", [(4, True), (3, False), (0, False)])
def test_an_alignment_starting_after_the_last_update_is_warned_of_and_does_not_act(teacher_path, tmp_path, caplog,
                                                                                  start, warned):
    """gen_steps=4, critic_ratio=1: generator updates at trainer iterations 0-3. align_start_iter=4 is valid (a longer
    run reaches it) but does nothing in this one: said at the start, and no update aligns; at 3 or 0 no warning, and
    the alignment acts (K = 2 always: exit index 1 on some of the 4 updates with this seed)."""
    import json
    import logging
    cfg = tiny("toy-salt", teacher_path, step_choices=(2,), step_probs=(1.0,), sc_weight=0.0, gen_steps=4,
               critic_ratio=1, align_start_iter=start, ema_start_iter=0)
    with caplog.at_level(logging.WARNING, logger="salt.distill"):
        run_distillation(cfg, str(tmp_path), quiet=True, world=TOY)
    said = [r.getMessage() for r in caplog.records if "align_start_iter" in r.getMessage()]
    assert bool(said) == warned, said
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    aligned = [r["iteration"] - 1 for r in rows if r.get("aligned") == 1.0]
    assert (not aligned) if warned else (aligned and min(aligned) >= start), aligned


# (preset, the run's own settings, one change): changes training.validate.READ_ONLY_WITH says nothing in the run
# reads (warned of at the start; the student, its EMA and the critic bit-identical to the run without the change),
# and each field's control where it is read (no warning, other weights). Every run: 4 generator updates at
# critic_ratio 1, so SC (K = 8, exits 0-6) and the alignment (K = 2, exit 1) act on some of them with this seed
# (test_salt_iteration_exercises_sc_and_alignment's draws).
_ALIGN_K2 = dict(step_choices=(2,), step_probs=(1.0,), align_weight=0.1)
_INERT = [("toy-bidir-dmd", {}, {"local_attn_frames": 6}),
          ("toy-bidir-dmd", {}, {"local_attn_frames": 6, "sink_frames": 3}),
          ("toy-bidir-dmd", {}, {"context_noise": 0.2}),
          ("toy-bidir-dmd", dict(_ALIGN_K2, align_delta=0.0), {"align_coupling": "independent"}),   # it pulls
          ("toy-dmd", {}, {"sc_symmetric": True}), ("toy-dmd", {}, {"sc_exit_sigma_max": 0.5}),
          ("toy-dmd", {}, {"sc_steps": 4}), ("toy-dmd", {}, {"align_delta": 0.5}), ("toy-dmd", {}, {"align_k4": True}),
          ("toy-dmd", _ALIGN_K2, {"align_k4": True}),   # aligned, but 4 is never drawn
          ("toy-dmd", {}, {"align_coupling": "independent"}), ("toy-dmd", {}, {"align_start_iter": 3}),
          ("toy-dmd", {}, {"teacher_offload": True}), ("toy-dmd", {}, {"sharding": "hybrid"}),
          ("toy-dmd", {}, {"prompts_file": "prompts.txt"}), ("toy-dmd", {}, {"negative_prompt": "blurry"}),
          ("toy-dmd", {"teacher": "toy"}, {"use_ema_weights": False}),   # no model file: nothing to pick EMA from
          # eval_every=0: no evaluation. Where one runs (toy/evaluate.py reads them) these fields shape what is
          # measured, not what is trained, so they have no control here
          ("toy-dmd", {}, {"eval_clips": 4}), ("toy-dmd", {}, {"eval_nfe": (2,)}),
          # a bidirectional student scored whole reads no chunks: any chunk size, whole (4) or not (5 of 12 frames)
          ("toy-bidir-dmd", {"teacher_kind": "bidirectional"}, {"chunk_frames": 4}),
          ("toy-bidir-dmd", {"teacher_kind": "bidirectional"}, {"chunk_frames": 5}),
          *([] if torch.cuda.is_available() else [("toy-dmd", {}, {"autocast_bf16": True})])]   # CPU: no autocast
_ACTIVE = [("toy-dmd", {}, {"local_attn_frames": 6}), ("toy-dmd", {"local_attn_frames": 6}, {"sink_frames": 3}),
           ("toy-dmd", {}, {"context_noise": 0.2}),
           ("toy-sc-dmd", {}, {"sc_symmetric": True}), ("toy-sc-dmd", {}, {"sc_exit_sigma_max": 0.5}),
           ("toy-salt", {}, {"sc_steps": 4}),
           ("toy-dmd", _ALIGN_K2, {"align_coupling": "independent"}),
           ("toy-dmd", _ALIGN_K2, {"align_delta": 0.0}),   # no margin: every distance pulls
           ("toy-dmd", dict(_ALIGN_K2, align_delta=0.0), {"align_start_iter": 3}),   # δ 0.1: no pull here yet
           ("toy-dmd", dict(_ALIGN_K2, step_choices=(4, 2), step_probs=(0.5, 0.5), align_delta=0.0, seed=9),
            {"align_k4": True}),   # seed 9: update 2 draws K = 4, exit 3, and the 8-step reference's coin
           ("toy-dmd", {}, {"chunk_frames": 4}),
           ("toy-bidir-dmd", {}, {"chunk_frames": 4})]   # teacher_kind auto: the teacher file scores chunk by chunk


@pytest.fixture(scope="module")
def _trained(teacher_path, tmp_path_factory):
    """(preset, own settings, change) -> (the last checkpoint's tensors: student, EMA, critic; the run's warnings),
    each run once per module."""
    import logging
    from safetensors.torch import load_file
    done = {}

    def train(preset, own, change):
        key = (preset, repr(sorted(own.items())), repr(sorted(change.items())))
        if key not in done:
            cfg = tiny(preset, teacher_path, gen_steps=4, critic_ratio=1, ema_start_iter=0, **own, **change)
            said = []
            handler = logging.Handler()
            handler.emit = lambda record: said.append(record.getMessage())
            logger = logging.getLogger("salt.distill")
            logger.addHandler(handler)
            out = tmp_path_factory.mktemp("run")
            try:
                run_distillation(cfg, str(out), quiet=True, world=TOY)
            finally:
                logger.removeHandler(handler)
            last = sorted((out / "checkpoints").iterdir())[-1]
            weights = {f"{net}.{k}": v for net in ("student", "ema", "critic")
                       for k, v in load_file(str(last / f"{net}.safetensors")).items()}
            done[key] = (weights, [s for s in said if "no effect in this run" in s])
        return done[key]
    return train


@pytest.mark.parametrize("preset, own, change", _INERT + _ACTIVE)
def test_a_setting_is_warned_of_exactly_when_the_run_never_reads_it(_trained, preset, own, change):
    """Independent of READ_ONLY_WITH's reasoning: a changed field is warned of iff the weights trained with it are
    bit-identical to those trained without it."""
    inert = (preset, own, change) in _INERT
    base, _ = _trained(preset, own, {})
    weights, said = _trained(preset, own, change)
    same = all(torch.equal(weights[k], base[k]) for k in base)
    assert same == inert, f"{change} on {preset} {own}: weights {'unchanged' if same else 'changed'}"
    assert bool(said) == inert, said
    assert all(f"{name}={value}" in said[0] for name, value in change.items()) if inert else True
    assert len(base) > 3 * 10   # the student's, its EMA's and the critic's tensors


@pytest.mark.parametrize("kw, refused", [
    (dict(), "the causal student rolls out chunk by chunk"),
    (dict(student_kind="bidirectional", teacher_kind="teacher_forcing"), "teacher_kind=teacher_forcing scores"),
    (dict(student_kind="bidirectional"), None),   # auto: the teacher file decides, at the run's start
    (dict(student_kind="bidirectional", teacher_kind="bidirectional"), None),
    (dict(student_kind="bidirectional", teacher="exact"), None),   # auto: the exact teacher scores whole
])
@pytest.mark.parametrize("make", [get_preset, lambda preset, **kw: get_ode_init_preset("toy-ode-init", **kw)])
def test_clips_must_be_whole_chunks_exactly_where_chunks_are_read(make, kw, refused):
    window = dict(local_attn_frames=2, sink_frames=1) if make is get_preset else {}   # distillation: a cache window
    if refused is None:   # nor is the cache window, smaller than sink + chunk, tied to the unread chunk size
        assert make("toy-dmd", num_frames=7, chunk_frames=3, **window, **kw).num_frames == 7
        return
    with pytest.raises(ValueError, match=r"num_frames=7 is not a multiple of chunk_frames=3, and ") as e:
        make("toy-dmd", num_frames=7, chunk_frames=3, **kw)
    assert refused in str(e.value) and "expected whole chunks: num_frames=6 or 9, or a chunk_frames" in str(e.value)
    if window and kw.get("student_kind", "causal") == "causal":
        with pytest.raises(ValueError, match="local_attn_frames=2 is less than sink_frames=1"):
            make("toy-dmd", **window, **kw)


@pytest.mark.parametrize("ode", [False, True])
def test_a_teacher_file_that_scores_by_chunks_refuses_a_partial_chunk_at_the_runs_start(teacher_path, tmp_path, ode):
    """teacher_kind=auto: the file's teacher_mode=teacher_forcing, read when the run starts, ties the clip to whole
    chunks (a bidirectional student, 7 frames)."""
    cfg = tiny("toy-ode-init" if ode else "toy-bidir-dmd", teacher_path, student_kind="bidirectional", num_frames=7)
    with pytest.raises(ValueError, match=r"num_frames=7 .* the teacher \('.*\) scores chunk by chunk \(its file "
                                         r"records teacher_mode=teacher_forcing\); expected whole chunks: num_frames=6 or 9"):
        (run_ode_init if ode else run_distillation)(cfg, str(tmp_path), quiet=True, world=TOY)


def test_an_unread_chunk_size_leaves_a_bidirectional_ode_initialisation_bit_identical(teacher_path, tmp_path):
    """Two clips per step, so a level drawn per chunk would differ between chunk sizes (it used to)."""
    from comfyui_salt.training.ode_init import log as ode_log
    runs, said = {}, []
    handler = __import__("logging").Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    ode_log.addHandler(handler)
    try:
        for n in (3, 4):
            cfg = tiny("toy-ode-init", teacher_path, student_kind="bidirectional", teacher_kind="bidirectional",
                       chunk_frames=n, batch_size=2, gen_steps=2)
            runs[n] = run_ode_init(cfg, str(tmp_path / str(n)), quiet=True, world=TOY).state_dict()
    finally:
        ode_log.removeHandler(handler)
    assert all(torch.equal(runs[3][k], runs[4][k]) for k in runs[3])
    assert any("chunk_frames=4: no effect in this run" in s for s in said), said
    # and in one folder, resumed with the other (unread) chunk size: not a change of the pairs either
    cfg = tiny("toy-ode-init", teacher_path, student_kind="bidirectional", teacher_kind="bidirectional",
               chunk_frames=4, batch_size=2, gen_steps=3)
    run_ode_init(cfg, str(tmp_path / "3"), quiet=True, world=TOY)


def test_a_bidirectional_student_trains_on_clips_of_any_length(tmp_path):
    """7 frames, chunk_frames 3, scored whole: the ODE initialisation's regression (one level per clip) and the
    distillation run; the regression is the hand-made MSE at the drawn level."""
    from comfyui_salt.salt_core.schedules import sigma_to_t
    from comfyui_salt.training.ode_init import ode_regression_loss
    student = build_model("toy", seed=0)
    B, K, F = 2, 3, 7
    gen = torch.Generator().manual_seed(0)
    pairs = {"states": torch.randn(B, K, 3, F, 8, 8, generator=gen), "x0": torch.randn(B, 3, F, 8, 8, generator=gen),
             "context": torch.randn(B, 4, student.cfg.text_dim, generator=gen)}
    grid, levels = [1.0, 0.8, 0.5], torch.tensor([[2, 0, 1], [1, 2, 0]])   # one column per started chunk
    loss = ode_regression_loss(student, "bidirectional", pairs, torch.arange(B), levels, grid, 3)
    x_t = torch.stack([pairs["states"][0, 2], pairs["states"][1, 1]])
    sigma = torch.tensor([0.5, 0.8], dtype=torch.float64)
    with torch.no_grad():
        v = student(x_t, sigma_to_t(sigma), pairs["context"])
        want = (x_t - sigma.view(B, 1, 1, 1, 1) * v - pairs["x0"]).pow(2).mean()
    assert torch.allclose(loss.detach(), want.float(), rtol=1e-5), (loss, want)
    cfg = dict(student_kind="bidirectional", teacher_kind="bidirectional", num_frames=7, gen_steps=1, batch_size=1,
               threads=1, checkpoint_every=1, ode_pairs=2, ode_teacher_steps=4)
    run_ode_init(get_ode_init_preset("toy-ode-init", **cfg), str(tmp_path / "ode"), quiet=True, world=TOY)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("ode_")}
    run_distillation(get_preset("toy-bidir-dmd", eval_every=0, **cfg), str(tmp_path / "dmd"), quiet=True, world=TOY)


def test_a_memory_refusal_offers_a_shorter_cache_window_only_to_a_causal_student():
    from comfyui_salt.training.validate import window_fix
    long_window = dict(local_attn_frames=15, num_frames=12)
    assert "local_attn_frames to at most num_frames=12" in window_fix(get_preset("toy-dmd", **long_window))
    assert window_fix(get_preset("toy-bidir-dmd", **long_window)) == ""


def test_an_unread_setting_is_named_once_with_its_default():
    from comfyui_salt.training.validate import inactive_terms
    said = inactive_terms(get_preset("toy-bidir-dmd", align_coupling="independent", sc_symmetric=True))
    assert len(said) == 2 and sum("align_coupling=independent" in s for s in said) == 1, said
    assert "(sc_symmetric=False)" in said[0] and "(align_coupling=noise_aligned)" in said[1], said
    assert "student_kind=causal" in said[1] and "and align_weight > 0" in said[1], said   # every need it lacks
    assert inactive_terms(get_preset("toy-dmd", teacher_offload=True), launched=True) == []


def test_interrupted_distillation_resumes_bit_identically(teacher_path, tmp_path):
    cfg = tiny("toy-salt", teacher_path, step_choices=(8, 4, 2), gen_steps=4, critic_ratio=2)
    run_distillation(cfg, str(tmp_path / "a"), max_gen_steps=2, quiet=True, world=TOY)
    resumed = run_distillation(cfg, str(tmp_path / "a"), quiet=True, world=TOY)
    straight = run_distillation(cfg, str(tmp_path / "b"), quiet=True, world=TOY)
    for (k, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_cancel_between_micro_batches_throws_the_iteration_away_and_resumes_bit_identically(teacher_path,
                                                                                              tmp_path):
    """grad_accum 3, critic_ratio 2: the hook runs before each iteration and before micro-batches 2 and 3 of its
    first update, not in the critic's update of a generator iteration (the generator has stepped: half an
    iteration cannot be saved). Raised in iteration 2's generator update, it leaves the checkpoint at generator
    step 1 before iteration 2, and the resumed run's student is the uncancelled run's, bit for bit."""
    cfg = tiny("toy-salt", teacher_path, step_choices=(8, 4, 2), gen_steps=2, critic_ratio=2, grad_accum=3,
               checkpoint_every=1, eval_every=0)
    calls = []
    straight = run_distillation(cfg, str(tmp_path / "b"), quiet=True, world=TOY, interrupt=lambda: calls.append(1))
    assert len(calls) == 3 * 3, calls             # iterations 0 (generator), 1 (critic), 2 (generator)

    def cancel_in_iteration_2():
        calls.append(1)
        if len(calls) == 8:                       # 7: before iteration 2; 8: before its generator's micro-batch 2
            raise KeyboardInterrupt("cancel")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run_distillation(cfg, str(tmp_path / "a"), quiet=True, world=TOY, interrupt=cancel_in_iteration_2)
    state = torch.load(tmp_path / "a" / "checkpoints" / "step_00000001" / "state.pt", weights_only=True)
    assert (state["gen_step"], state["iteration"]) == (1, 2)
    assert not (tmp_path / "a" / "checkpoints" / "step_00000002").exists()
    resumed = run_distillation(cfg, str(tmp_path / "a"), quiet=True, world=TOY)
    for (k, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("preset", ["toy-ode-init", "toy-dmd"])
def test_an_explicit_device_overrides_the_launchers_pick(preset, teacher_path, tmp_path, monkeypatch):
    # process_info picks CUDA whenever it is present; ComfyUI started with --cpu passes device="cpu".
    import comfyui_salt.training.distill as distill_job
    import comfyui_salt.training.ode_init as ode_job
    from comfyui_salt.training.distributed import ProcessInfo
    job, run = (ode_job, run_ode_init) if preset in ODE_INIT_PRESETS else (distill_job, run_distillation)
    monkeypatch.setattr(job, "process_info", lambda: ProcessInfo(device=torch.device("meta")))
    model = run(tiny(preset, teacher_path, gen_steps=1), str(tmp_path), quiet=True, device="cpu", world=TOY)
    assert model.patch_embedding.weight.device.type == "cpu"
    with pytest.raises((NotImplementedError, RuntimeError), match="meta"):   # the pick is used without a device
        run(tiny(preset, teacher_path, gen_steps=1), str(tmp_path / "picked"), quiet=True, world=TOY)


def test_unknown_keys_and_presets_are_rejected():
    with pytest.raises(ValueError, match=r"DistillConfig: unknown keys \['learning_rate'\].*known keys"):
        get_preset("toy-dmd", learning_rate=1.0)
    with pytest.raises(KeyError, match="toy-salt"):
        get_preset("toy-nope")
    with pytest.raises(ValueError, match="unknown keys"):
        DistillConfig.from_dict({"bogus": 1})


def test_student_defect_and_drift_measures_run_for_both_student_kinds(teacher_path):
    from comfyui_salt.toy.text import ToyTextEncoder
    from comfyui_salt.toy.evaluate import drift_slopes
    from comfyui_salt.training.distill_eval import student_defect
    model = build_model("toy", seed=1).eval()
    caps = ["a red disc moving left on a dark background", "a blue bar moving up on a light background"]
    ctx = ToyTextEncoder().encode(caps)
    for kind in ("causal", "bidirectional"):
        cfg = tiny("toy-dmd", teacher_path, student_kind=kind)
        d = student_defect(model, cfg, ctx, grid_steps=4)
        assert 0 < d < 10
    slopes = drift_slopes(model, tiny("toy-dmd", teacher_path), caps, ctx, nfe=2, length_factor=2)
    assert len(slopes["sharpness_error"][0]) == 24 and isinstance(slopes["sharpness_error"][1], float)


def test_a_toy_world_run_without_a_world_says_how_to_pass_one(tmp_path, teacher_path):
    """training imports no world: toy-world runs borrow prompts (and the toy teacher) from the front door's world."""
    with pytest.raises(ValueError, match=r"world=None; pass world=comfyui_salt\.toy\.jobs\.distill_world\(\)"):
        run_distillation(tiny("toy-dmd", teacher_path), str(tmp_path / "run"), quiet=True)
    assert not (tmp_path / "run" / "checkpoints").exists()


def _cli(out, teacher_path, gen_steps=8):
    import sys
    return [sys.executable, "-m", "comfyui_salt", "distill", "--preset", "toy-salt", "--out", str(out),
            "--teacher", teacher_path, "--batch-size", "2", "--gen-steps", str(gen_steps), "--critic-ratio", "2",
            "--eval-every", "0", "--threads", "1", "--checkpoint-every", "1", "--ema-start-iter", "1",
            "--align-start-iter", "0"]


def _run_until_checkpoint(cmd, out, step):
    """Start `cmd`; return the process once checkpoint `step` is complete (asserting it is still running)."""
    import subprocess
    import time
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = out / "checkpoints" / f"step_{step:08d}" / "COMPLETE"
    deadline = time.time() + 300
    while not done.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted; raise gen_steps"
    return proc


@pytest.fixture(scope="module")
def straight_cli_run(teacher_path, tmp_path_factory):
    import subprocess
    out = tmp_path_factory.mktemp("straight")
    subprocess.run(_cli(out, teacher_path), check=True, capture_output=True)
    return out


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_the_cli_job_killed_or_stopped_and_rerun_ends_bit_identical(how, teacher_path, straight_cli_run, tmp_path):
    import signal
    import subprocess
    from safetensors.torch import load_file
    straight, cut = straight_cli_run, tmp_path / "cut"
    proc = _run_until_checkpoint(_cli(cut, teacher_path), cut, 2)
    proc.send_signal(getattr(signal, how))
    rc = proc.wait(timeout=120)
    err = proc.stderr.read()
    if how == "SIGTERM":   # finishes the iteration, saves, exits 130 with a message
        assert rc == 130 and "rerun the same command to resume" in err, (rc, err[-2000:])
    else:
        assert rc == -signal.SIGKILL
    assert not (cut / "export").exists()
    subprocess.run(_cli(cut, teacher_path), check=True, capture_output=True)
    a = load_file(str(straight / "export" / "student.safetensors"))
    b = load_file(str(cut / "export" / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_teacher_files_mode_is_read_whatever_the_case_of_its_extension(teacher_path, tmp_path):
    import shutil
    from comfyui_salt.training.distill_models import resolve_teacher_kind
    upper = tmp_path / "T.SAFETENSORS"
    shutil.copy(teacher_path, upper)
    for path in (teacher_path, str(upper)):   # the same bytes: the same mode (upper case read as bidirectional)
        assert resolve_teacher_kind(get_preset("toy-dmd", teacher=path)) == "teacher_forcing"
