"""Bad input, class 4: resume never strands or corrupts a run.

Damaged checkpoints (truncated, emptied, garbage), a folder resumed with other settings, two jobs on
one folder, stale step folders, a Cancel during an evaluation and a failed start, each through the
Python API (the node and the CLI share it: training/runs.py), plus one CLI case.
"""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from comfyui_salt.salt_core.model import build_model
from comfyui_salt.training.runs import CheckpointManager, RunError
from comfyui_salt.training.distill import run_distillation
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.weights.files import save_model
from comfyui_salt.training.runs import RunLock
from comfyui_salt.toy.jobs import distill_world

TOY = distill_world()   # what toy-world runs borrow: the shipped teacher, toy prompts, oracle evaluation


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "toy_teacher.safetensors"
    save_model(build_model("toy", seed=0), path)
    return str(path)


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(teacher_path, **kw):
    base = dict(teacher=teacher_path, batch_size=1, gen_steps=2, critic_ratio=1, eval_every=0, threads=1,
                checkpoint_every=1, ema_start_iter=1)
    return get_preset("toy-dmd", **{**base, **kw})


def steps_in(folder):
    return sorted(p.name for p in (folder / "checkpoints").iterdir())


# -- damaged checkpoints ---------------------------------------------------------------------------------
def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


def empty(path):
    path.write_bytes(b"")


def garbage(path):
    path.write_bytes(b"\x00" * 64 + os.urandom(200))


@pytest.mark.parametrize("damage, file", [(truncate, "student.safetensors"), (truncate, "critic.safetensors"),
                                          (truncate, "state.pt"), (empty, "student.safetensors"),
                                          (garbage, "state.pt")], ids=lambda v: getattr(v, "__name__", v))
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_intact_one_and_says_so(teacher_path, tmp_path, caplog,
                                                                                   damage, file):
    cfg = tiny(teacher_path)
    run = tmp_path / "run"
    run_distillation(cfg, str(run), quiet=True, world=TOY)
    assert steps_in(run) == ["step_00000001", "step_00000002"]
    damage(run / "checkpoints" / "step_00000002" / file)
    with caplog.at_level(logging.WARNING, logger="salt.training"):
        run_distillation(tiny(teacher_path, gen_steps=3), str(run), quiet=True, world=TOY)
    text = caplog.text
    assert "step_00000002" in text and "falling back" in text and "step_00000001" in text, text
    assert (run / "checkpoints" / "step_00000002.unreadable").is_dir()
    assert (run / "checkpoints" / "step_00000003" / "COMPLETE").exists()


def test_when_no_checkpoint_reads_the_error_names_every_file_and_the_fix(teacher_path, tmp_path):
    run = tmp_path / "run"
    run_distillation(tiny(teacher_path), str(run), quiet=True, world=TOY)
    for step in ("step_00000001", "step_00000002"):
        truncate(run / "checkpoints" / step / "student.safetensors")
    with pytest.raises(RunError, match=r"step_00000002.*step_00000001.*Move the damaged step folders away"):
        run_distillation(tiny(teacher_path, gen_steps=3), str(run), quiet=True, world=TOY)


def test_a_stale_incomplete_step_folder_does_not_make_pruning_keep_a_single_checkpoint(tmp_path):
    ckpt = CheckpointManager(str(tmp_path / "checkpoints"), keep=2)
    (tmp_path / "checkpoints" / "step_00000099").mkdir()          # no COMPLETE: a stale, never-finished folder
    (tmp_path / "checkpoints" / "step_00000099" / "student.safetensors").write_bytes(b"partial")
    for step in (1, 2, 3):
        ckpt.save(step, {"m": {"w": torch.full((2,), float(step))}}, {"step": step})
    assert steps_in(tmp_path) == ["step_00000002", "step_00000003"]
    assert ckpt.latest()[0] == 3


# -- settings, locks, failed starts -------------------------------------------------------------------------
@pytest.mark.parametrize("change", [dict(lr_gen=1e-3), dict(seed=5), dict(guidance_scale=2.0),
                                    dict(step_choices=(2,)), dict(batch_size=2)])
def test_resuming_with_other_settings_is_refused_listing_the_keys_and_the_fixes(teacher_path, tmp_path, change):
    run = tmp_path / "run"
    run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)
    stored = (run / "config.json").read_text()
    with pytest.raises(ValueError) as e:
        run_distillation(tiny(teacher_path, gen_steps=2, **change), str(run), quiet=True, world=TOY)
    for key in change:
        assert f"{key}: stored" in str(e.value), e.value
    assert "another name" in str(e.value) and "--allow-changed-settings" in str(e.value)
    assert (run / "config.json").read_text() == stored, "config.json was rewritten by a refused resume"


@pytest.mark.parametrize("first, then, refused", [
    (dict(sc_symmetric=True), {}, False),   # nothing reads it (sc_weight 0): following the run's warning resumes
    (dict(prompts_file="prompts.txt", align_delta=0.5), {}, False),   # a toy world's own captions; no alignment
    (dict(step_choices=(8,), sc_weight=0.2, sc_symmetric=True), dict(step_choices=(8,), sc_weight=0.2), True),
    (dict(step_choices=(2,), align_weight=0.1, align_delta=0.5), dict(step_choices=(2,), align_weight=0.1), True),
    # unread on a CPU machine, but the run may go on on a GPU: a need of the machine's is compared whatever this one is
    (dict(autocast_bf16=True), {}, True)])
def test_a_setting_nothing_reads_may_change_on_resume_and_one_that_is_read_may_not(teacher_path, tmp_path, first,
                                                                                  then, refused):
    run = tmp_path / "run"
    run_distillation(tiny(teacher_path, gen_steps=1, **first), str(run), quiet=True, world=TOY)
    again = lambda: run_distillation(tiny(teacher_path, gen_steps=2, **then), str(run), quiet=True, world=TOY)
    if refused:
        changed = next(k for k in first if k not in then)
        with pytest.raises(ValueError, match=f"{changed}: stored"):
            again()
    else:
        again()
        assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["gen_step"] == 2


def test_resumable_fields_change_freely_and_an_explicit_override_continues(teacher_path, tmp_path):
    run = tmp_path / "run"
    run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)
    run_distillation(tiny(teacher_path, gen_steps=2, checkpoint_every=2, log_every=2), str(run), quiet=True, world=TOY)
    run_distillation(tiny(teacher_path, gen_steps=3, lr_gen=1e-4), str(run), quiet=True, allow_changed_settings=True,
                     world=TOY)
    assert json.loads((run / "config.json").read_text())["lr_gen"] == 1e-4


def test_a_second_job_on_a_locked_run_folder_is_refused_and_the_lock_is_released_after_a_run(teacher_path, tmp_path):
    run = tmp_path / "run"
    with RunLock(str(run)):
        with pytest.raises(RunError, match=r"is in use by pid \d+"):
            run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)
    run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)
    with RunLock(str(run)):   # released after the run
        pass


def test_a_lock_held_by_another_process_is_refused_and_dies_with_it(tmp_path):
    run = tmp_path / "run"
    code = ("import sys, time; from comfyui_salt.training.runs import RunLock\n"
            f"with RunLock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=f"pid {holder.pid}"):
            with RunLock(str(run)):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunLock(str(run)):   # the OS released it with the process: never a stale lock
        pass


@pytest.mark.skipif(not hasattr(__import__("os"), "O_NOFOLLOW"), reason="POSIX: no O_NOFOLLOW here")
@pytest.mark.parametrize("planted", [".lock", "metrics.jsonl"])
def test_a_run_never_writes_through_a_symbolic_link_planted_in_its_folder(teacher_path, tmp_path, planted):
    """A link at the lock or the metrics log (the lock was truncated and rewritten through it, the log appended to)
    points into someone's file: the run is refused naming the link, and that file keeps its bytes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("a user's notes\n")
    run = tmp_path / "run"
    run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)
    (run / planted).unlink()
    (run / planted).symlink_to(victim)                       # then resumed for one more step
    with pytest.raises(RunError, match=rf"{planted}' is a symbolic link.*remove the link"):
        run_distillation(tiny(teacher_path, gen_steps=2), str(run), quiet=True, world=TOY)
    assert victim.read_text() == "a user's notes\n"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX: FIFOs and O_NOFOLLOW")
def test_a_run_never_reads_through_a_link_nor_waits_on_a_fifo_planted_in_its_folder(tmp_path):
    """The metrics log read on resume (logged_eval_steps) and written (JsonlLog), the run id read at export:
    a FIFO there held the job forever (its open waits for a writer or a reader), a link to /dev/zero fed it without
    end, a link to another run's id made this run claim that run's students. Refused naming the file, or (the id)
    taken as none and a new one written in place of the link."""
    from comfyui_salt.training.publish import run_identity
    from comfyui_salt.training.runs import JsonlLog, logged_eval_steps
    log = tmp_path / "metrics.jsonl"
    os.mkfifo(log)
    with pytest.raises(RunError, match="metrics.jsonl' is not a plain file.*remove it"):
        logged_eval_steps(str(log))
    with pytest.raises(RunError, match="metrics.jsonl' is not a plain file.*remove it"):
        JsonlLog(str(log)).write(gen_step=1)
    log.unlink()
    log.symlink_to("/dev/zero")
    with pytest.raises(RunError, match="metrics.jsonl' is a symbolic link; a run reads its own files"):
        logged_eval_steps(str(log))
    other = tmp_path / "other_run_id"
    other.write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "run_id").symlink_to(other)
    assert run_identity(str(tmp_path)) == ""
    made = run_identity(str(tmp_path), create=True)
    assert made != "0123456789abcdef0123456789abcdef" and not (tmp_path / "run_id").is_symlink()
    assert other.read_text() == "0123456789abcdef0123456789abcdef\n" and run_identity(str(tmp_path)) == made


def test_a_run_id_that_does_not_read_is_an_error_never_an_id_made_anew(tmp_path, monkeypatch):
    """Only a missing run id (or a link, a FIFO) is "none": a run id that exists but does not read (permissions,
    another program holding it on Windows) was taken as none and a new id written over it at export, and every
    student the run had published became a stranger's."""
    from comfyui_salt.training import publish
    made = publish.run_identity(str(tmp_path), create=True)
    real = publish.os.open

    def held(path, *a, **k):
        if os.path.basename(path) == publish.RUN_ID_FILE:
            raise PermissionError(13, "Permission denied", path)
        return real(path, *a, **k)
    monkeypatch.setattr(publish.os, "open", held)
    with pytest.raises(PermissionError):
        publish.run_identity(str(tmp_path), create=True)
    monkeypatch.setattr(publish.os, "open", real)
    assert publish.run_identity(str(tmp_path)) == made


def test_a_dangling_link_at_the_published_name_is_never_taken_for_the_runs_own(tmp_path):
    """A link at the name whose target is gone (a model on a drive not mounted) and a run with no claim: both
    identities read "" and compared equal, so the run replaced the user's link."""
    from comfyui_salt.training.publish import check_publish_dest, run_identity
    folder, dest = tmp_path / "run", tmp_path / "salt" / "name.safetensors"
    folder.mkdir()
    run_identity(str(folder), create=True)
    dest.parent.mkdir()
    dest.symlink_to(tmp_path / "unmounted" / "model.safetensors")
    with pytest.raises(ValueError, match="never replaced"):
        check_publish_dest(str(dest), str(folder), "name")
    assert dest.is_symlink()


def test_a_publish_cut_midway_leaves_the_previous_student_at_the_name(tmp_path, monkeypatch):
    """The published file was deleted, then linked or copied: a copy (another file system) cut by a full disk
    left a torn file there, no longer Salt's by its header, and the name refused for good. Now placed whole by a
    rename, or not at all."""
    import shutil
    from safetensors.torch import save_file
    from comfyui_salt.training import publish
    from comfyui_salt.weights.files import LAYOUT_META
    export, dest = tmp_path / "export.safetensors", tmp_path / "salt" / "name.safetensors"
    save_file({"w": torch.ones(4)}, str(export), {LAYOUT_META: "wan"})   # Salt's, as its metadata says
    publish.publish_student(str(export), str(dest))
    before = dest.read_bytes()
    save_file({"w": torch.zeros(4)}, str(export), {LAYOUT_META: "wan"})

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    def disk_full(src, dst):
        with open(dst, "wb") as f:
            f.write(b"\x08\x00")
        raise OSError(28, "No space left on device")
    real_copy = shutil.copyfile
    monkeypatch.setattr(publish.os, "link", no_link)
    monkeypatch.setattr(publish.shutil, "copyfile", disk_full)
    with pytest.raises(OSError, match="No space left"):
        publish.publish_student(str(export), str(dest))
    assert dest.read_bytes() == before and sorted(os.listdir(dest.parent)) == ["name.safetensors"]
    monkeypatch.setattr(publish.shutil, "copyfile", real_copy)   # a copy, whole this time
    publish.publish_student(str(export), str(dest))
    assert dest.read_bytes() == export.read_bytes()


def test_a_failed_start_never_blocks_the_run_name(teacher_path, tmp_path):
    bad = tmp_path / "bad_teacher.safetensors"
    bad.write_bytes(b"not a checkpoint")
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="bad_teacher.safetensors"):
        run_distillation(tiny(str(bad), gen_steps=1), str(run), quiet=True, world=TOY)
    run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)   # same folder, good teacher
    assert steps_in(run) == ["step_00000001"]


# -- Cancel during an evaluation ---------------------------------------------------------------------------------
def test_a_cancel_during_an_evaluation_is_made_up_on_resume(teacher_path, tmp_path):
    run = tmp_path / "run"
    cfg = tiny(teacher_path, gen_steps=2, eval_every=1, eval_clips=2, eval_nfe=(2,))

    def cancel_at_first_preview(d):
        if "preview" in d:
            raise KeyboardInterrupt("cancel during evaluation")
    with pytest.raises(KeyboardInterrupt):
        run_distillation(cfg, str(run), quiet=True, callback=cancel_at_first_preview, world=TOY)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in evals if "eval" in r]
    run_distillation(cfg, str(run), quiet=True, world=TOY)
    evals = [json.loads(line)["gen_step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "eval" in json.loads(line)]
    assert evals == [1, 2]
    assert (run / "preview_000001.gif").exists() and (run / "preview_000002.gif").exists()


# -- the CLI door -----------------------------------------------------------------------------------------------
def test_the_cli_refuses_to_resume_a_folder_with_other_settings_and_names_the_flag(teacher_path, tmp_path):
    run = tmp_path / "run"
    run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)
    args = [sys.executable, "-m", "comfyui_salt", "distill", "--preset", "toy-dmd", "--out", str(run),
            "--teacher", teacher_path, "--batch-size", "1", "--gen-steps", "1", "--critic-ratio", "1",
            "--eval-every", "0", "--threads", "1", "--checkpoint-every", "1", "--ema-start-iter", "1", "--lr-gen", "0.001"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "lr_gen: stored 2e-05, requested 0.001" in proc.stderr, proc.stderr[-2000:]
    assert "--allow-changed-settings" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("files", [{"config.json": '{"name": "my project"}'}, {"notes.txt": "mine"},
                                   {"config.json": "[]", "export/student.safetensors": "USER MODEL"},
                                   {"checkpoints/step_00000099/weights.bin": "mine"}])
def test_a_folder_holding_someone_elses_files_is_refused_before_anything_is_written(teacher_path, tmp_path, files):
    """A run writes config.json, checkpoints and export/ and prunes old checkpoints: a folder of other files (no Salt
    config.json) is refused, and every file keeps its bytes."""
    run = tmp_path / "theirs"
    for name, text in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    with pytest.raises(ValueError, match="holds files that are not a Salt run's .*give a new or empty folder"):
        run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == sorted(files)
    assert all((run / name).read_text() == text for name, text in files.items())


def test_an_empty_folder_and_one_of_salts_own_runs_are_used(teacher_path, tmp_path):
    """Empty, or holding only empty folders (an `export/` made by hand, a run whose first start failed before it
    wrote anything): nothing in it to overwrite."""
    run = tmp_path / "empty"
    (run / "export").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)
    run_distillation(tiny(teacher_path, gen_steps=2), str(run), quiet=True, world=TOY)      # its own: resumed
    assert json.loads((run / "config.json").read_text())["gen_steps"] == 2


@pytest.mark.parametrize("text, words", [("[]", "config.json holds a JSON list"),
                                         ('"x"', "config.json holds a JSON str"),
                                         ("[" * 100_000, "config.json is unreadable")])
def test_a_damaged_config_json_beside_checkpoints_is_named(teacher_path, tmp_path, text, words):
    run = tmp_path / "run"
    run_distillation(tiny(teacher_path, gen_steps=1), str(run), quiet=True, world=TOY)
    (run / "config.json").write_text(text)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"eval": {}, "gen_step": [1]}\n' + "[" * 100_000 + "\n")      # foreign lines are skipped
    with pytest.raises(ValueError, match=f"{words}.*restore the file or start a new run"):
        run_distillation(tiny(teacher_path, gen_steps=2), str(run), quiet=True, world=TOY)


def test_foreign_lines_in_metrics_jsonl_are_skipped_when_reading_the_evaluated_steps(tmp_path):
    from comfyui_salt.training.runs import logged_eval_steps
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"eval": {}, "gen_step": 2}\n{"eval": {}, "gen_step": [1]}\n' + "[" * 100_000 + "\n"
                    '"text"\n{"eval": {}, "gen_step": 4}\n')
    assert logged_eval_steps(str(path)) == {2, 4}


def test_an_unreadable_checkpoint_another_rank_moved_aside_first_does_not_stop_this_one(tmp_path, monkeypatch):
    """Every rank of a sharded run falls back on its own: the second to move `step_N` to `step_N.unreadable` found it
    gone and crashed with FileNotFoundError. Here the other rank's rename happens just before this one's."""
    from comfyui_salt.training import runs
    ckpt = CheckpointManager(str(tmp_path / "checkpoints"))
    for step in (1, 2):
        ckpt.save(step, {"student": {"w": torch.full((2,), float(step))}}, {"step": step})
    garbage(tmp_path / "checkpoints" / "step_00000002" / "state.pt")
    real = os.replace

    def other_rank_first(src, dst):
        real(src, dst)          # the other rank's rename
        real(src, dst)          # this rank's: the source is gone
    monkeypatch.setattr(runs.os, "replace", other_rank_first)
    path, tensors, state = ckpt.load_latest(["student"])
    assert path.endswith("step_00000001") and state["step"] == 1 and torch.equal(tensors["student"]["w"],
                                                                                 torch.ones(2))
    assert (tmp_path / "checkpoints" / "step_00000002.unreadable").is_dir()


@pytest.mark.parametrize("field", ["teacher", "student_init", "critic_init"])
def test_a_model_source_that_names_no_file_is_refused_before_the_run_folder_is_made(teacher_path, tmp_path, field):
    """The start was refused only when the models were built, inside the run folder: config.json, .lock and
    checkpoints/ were left behind for a typo'd path."""
    cfg = tiny(teacher_path, **{field: str(tmp_path / "typo.safetensors")})
    with pytest.raises(FileNotFoundError, match=rf"DistillConfig\.{field}='.*: no such file; pass a "
                                                rf"checkpoint file"):
        run_distillation(cfg, str(tmp_path / "run"), quiet=True, world=TOY)
    assert not (tmp_path / "run").exists()
    # a folder (a sharded release, the docs' old example) passed this check and failed once the models were built
    (tmp_path / "Wan2.1-T2V-14B").mkdir()
    cfg = tiny(teacher_path, **{field: str(tmp_path / "Wan2.1-T2V-14B")})
    with pytest.raises(IsADirectoryError, match=rf"DistillConfig\.{field}='.* is a folder; a model "
                                                rf"is read from one checkpoint file"):
        run_distillation(cfg, str(tmp_path / "run"), quiet=True, world=TOY)
    assert not (tmp_path / "run").exists()
    (tmp_path / "Wan2.1-T2V-14B" / "export").mkdir()     # a run folder: its exported student is named
    (tmp_path / "Wan2.1-T2V-14B" / "export" / "student.safetensors").write_bytes(b"x")
    with pytest.raises(IsADirectoryError, match=r"<that folder>/export/student\.safetensors \(the run's student\)"):
        run_distillation(cfg, str(tmp_path / "run"), quiet=True, world=TOY)


def test_a_resume_already_past_max_gen_steps_says_it_trains_nothing(teacher_path, tmp_path, caplog):
    """max_gen_steps is a step of the run, not a count of more steps: a rerun with one at or below where the run
    stands trained nothing and finished in silence."""
    cfg = tiny(teacher_path, gen_steps=4)
    run_distillation(cfg, str(tmp_path / "run"), max_gen_steps=2, quiet=True, world=TOY)
    with caplog.at_level(logging.WARNING, logger="salt.distill"):
        run_distillation(cfg, str(tmp_path / "run"), max_gen_steps=3, quiet=True, world=TOY)
    assert "at or past" not in caplog.text and steps_in(tmp_path / "run")[-1] == "step_00000003"
    with caplog.at_level(logging.WARNING, logger="salt.distill"):
        run_distillation(cfg, str(tmp_path / "run"), max_gen_steps=2, quiet=True, world=TOY)
    assert "the run is at generator step 3, at or past max_gen_steps=2" in caplog.text
    assert steps_in(tmp_path / "run")[-1] == "step_00000003"


# -- a resume the host cannot hold ---------------------------------------------------------------------------
RESUME_PEAK = r"""
import json, sys
from comfyui_salt.training.runs import CheckpointManager
def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
ckpt = CheckpointManager(sys.argv[1])
ckpt.load(sys.argv[2], ["student", "critic"])      # the first load's one-off costs (imports, allocator pools)
before = status("RssAnon")
held = ckpt.load(sys.argv[3], ["student", "critic"])
print(json.dumps(status("RssAnon") - before))
"""


def test_a_resumes_host_estimate_is_the_memory_a_fresh_process_gains_reading_the_checkpoint(tmp_path):
    """The estimate (state.pt's size) against the anonymous memory a fresh process holds after reading a
    checkpoint of 24 MiB of weights and 48 MiB of optimizer moments: the moments (within a quarter), not the
    weights, which stay mapped file pages (counting them would refuse resumes that fit)."""
    import subprocess
    import sys
    ckpt = CheckpointManager(str(tmp_path / "checkpoints"))
    for step, n in ((1, 1 << 10), (2, 3 << 20)):
        weights = {"student": {"w": torch.randn(n)}, "critic": {"w": torch.randn(n)}}
        ckpt.save(step, weights, {"opt": {"exp_avg": torch.randn(2 * n), "exp_avg_sq": torch.rand(2 * n)}, "step": 2})
    (_, path), (_, small) = ckpt.complete()
    out = subprocess.run([sys.executable, "-c", RESUME_PEAK, str(tmp_path / "checkpoints"), small, path],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    measured, estimate = json.loads(out.stdout.strip().splitlines()[-1]), CheckpointManager.load_host_bytes(path)
    assert 40 << 20 < measured, measured
    assert measured - (4 << 20) <= estimate <= 1.25 * measured, (estimate / 2**20, measured / 2**20)


@pytest.mark.parametrize("error, host", [
    (MemoryError(), True), (torch.OutOfMemoryError("CUDA out of memory"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), True),
    (RuntimeError("unable to mmap 64 bytes from file <x.pt>: Cannot allocate memory (12)"), True),
    (RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory"), False),
    (ValueError("incomplete metadata"), False), (OSError(28, "No space left on device"), False)])
def test_out_of_memory_tells_the_hosts_failure_from_a_damaged_file(error, host):
    from comfyui_salt.salt_core.validate import out_of_memory
    assert out_of_memory(error) is host


def test_running_out_of_memory_while_reading_keeps_the_checkpoint_the_newest(tmp_path, monkeypatch):
    """An allocation that fails mid-read (the estimate passed; other programs took the memory) is the host's
    failure: the checkpoint is not set aside as unreadable and the run does not fall back to an older one."""
    from comfyui_salt.training import runs
    ckpt = CheckpointManager(str(tmp_path / "checkpoints"))
    for step in (1, 2):
        ckpt.save(step, {"student": {"w": torch.zeros(4)}}, {"step": step})
    real = runs.CheckpointManager.load

    def newest_fails(self, path, names):
        if path.endswith("step_00000002"):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 1125899906842624 bytes")
        return real(self, path, names)
    monkeypatch.setattr(runs.CheckpointManager, "load", newest_fails)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        ckpt.load_latest(["student"])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_00000001", "step_00000002"]


def test_a_resume_the_host_cannot_hold_is_refused_before_reading_and_keeps_the_checkpoint(teacher_path, tmp_path,
                                                                                       monkeypatch):
    from comfyui_salt.training import runs
    run = tmp_path / "run"
    run_distillation(tiny(teacher_path), str(run), quiet=True, world=TOY)
    ckpt = CheckpointManager(str(run / "checkpoints"))
    need = ckpt.load_host_bytes(ckpt.latest()[1])
    monkeypatch.setattr(runs, "available_memory", lambda device, swap=False: need // 2)
    monkeypatch.setattr(runs.CheckpointManager, "load", lambda *a: pytest.fail("read before the memory check"))
    with pytest.raises(MemoryError, match=r"resume: resuming from .*step_00000002.* needs about .*host's free memory "
                                          r"and swap.*free host memory.*more memory"):
        run_distillation(tiny(teacher_path, gen_steps=3), str(run), quiet=True, world=TOY)
    assert steps_in(run) == ["step_00000001", "step_00000002"]    # nothing moved aside as unreadable


def test_a_resume_that_fits_reads_on(teacher_path, tmp_path, monkeypatch):
    from comfyui_salt.training import runs
    run = tmp_path / "run"
    run_distillation(tiny(teacher_path), str(run), quiet=True, world=TOY)
    ckpt = CheckpointManager(str(run / "checkpoints"))
    path = ckpt.latest()[1]
    need = ckpt.load_host_bytes(path)
    monkeypatch.setattr(runs, "available_memory", lambda device, swap=False: need)
    run_distillation(tiny(teacher_path, gen_steps=3), str(run), quiet=True, world=TOY)
    assert (run / "checkpoints" / "step_00000003" / "COMPLETE").exists()


def test_the_ranks_of_a_node_resuming_at_once_need_the_checkpoint_once_each(tmp_path, monkeypatch):
    """An unsharded checkpoint resumed by a node's ranks is read by each of them at once (readers)."""
    from comfyui_salt.training import runs
    ckpt = CheckpointManager(str(tmp_path / "checkpoints"))
    ckpt.save(1, {"student": {"w": torch.zeros(4)}}, {"step": 1, "opt": torch.zeros(1 << 16)})
    need = ckpt.load_host_bytes(ckpt.latest()[1])
    monkeypatch.setattr(runs, "available_memory", lambda device, swap=False: 3 * need)
    assert ckpt.load_latest(["student"], readers=3)[2]["step"] == 1
    with pytest.raises(MemoryError, match=r"step_00000001' in 4 processes of this host needs about"):
        ckpt.load_latest(["student"], readers=4)


RESUME_VOTE = r"""
import sys, torch
import torch.distributed as dist
from comfyui_salt.training import runs
from comfyui_salt.training.loop import TrainingLoop
dist.init_process_group("gloo")
rank = dist.get_rank()
if rank == int(sys.argv[2]):   # this rank's host has less free memory than the checkpoint
    runs.available_memory = lambda device, swap=False: 1
class Job:
    sharded, step = True, 0
    def load(self, tensors, state):
        self.step = state["step"]
loop = TrainingLoop(runs.RunFolder(sys.argv[1], rank), "resume")
try:
    loop.resume(Job(), ["student"])
    said = "resumed"
except MemoryError as e:
    said = f"MemoryError: {e}"
dist.barrier()
print("RESULT " + said, flush=True)
"""


def test_a_rank_that_cannot_hold_the_checkpoint_stops_every_rank_before_any_reads_on(tmp_path):
    """Ranks see their own free memory: one refused while the others went on into the collectives of training
    would leave them waiting until NCCL's timeout. Two gloo ranks, rank 1 refused: both stop, rank 0 naming it."""
    import subprocess
    import sys
    from test_distributed import finished, free_port
    CheckpointManager(str(tmp_path / "checkpoints")).save(1, {"student": {"w": torch.zeros(8)}}, {"step": 1})
    port, procs = free_port(), []
    for rank in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE="2")
        procs.append(subprocess.Popen([sys.executable, "-c", RESUME_VOTE, str(tmp_path), "1"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    said = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert finished(p.returncode, out), out[-3000:]
        said.append(out.split("RESULT ", 1)[1].splitlines()[0])
    assert said[0] == ("MemoryError: rank 0: another rank of this run cannot hold the checkpoint it resumes from "
                       "(its error is in its log); every rank stops"), said
    assert said[1].startswith("MemoryError: resume: resuming from") and "needs about" in said[1], said
    assert (tmp_path / "checkpoints" / "step_00000001" / "COMPLETE").exists()
