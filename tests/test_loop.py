"""The one training loop (training/loop.py) and run folders (training/runs.py): resume equals uninterrupted,
interrupts and non-finite losses keep the last good state, every job refuses changed settings on resume."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from comfyui_salt.training.optim import EMA, step_generators
from comfyui_salt.training.runs import CheckpointManager, RunFolder
from comfyui_salt.training.loop import RegressionJob, TrainingLoop, stop_step


def linear_job(poison_at: int = None):
    """A RegressionJob fitting y = x·w on batches drawn from the step seed; its loss is NaN at `poison_at`."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    w = torch.tensor([[1.0], [-2.0], [0.5]])

    def loss_fn(step):
        gen, _ = step_generators(0, 0, step)
        x = torch.randn(8, 3, generator=gen)
        loss = (model(x) - x @ w).pow(2).mean()
        return loss * float("nan") if step == poison_at else loss
    return RegressionJob(model, loss_fn, name="model", loss_name="loss", lr=0.1, betas=(0.9, 0.99), weight_decay=0.0,
                         warmup=2, total=6, min_lr_ratio=0.1, grad_clip=1.0, ema_decay=0.5)


def train(folder, stop, job=None, **kw):
    job = job or linear_job()
    loop = TrainingLoop(RunFolder(str(folder)), "test", quiet=True)
    loop.resume(job, ["model", "ema"])
    loop.run(job, stop, checkpoint_every=kw.pop("checkpoint_every", 100), log_every=1, **kw)
    return job


def assert_same_state(a, b):
    ta, sa = a.state()
    tb, sb = b.state()
    for name in ta:
        for k in ta[name]:
            assert torch.equal(ta[name][k], tb[name][k]), (name, k)
    assert sa["step"] == sb["step"]


def test_a_run_stopped_by_its_callback_resumes_to_the_uninterrupted_result(tmp_path):
    straight = train(tmp_path / "straight", 6)

    def cancel_at_3(d):
        if d["gen_step"] == 3:
            raise KeyboardInterrupt("cancel")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", 6, callback=cancel_at_3)
    assert CheckpointManager(str(tmp_path / "cut" / "checkpoints")).latest()[0] == 3   # saved at the boundary
    assert_same_state(train(tmp_path / "cut", 6), straight)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_max_steps_and_max_seconds_stop_with_a_checkpoint_and_keep_the_schedule(tmp_path):
    assert stop_step(6, None) == 6 and stop_step(6, 2) == 2 and stop_step(6, 9) == 6
    job = train(tmp_path / "a", 6, max_seconds=0)          # out of time after the first step
    assert job.step == 1 and CheckpointManager(str(tmp_path / "a" / "checkpoints")).latest()[0] == 1
    train(tmp_path / "a", stop_step(6, 4))
    assert_same_state(train(tmp_path / "a", 6), train(tmp_path / "b", 6))


def test_a_non_finite_loss_saves_the_last_good_state_and_names_the_fix(tmp_path):
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 4; the last good state is saved in .*"
                                                 r"checkpoints; lower the lr"):
        train(tmp_path / "nan", 6, job=linear_job(poison_at=4), nonfinite_hint="lower the lr")
    assert CheckpointManager(str(tmp_path / "nan" / "checkpoints")).latest()[0] == 4
    assert_same_state(train(tmp_path / "nan", 4), train(tmp_path / "ok", 4))


def test_the_ema_is_the_lerp_recursion_from_the_initial_weights():
    model = torch.nn.Linear(4, 2)
    ema = EMA(model, 0.75)
    expected = {k: p.detach().clone() for k, p in model.named_parameters()}
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        ema.update(model)
        for k, p in model.named_parameters():
            expected[k] = 0.75 * expected[k] + 0.25 * p.detach()
    for k, v in ema.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    fresh = EMA(torch.nn.Linear(4, 2), 0.75)
    fresh.load_state_dict({k: v.clone() for k, v in ema.state_dict().items()})
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in ema.state_dict().items())
    with pytest.raises(KeyError, match="missing"):
        fresh.load_state_dict({})


# -- every job refuses changed settings on resume ---------------------------------------------------------------
def test_the_ema_equals_torchs_averaged_model_with_its_ema_update_bit_for_bit():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    ours, theirs = EMA(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    theirs.update_parameters(model)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update(model)
        theirs.update_parameters(model)
    expected = dict(theirs.module.named_parameters())
    assert all(torch.equal(v, expected[k]) for k, v in ours.state_dict().items())


def test_the_teacher_refuses_to_resume_with_other_settings_unless_told_and_never_rewrites_config_json(tmp_path):
    from comfyui_salt.toy.jobs import teacher_world
    from comfyui_salt.training.teacher import TeacherConfig, train_teacher
    cfg = dict(batch_size=2, threads=1, checkpoint_every=1, total_steps=3, log_every=1, eval_every=0)
    run = tmp_path / "run"
    world = teacher_world(TeacherConfig(**cfg))
    train_teacher(TeacherConfig(**cfg), str(run), max_steps=1, quiet=True, world=world)
    stored = (run / "config.json").read_text()
    with pytest.raises(ValueError) as e:
        train_teacher(TeacherConfig(**cfg, lr=2e-3), str(run), max_steps=2, quiet=True, world=world)
    assert "lr: stored 0.001, requested 0.002" in str(e.value) and "another name" in str(e.value)
    assert "--allow-changed-settings" in str(e.value)
    assert (run / "config.json").read_text() == stored
    train_teacher(TeacherConfig(**cfg, eval_steps=2), str(run), max_steps=2, quiet=True, world=world)   # eval only: free
    train_teacher(TeacherConfig(**cfg, lr=2e-3), str(run), quiet=True, allow_changed_settings=True, world=world)
    assert json.loads((run / "config.json").read_text())["lr"] == 2e-3
    assert CheckpointManager(str(run / "checkpoints")).latest()[0] == 3


def test_the_teacher_cli_refuses_a_changed_setting_with_the_keys_and_the_flag(tmp_path):
    from comfyui_salt.toy.jobs import teacher_world
    from comfyui_salt.training.teacher import TeacherConfig, train_teacher
    run = tmp_path / "run"
    cfg = TeacherConfig(batch_size=2, threads=1, total_steps=2, eval_every=0)
    train_teacher(cfg, str(run), max_steps=1, quiet=True, world=teacher_world(cfg))
    stored = (run / "config.json").read_text()
    args = [sys.executable, "-m", "comfyui_salt", "teacher", "--out", str(run), "--batch-size", "2",
            "--threads", "1", "--total-steps", "2", "--eval-every", "0", "--seed", "3"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "seed: stored 0, requested 3" in proc.stderr, proc.stderr[-2000:]
    assert "--allow-changed-settings" in proc.stderr and "Traceback" not in proc.stderr
    assert (run / "config.json").read_text() == stored


# -- ODE init follows the config --------------------------------------------------------------------------------
def test_ode_init_takes_its_optimiser_ema_and_clip_from_the_config(tmp_path):
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.toy.jobs import distill_world
    from comfyui_salt.training.ode_init import run_ode_init
    from comfyui_salt.training.ode_init_config import get_ode_init_preset
    from comfyui_salt.weights.files import save_model
    teacher = tmp_path / "teacher.safetensors"
    save_model(build_model("toy", seed=0), teacher, extra_metadata={"teacher_mode": "teacher_forcing"})
    cfg = get_ode_init_preset("toy-ode-init", teacher=str(teacher), batch_size=2, gen_steps=2, ode_pairs=4,
                              ode_teacher_steps=4, threads=1, checkpoint_every=1, beta1=0.5, beta2=0.9,
                              weight_decay=0.03, grad_clip=0.25, ema_decay=0.0)
    model = run_ode_init(cfg, str(tmp_path / "run"), quiet=True, world=distill_world())
    ckpt = CheckpointManager(str(tmp_path / "run" / "checkpoints"))
    tensors, state = ckpt.load(ckpt.latest()[1], ["student", "ema"])
    group = state["optimizer"]["param_groups"][0]
    assert (group["betas"], group["weight_decay"]) == ((0.5, 0.9), 0.03)
    for k, v in tensors["student"].items():       # decay 0: the average is the latest weights
        assert torch.equal(tensors["ema"][k], v), k
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "ode_loss" in r] == pytest.approx([cfg.lr_gen / 50, 2 * cfg.lr_gen / 50])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_milestone_checkpoints_are_kept_and_written_even_off_the_checkpoint_cadence(tmp_path):
    # checkpoint_every 2, milestones every 3: saves at 2, 3, 4, 6, 8, 9, 10; the pruning keeps the newest two
    # (10, 9) and the multiples of 3 (3, 6, 9), and drops 2, 4, 8; each milestone holds that step's weights
    straight = {}
    for stop in (3, 6):
        straight[stop] = train(tmp_path / f"to{stop}", stop, checkpoint_every=100)
    train(tmp_path / "run", 10, checkpoint_every=2, keep_every=3)
    ckpt = CheckpointManager(str(tmp_path / "run" / "checkpoints"))
    assert [s for s, _ in ckpt.complete()] == [10, 9, 6, 3]
    for stop in (3, 6):
        tensors, state = ckpt.load(dict(ckpt.complete())[stop], ["model"])
        assert state["step"] == stop
        want = straight[stop].state()[0]["model"]
        assert all(torch.equal(tensors["model"][k], want[k]) for k in want)
    train(tmp_path / "run", 12, checkpoint_every=2)              # resumed without milestones: the old ones stay
    assert [s for s, _ in ckpt.complete()] == [12, 10, 9, 6, 3]
    train(tmp_path / "plain", 10, checkpoint_every=2)
    assert [s for s, _ in CheckpointManager(str(tmp_path / "plain" / "checkpoints")).complete()] == [10, 8]


class TwoPhaseJob:
    """A job whose every other unit of work does not move the counter (as a distillation's critic-only iterations):
    `linear_job` steps on the odd units; the even ones add to a count that the checkpoint keeps."""

    def __init__(self):
        self.inner, self.units = linear_job(), 0

    @property
    def step(self):
        return self.inner.step

    def advance(self, interrupt=None):
        self.units += 1
        return self.inner.advance() if self.units % 2 == 0 else None

    def state(self):
        tensors, state = self.inner.state()
        return tensors, {**state, "units": self.units}

    def load(self, tensors, state):
        self.inner.load(tensors, state)
        self.units = state["units"]

    def restart_from(self, step):
        self.inner.restart_from(step)


def test_a_stop_between_counter_moves_keeps_the_milestone_and_a_stop_with_nothing_new_saves_nothing(tmp_path):
    """Stopped after a unit that did not move the counter, the job saves step N again, over step N's milestone:
    the milestone stays one (a run resumed with another keep_every dropped the marker, and a later prune the
    checkpoint). Stopped before any new work, nothing is written."""
    folder = tmp_path / "run"
    train(folder, 2, job=TwoPhaseJob(), checkpoint_every=1, keep_every=2)
    ckpt = CheckpointManager(str(folder / "checkpoints"))
    milestone = folder / "checkpoints" / "step_00000002"
    assert (milestone / CheckpointManager.MILESTONE).exists()
    before = (milestone / "state.pt").stat().st_mtime_ns

    def stop_now():
        raise KeyboardInterrupt("cancel")
    with pytest.raises(KeyboardInterrupt):                          # nothing new: nothing written
        train(folder, 6, job=TwoPhaseJob(), checkpoint_every=1, interrupt=stop_now)
    assert (milestone / "state.pt").stat().st_mtime_ns == before
    calls = []

    def stop_after_one_unit():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("cancel")
    with pytest.raises(KeyboardInterrupt):                          # one unit that does not move the counter
        train(folder, 6, job=TwoPhaseJob(), checkpoint_every=1, interrupt=stop_after_one_unit)
    assert torch.load(milestone / "state.pt", weights_only=True)["units"] == 5
    assert (milestone / CheckpointManager.MILESTONE).exists()
    train(folder, 6, job=TwoPhaseJob(), checkpoint_every=1)        # pruning keeps it
    assert [s for s, _ in ckpt.complete()] == [6, 5, 2]


def test_a_checkpoint_saved_again_at_its_step_survives_a_save_cut_between_its_renames(tmp_path, monkeypatch):
    """A step saved again (after critic-only iterations) replaces its folder: a save killed after the old one was
    moved aside and before the new one was in place leaves `step_N.old`, which resumes (it used to be deleted first:
    a kill then left only the older checkpoints, and a milestone was lost for good). The next save of that step
    keeps the milestone and leaves one folder."""
    from comfyui_salt.training import runs
    folder = tmp_path / "ckpts"
    ckpt = CheckpointManager(str(folder), keep_every=2)
    weights = {"model": {"w": torch.ones(2)}}
    ckpt.save(1, weights, {"step": 1})
    ckpt.save(2, weights, {"step": 2, "units": 4})
    real, renames = os.replace, []

    def killed_at_second_rename(src, dst):    # of a folder (each file is written to a temporary name and renamed)
        if os.path.basename(dst).startswith("step_"):
            renames.append(dst)
            if len(renames) == 2:
                raise KeyboardInterrupt("killed")
        real(src, dst)
    monkeypatch.setattr(runs.os, "replace", killed_at_second_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(2, {"model": {"w": torch.zeros(2)}}, {"step": 2, "units": 5})
    monkeypatch.setattr(runs.os, "replace", real)
    again = CheckpointManager(str(folder))
    assert [(s, os.path.basename(p)) for s, p in again.complete()] == [(2, "step_00000002.old"), (1, "step_00000001")]
    path, tensors, state = again.load_latest(["model"])
    assert state["units"] == 4 and torch.equal(tensors["model"]["w"], torch.ones(2))
    again.save(2, weights, {"step": 2, "units": 5})        # resumed without keep_every: still a milestone
    assert sorted(os.listdir(folder)) == ["step_00000001", "step_00000002"]
    assert (folder / "step_00000002" / CheckpointManager.MILESTONE).exists()
    assert torch.load(folder / "step_00000002" / "state.pt", weights_only=True)["units"] == 5


def test_a_step_that_does_not_read_falls_back_to_the_step_n_old_beside_it_before_an_older_step(tmp_path, caplog):
    """A save cut after its second rename leaves `step_N` and the `step_N.old` it replaced, both complete: when
    `step_N` does not read, the resume takes `step_N.old` (same step), not step N-1, and moves the damaged one to
    `step_N.unreadable`, or `.unreadable2` where one of that step is kept there from before."""
    folder = tmp_path / "ckpts"
    ckpt = CheckpointManager(str(folder))
    ckpt.save(1, {"model": {"w": torch.zeros(2)}}, {"step": 1})
    ckpt.save(2, {"model": {"w": torch.ones(2)}}, {"step": 2, "units": 4})
    shutil.copytree(folder / "step_00000002", tmp_path / "replaced")
    ckpt.save(2, {"model": {"w": torch.full((2,), 2.0)}}, {"step": 2, "units": 5})   # saved again at its step
    shutil.copytree(tmp_path / "replaced", folder / "step_00000002.old")      # as a save cut before deleting it
    (folder / "step_00000002" / "model.safetensors").write_bytes(b"\x00" * 40)  # damaged after its save
    (folder / "step_00000002.unreadable").mkdir()                                # an earlier damaged one, kept
    (folder / "step_00000002.unreadable" / "note").write_text("kept")
    assert [os.path.basename(p) for _, p in ckpt.complete()] == ["step_00000002", "step_00000001"]
    with caplog.at_level(logging.WARNING, logger="salt.training"):
        path, tensors, state = CheckpointManager(str(folder)).load_latest(["model"])
    assert os.path.basename(path) == "step_00000002.old" and state["units"] == 4
    assert (folder / "step_00000002.unreadable" / "note").read_text() == "kept"
    assert (folder / "step_00000002.unreadable2" / "model.safetensors").exists()
    assert "step_00000002.unreadable2" in caplog.text


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="POSIX file modes and umask; Linux's /proc")
def test_every_checkpoint_file_has_the_mode_any_new_file_gets_and_is_synced_before_complete(tmp_path, monkeypatch):
    """safetensors writes its files owner-only (0600) whatever the umask; a checkpoint's files get 0666 less the
    umask, as state.pt and a plain open() do, and each is fsynced before COMPLETE is written."""
    import os
    from comfyui_salt.weights import files
    synced, real = [], os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    old = os.umask(0o022)
    try:
        train(tmp_path / "run", 2, checkpoint_every=2)
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    (step,) = [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step_")]
    written = sorted(p.name for p in step.iterdir())
    assert written == ["COMPLETE", "ema.safetensors", "model.safetensors", "state.pt"]
    assert {p.name: os.stat(p).st_mode & 0o777 for p in step.iterdir()} == dict.fromkeys(written, 0o644)
    assert sorted(os.path.basename(p).split(".")[1] for p in synced) == ["ema", "model", "state"]


RUN = {"TORCHELASTIC_RUN_ID": "r"}


@pytest.mark.parametrize("env, save_s, warned, rank, settable", [
    ({}, 20.0, False, 0, True),                                                # not launched by torchrun
    (RUN, 14.0, False, 0, True),                                               # within half the default 30 s
    (RUN, 16.0, True, 0, True),
    (RUN, 16.0, False, 1, True),                                               # rank 0 alone says it
    ({**RUN, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "100"}, 40.0, False, 0, True),
    ({**RUN, "PET_SHUTDOWN_TIMEOUT": "60", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "600"}, 40.0, True, 0, True),
    ({**RUN, "PET_SHUTDOWN_TIMEOUT": "600"}, 40.0, True, 0, False),            # a torchrun without the setting
])
def test_a_checkpoint_slower_than_half_of_torchruns_stop_grace_is_reported_once_with_the_launch_fix(
        tmp_path, monkeypatch, caplog, env, save_s, warned, rank, settable):
    """torchrun kills its workers --shutdown-timeout seconds (default 30) after forwarding Ctrl-C; its environment
    forms are all a worker sees (PET_SHUTDOWN_TIMEOUT wins, as torchrun reads them); a torch whose torchrun has no
    such setting kills after 30 s whatever they say."""
    import comfyui_salt.training.distributed as distributed
    import comfyui_salt.training.loop as loop_module
    assert distributed.grace_is_settable()                                     # the pinned torch has it
    monkeypatch.setattr(distributed, "grace_is_settable", lambda: settable)
    monkeypatch.setattr(loop_module, "grace_is_settable", lambda: settable)
    for name in ("TORCHELASTIC_RUN_ID", "PET_SHUTDOWN_TIMEOUT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import itertools
    import time
    from types import SimpleNamespace
    ticks = itertools.count()   # the loop's clock alone, read twice per save (on every rank): each save takes save_s
    monkeypatch.setattr(loop_module, "time", SimpleNamespace(time=time.time, monotonic=lambda: next(ticks) * save_s))
    job = linear_job()
    loop = TrainingLoop(RunFolder(str(tmp_path / "run"), rank=rank), "test", quiet=True)
    with caplog.at_level("WARNING", logger="salt.training"):
        loop.run(job, 6, checkpoint_every=2, log_every=1)
    said = [r.getMessage() for r in caplog.records if "torchrun kills" in r.getMessage()]
    assert len(said) == (1 if warned else 0), said
    if warned:
        advice = max(60, 10 * -(-4 * save_s // 10))
        by_parent = f"pkill -TERM -P {os.getppid()}, the children of this node's torchrun"   # never -f: torchrun
        fix = f"PET_SHUTDOWN_TIMEOUT={advice:.0f} torchrun" if settable else by_parent
        assert f"took {save_s:.0f} s" in said[0] and "after a stop signal" in said[0] and fix in said[0], said
        assert ("kills its workers 30 s" in said[0]) == (not settable or "PET_SHUTDOWN_TIMEOUT" not in env), said
