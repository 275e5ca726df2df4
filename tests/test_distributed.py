"""Sharded training on FSDP2 with CPU processes on gloo (issue 25): N ranks (2; 4 as 2 nodes × 2, hybrid) equal
one process with the same global batch (N × grad_accum micro-batches), for DMD and for Salt (SC + alignment on);
each rank holds about 1/N of the parameters, gradients and optimizer state; sharded checkpoints
(torch.distributed.checkpoint) resume on another rank count; a killed rank stops the other with a clear error.

Tolerance: the sharded run reduces each gradient as a mean over ranks (reduce-scatter) where one process sums its
micro-batches' gradients (loss / grad_accum each): the same numbers added in another order, about 1e-7 relative in
fp32. AdamW with β1 = 0 divides by √v, so a few steps keep the weights within about lr × 1e-2; we require 1e-6
absolute (lr 2e-5) and the losses within 1e-5 relative.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

WORKER = r"""
import json, os, sys, torch
from safetensors.torch import save_file
from comfyui_salt.toy.jobs import distill_world
import comfyui_salt.training.distill as D
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.training.distributed import local_bytes
out, teacher, preset, accum, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sharding, allow, extra = sys.argv[6], sys.argv[7] == "1", json.loads(sys.argv[8])
measured = {}
step = D.Distiller.iteration
def iteration(self, it, interrupt=None):
    stats = step(self, it, interrupt)
    measured["bytes"] = local_bytes(self.student, self.opt_gen) + local_bytes(self.critic, self.opt_critic)
    group = getattr(self.teacher, "_get_fsdp_state", None) and self.teacher._get_fsdp_state()._fsdp_param_group
    measured["teacher_policy"] = type(group.offload_policy).__name__ if group else None
    return stats
D.Distiller.iteration = iteration
kw = dict(batch_size=1, grad_accum=accum, gen_steps=steps, critic_ratio=2, eval_every=0, threads=1,
          checkpoint_every=2, align_start_iter=0, ema_start_iter=2, sharding=sharding)
cfg = get_preset(preset, teacher=teacher, **{**kw, **extra})
model = D.run_distillation(cfg, out, quiet=True, world=distill_world(), allow_changed_settings=allow)
assert not torch.distributed.is_initialized(), "the finished job left its process group to interpreter exit"
rank = int(os.environ.get("RANK", "0"))
json.dump(measured, open(os.path.join(out, f"bytes_rank{rank}.json"), "w"))
if rank == 0:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "student.safetensors"))
print("worker: every file written", flush=True)
"""
DONE = "worker: every file written"
# gloo's worker threads can still abort a process at interpreter exit after everything is written (SIGABRT,
# "terminate called without an active exception"; pytorch/pytorch#190489), rarely and only under load even though
# end_process_group ends the group first. A rank that printed DONE and then died that way counts as finished.
EXIT_ABORT = "terminate called without an active exception"


def finished(returncode: int, out: str) -> bool:
    """Whether a worker finished: exit 0, or the known gloo abort at exit after its last line."""
    import signal
    return returncode == 0 or (returncode == -signal.SIGABRT and DONE in out and EXIT_ABORT in out.split(DONE)[-1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(folder, teacher, preset, ranks, accum, steps, sharding="full", allow=False, nodes=1, timeout=900,
           **extra):
    """Run the worker on `ranks` processes (torchrun's environment, gloo); returns their outputs. allow: resume with
    changed settings (another grad_accum keeps the global batch on another rank count); nodes: how many nodes the
    ranks pretend to be on (LOCAL_RANK / LOCAL_WORLD_SIZE as torchrun sets them per node)."""
    folder.mkdir(parents=True, exist_ok=True)
    port, procs = free_port(), []
    for rank in range(ranks):
        env = dict(os.environ, OMP_NUM_THREADS="1", SALT_FORCE_CPU="1")
        if ranks > 1:
            per_node = ranks // nodes
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(ranks),
                       LOCAL_RANK=str(rank % per_node), LOCAL_WORLD_SIZE=str(per_node))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(teacher), preset, str(accum),
                                       str(steps), sharding, "1" if allow else "0", json.dumps(extra)], env=env,
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"the ranks did not finish within {timeout} s (a hang in a collective?)") from None
        assert finished(p.returncode, out), out[-4000:]
        outs.append(out)
    return outs


def test_only_the_known_abort_after_the_last_line_counts_as_finished():
    import signal
    abort = -signal.SIGABRT
    assert finished(0, "") and finished(abort, f"log\n{DONE}\n{EXIT_ABORT}\n")
    assert not finished(abort, f"{EXIT_ABORT}\n{DONE}\n")            # aborted before its last line
    assert not finished(abort, f"{DONE}\nSegmentation fault\n") and not finished(1, f"{DONE}\n{EXIT_ABORT}")


def gen_rows(folder, name="metrics.jsonl"):
    return [json.loads(line) for line in (folder / name).read_text().splitlines() if '"K"' in line]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_model(build_model("toy", seed=0), path, extra_metadata={"teacher_mode": "teacher_forcing"})
    return path


@pytest.mark.slow
@pytest.mark.parametrize("preset, ranks, sharding, offload", [
    ("toy-dmd", 2, "full", False), ("toy-salt", 2, "full", False), ("toy-dmd", 4, "hybrid", False),
    ("toy-salt", 2, "full", True)])
def test_sharded_ranks_equal_one_process_with_the_same_global_batch(tmp_path, teacher, preset, ranks, sharding,
                                                                    offload):
    """hybrid: 4 ranks as 2 nodes × 2 (a 2-D mesh: shards within a node, replicas across): each holds 1/2.
    offload: the frozen teacher's shards wait on the host between uses (teacher_offload; FSDP2's CPUOffloadPolicy,
    which on a CPU mesh keeps them where they are): the same numbers as the sharded teacher."""
    steps = 5 if preset == "toy-salt" else 3        # seed 0: SC acts on update 4, the alignment on update 5
    extra = {"grad_checkpointing": True} if preset == "toy-salt" else {}    # with activation checkpointing too
    launch(tmp_path / "one", teacher, preset, ranks=1, accum=ranks, steps=steps, **extra)
    launch(tmp_path / "two", teacher, preset, ranks=ranks, accum=1, steps=steps, sharding=sharding,
           nodes=2 if sharding == "hybrid" else 1, **extra, **({"teacher_offload": True} if offload else {}))
    one, two = load_file(tmp_path / "one" / "student.safetensors"), load_file(tmp_path / "two" / "student.safetensors")
    start = load_file(teacher)
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    moved = max((one[k] - start[k]).abs().max().item() for k in one if k in start)
    assert worst <= 1e-6 and moved > 1e-5, (worst, moved)                      # equal, and it trained
    rows_one = gen_rows(tmp_path / "one")
    per_rank = [gen_rows(tmp_path / "two", "metrics.jsonl" if r == 0 else f"metrics_rank{r}.jsonl")
                for r in range(ranks)]
    assert all([r["K"] for r in rows] == [r["K"] for r in rows_one] for rows in per_rank)
    for i, a in enumerate(rows_one):   # one process logs the mean over its micro-batches; every rank the same mean
        for rows in per_rank:          # (rank 0's own losses were logged, of its clips alone)
            assert abs(a["dmd_loss"] - rows[i]["dmd_loss"]) <= 1e-5 * abs(a["dmd_loss"]), (i, a, rows[i])
            assert rows[i]["K"] == a["K"] and isinstance(rows[i]["K"], int)
    if preset == "toy-salt":
        assert sum(r["sc_acted"] for r in rows_one) and sum(r["aligned"] for r in rows_one)
    one_b = json.loads((tmp_path / "one" / "bytes_rank0.json").read_text())["bytes"]
    held = [json.loads((tmp_path / "two" / f"bytes_rank{r}.json").read_text())["bytes"] for r in range(ranks)]
    shards = 2 if sharding == "hybrid" else ranks
    assert all(0.9 / shards <= b / one_b <= 1.12 / shards for b in held), (one_b, held)  # ≈ 1/N (uneven splits)
    policies = [json.loads((tmp_path / "two" / f"bytes_rank{r}.json").read_text())["teacher_policy"]
                for r in range(ranks)]
    assert policies == ["CPUOffloadPolicy" if offload else "OffloadPolicy"] * ranks, policies


@pytest.mark.slow
def test_a_sharded_run_resumes_on_one_process_and_ends_equal_to_an_uninterrupted_run(tmp_path, teacher):
    """2 ranks for 2 generator updates (a checkpoint of full tensors), then 1 process (grad_accum 2) to 4; and the
    reverse: the end equals 1 process straight to 4."""
    launch(tmp_path / "straight", teacher, "toy-dmd", ranks=1, accum=2, steps=4)
    launch(tmp_path / "a", teacher, "toy-dmd", ranks=2, accum=1, steps=2)
    # the same command on one process would average 1 clip per update where the checkpoint's averaged 2: refused
    with pytest.raises(AssertionError, match=r"averaged 2 clips; these settings give 1 \(batch_size 1 × grad_accum 1 × "
                                             r"1 process\)\. To go on, allow changed settings .* set --grad-accum 2"):
        launch(tmp_path / "a", teacher, "toy-dmd", ranks=1, accum=1, steps=4)
    sharded = tmp_path / "a" / "checkpoints" / "step_00000002"      # torch.distributed.checkpoint: a shard per rank
    assert (sharded / ".metadata").is_file() and sorted(p.name for p in sharded.glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]
    damaged = tmp_path / "damaged"                                # a truncated shard: a clear error, not a crash
    import shutil
    shutil.copytree(tmp_path / "a", damaged)
    shard = damaged / "checkpoints" / "step_00000002" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(AssertionError, match="does not read into these models.*move that step folder away"):
        launch(damaged, teacher, "toy-dmd", ranks=1, accum=2, steps=4, allow=True)
    launch(tmp_path / "a", teacher, "toy-dmd", ranks=1, accum=2, steps=4, allow=True)
    launch(tmp_path / "b", teacher, "toy-dmd", ranks=1, accum=2, steps=2)
    launch(tmp_path / "b", teacher, "toy-dmd", ranks=2, accum=1, steps=4, allow=True)
    straight = load_file(tmp_path / "straight" / "student.safetensors")
    for name in ("a", "b"):
        assert [r["gen_step"] for r in gen_rows(tmp_path / name)] == [1, 2, 3, 4]   # resumed at 2, not restarted
        got = load_file(tmp_path / name / "student.safetensors")
        worst = max((got[k] - straight[k]).abs().max().item() for k in got)
        assert worst <= 1e-6, (name, worst)


def eval_steps(folder, name):
    return [r["gen_step"] for r in map(json.loads, (folder / name).read_text().splitlines()) if "eval" in r]


@pytest.mark.slow
def test_an_evaluation_missing_from_one_ranks_log_is_redone_by_every_rank_or_by_none(tmp_path, teacher):
    """A kill between a checkpoint and its evaluation's log line may leave the line in one rank's log and not in
    another's. The evaluation gathers the sharded student (a collective): rank 0's log decides for every rank. It
    hung when each rank decided from its own log (one gathering, the other training)."""
    run = tmp_path / "run"
    args = dict(teacher=teacher, preset="toy-dmd", ranks=2, accum=1, eval_every=2, eval_clips=2, timeout=240)
    launch(run, steps=2, **args)
    assert eval_steps(run, "metrics.jsonl") == eval_steps(run, "metrics_rank1.jsonl") == [2]

    def drop_eval(name, step):
        lines = (run / name).read_text().splitlines(keepends=True)
        (run / name).write_text("".join(ln for ln in lines if not ('"eval"' in ln and json.loads(ln)["gen_step"] == step)))
    drop_eval("metrics_rank1.jsonl", 2)                  # rank 0 has it: nobody evaluates again
    launch(run, steps=4, **args)
    assert eval_steps(run, "metrics.jsonl") == [2, 4] and eval_steps(run, "metrics_rank1.jsonl") == [4]
    drop_eval("metrics.jsonl", 4)                        # rank 0 lacks it: every rank evaluates again
    launch(run, steps=4, **args)
    assert eval_steps(run, "metrics.jsonl") == [2, 4] and eval_steps(run, "metrics_rank1.jsonl") == [4, 4]


@pytest.mark.slow
def test_replicate_mode_keeps_everything_on_every_rank_and_trains_the_same(tmp_path, teacher):
    launch(tmp_path / "one", teacher, "toy-dmd", ranks=1, accum=2, steps=2)
    launch(tmp_path / "rep", teacher, "toy-dmd", ranks=2, accum=1, steps=2, sharding="replicate")
    one, rep = load_file(tmp_path / "one" / "student.safetensors"), load_file(tmp_path / "rep" / "student.safetensors")
    assert max((one[k] - rep[k]).abs().max().item() for k in one) <= 1e-6
    one_b = json.loads((tmp_path / "one" / "bytes_rank0.json").read_text())["bytes"]
    rep_b = json.loads((tmp_path / "rep" / "bytes_rank0.json").read_text())["bytes"]
    assert rep_b == one_b


def test_the_hand_written_gradient_average_is_gone():
    """No gradient all-reduce of our own: the only all_reduces left are any_rank's one-number vote, the logged
    numbers' mean (mean_over_ranks) and in_turns' vote on a failed turn, none touching a gradient."""
    import inspect
    import comfyui_salt.training.distill as distill
    import comfyui_salt.training.distributed as distributed
    import comfyui_salt.training.loop as loop
    assert not hasattr(distributed, "average_gradients")
    assert "all_reduce" not in open(distill.__file__).read() and "all_reduce" not in open(loop.__file__).read()
    assert open(distributed.__file__).read().count("all_reduce(") == 3
    for f in (distributed.any_rank, distributed.mean_over_ranks, distributed.in_turns):
        assert "all_reduce(" in inspect.getsource(f) and "grad" not in inspect.getsource(f)
    assert not distributed.any_rank(False) and distributed.any_rank(True)     # one process: the flag itself


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_with_a_clear_error_and_the_rerun_ends_equal(tmp_path, teacher):
    """SIGKILL of rank 1 after a checkpoint: rank 0 exits within 60 s naming the cause and the fix; the same command
    again resumes from the last checkpoint and ends equal to an uninterrupted 2-rank run."""
    import signal
    import time
    launch(tmp_path / "straight", teacher, "toy-dmd", ranks=2, accum=1, steps=6)
    folder = tmp_path / "killed"
    folder.mkdir()
    port, procs = free_port(), []
    for rank in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", SALT_FORCE_CPU="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(teacher), "toy-dmd", "1", "6",
                                       "full", "0", "{}"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    deadline = time.time() + 300
    while not list(folder.rglob("step_00000002")) and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.2)
    assert list(folder.rglob("step_00000002")), "no checkpoint appeared"
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    out, _ = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=30)
    assert procs[0].returncode != 0 and time.time() - killed < 60, out[-2000:]      # it did not finish
    assert "lost contact with another rank" in out and "rerun the same command" in out, out[-2000:]
    launch(folder, teacher, "toy-dmd", ranks=2, accum=1, steps=6)
    steps = [r["gen_step"] for r in gen_rows(folder)]
    assert steps.count(1) == 1 and steps[-1] == 6, steps                      # resumed, not started over
    got, want = load_file(folder / "student.safetensors"), load_file(tmp_path / "straight" / "student.safetensors")
    assert max((got[k] - want[k]).abs().max().item() for k in got) <= 1e-6


ODE_WORKER = r"""
import sys, torch
from comfyui_salt.toy.jobs import distill_world
from comfyui_salt.training.ode_init import run_ode_init
from comfyui_salt.training.ode_init_config import get_ode_init_preset
cfg = get_ode_init_preset("toy-ode-init", teacher=sys.argv[2], batch_size=1, gen_steps=1, ode_pairs=2, threads=1)
try:
    run_ode_init(cfg, sys.argv[1], quiet=True, world=distill_world())
except ValueError as e:
    print("refused:", e)
print("group left:", torch.distributed.is_initialized())
"""


def test_an_ode_init_under_torchrun_is_refused_on_every_rank_and_ends_its_group(tmp_path, teacher):
    port, procs = free_port(), []
    for rank in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", SALT_FORCE_CPU="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
        procs.append(subprocess.Popen([sys.executable, "-c", ODE_WORKER, str(tmp_path / "ode"), str(teacher)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0 and "refused: run_ode_init under torchrun (2 processes)" in out, out[-3000:]
        assert "group left: False" in out, out[-3000:]


def test_the_cli_under_torchrun_writes_the_export_from_rank_0_only(tmp_path, teacher):
    """Every rank ends the job holding the whole student; only rank 0 writes export/ (and says so)."""
    port, procs = free_port(), []
    for rank in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", SALT_FORCE_CPU="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
        procs.append(subprocess.Popen([sys.executable, "-m", "comfyui_salt", "distill", "--preset", "toy-dmd",
                                       "--teacher", str(teacher), "--out", str(tmp_path / "run"), "--gen-steps", "1",
                                       "--batch-size", "1", "--critic-ratio", "1", "--eval-every", "0",
                                       "--threads", "1"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "wrote" in outs[0] and "wrote" not in outs[1], outs[1][-2000:]
    assert (tmp_path / "run" / "export" / "student.safetensors").exists()


def test_a_resume_that_would_average_another_number_of_clips_is_refused_naming_the_grad_accum_that_keeps_it(caplog):
    """The rank count is no setting in config.json: a checkpoint of 2 processes × grad_accum 4 resumed on 8 keeps
    its 8 clips per update with grad_accum 1, resumed on 3 no grad_accum does; allowed to change, it says so."""
    from types import SimpleNamespace
    from comfyui_salt.training.distill import check_clips_per_update
    job = lambda before, procs, accum: SimpleNamespace(
        resumed_clips=before, clips_per_update=accum * procs, world_size=procs,
        cfg=SimpleNamespace(batch_size=1, grad_accum=accum))
    check_clips_per_update(job(None, 8, 4), False, False)           # fresh, or a checkpoint of an older version
    check_clips_per_update(job(8, 8, 1), False, False)              # the same clips on another rank count
    with pytest.raises(ValueError, match=r"averaged 8 clips; these settings give 32 \(batch_size 1 × grad_accum 4 × 8 "
                                         r"processes\)\. To go on, allow changed settings \(--allow-changed-settings "
                                         r".*\) and set --grad-accum 1 to keep 8, or leave it to train on 32"):
        check_clips_per_update(job(8, 8, 4), False, False)
    with pytest.raises(ValueError, match=r"no grad_accum keeps 8 on 3 processes at batch_size 1"):
        check_clips_per_update(job(8, 3, 4), False, False)
    with caplog.at_level("WARNING"):
        check_clips_per_update(job(8, 3, 4), True, False)
    assert "going on with 12 (allowed to change settings)" in caplog.text


def test_a_teacher_under_torchrun_is_refused_by_name_before_any_rank_takes_the_run_folder(tmp_path, monkeypatch):
    """It was refused by the run lock on rank 1 ('in use by pid …' of its sibling) while rank 0 started training."""
    from comfyui_salt.toy.jobs import teacher_world
    from comfyui_salt.training.teacher import TeacherConfig, train_teacher
    cfg = TeacherConfig(total_steps=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"train_teacher under torchrun \(2 processes\): the teacher trains in one "
                                         r"process .* launch it with python, not torchrun"):
        train_teacher(cfg, str(tmp_path / "t"), world=teacher_world(cfg))
    assert not (tmp_path / "t").exists()


def test_a_teacher_file_stored_in_bf16_leaves_the_trained_copies_in_float32_from_the_files_own_weights(teacher):
    """Under torchrun with bf16 compute the frozen teacher is stored in bf16 (FSDP2 gathers it in bf16 for every
    forward anyway): half its bytes, the RoPE table as it was; student and critic initialised from 'teacher'
    read the file's weights in float32, not the bf16-rounded copy."""
    from comfyui_salt.training.distill_config import get_preset
    from comfyui_salt.training.distill_models import build_models
    cfg = get_preset("toy-dmd", teacher=str(teacher), student_init="teacher", critic_init="teacher")
    plain, _, _ = build_models(cfg)
    half, student, critic = build_models(cfg, teacher_dtype=torch.bfloat16)
    size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16} and 2 * size(half) == size(plain)
    assert {a.dtype for a in half.rope.axis_angles} == {torch.float64}          # the RoPE angles are untouched
    file = load_file(teacher)
    for model in (student, critic):
        assert {p.dtype for p in model.parameters()} == {torch.float32} and model.training
        assert all(p.requires_grad for p in model.parameters())
        sd = model.state_dict()
        assert all(torch.equal(sd[k], plain.state_dict()[k]) for k in sd)
    assert any(not torch.equal(p.float(), q) for p, q in zip(half.parameters(), plain.parameters()))   # rounded
    assert not any(p.requires_grad for p in half.parameters())


TURNS_WORKER = r"""
import json, sys, time, torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from comfyui_salt.training.distributed import device_mesh, in_turns, process_info
info = process_info()
mesh = device_mesh(info, "full")
def build():
    start = time.monotonic()
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 512))   # whole, on the host
    time.sleep(0.4)
    fully_shard(model, mesh=mesh)
    held = sum(p.to_local().untyped_storage().nbytes() for p in model.parameters())
    return {"start": start, "end": time.monotonic(), "held": held, "rank": info.rank, "local": info.local_rank}
record = in_turns(info, build)
def fails():
    if info.rank == int(sys.argv[1]):
        raise ValueError("this rank's teacher file is damaged")
    return "built"
try:
    in_turns(info, fails)
    said = "no error"
except Exception as e:
    said = f"{type(e).__name__}: {e}"
print("RESULT " + json.dumps({**record, "said": said}), flush=True)
print("worker: every file written", flush=True)   # DONE: gloo's known abort at exit may follow (finished)
"""


def test_the_ranks_of_a_node_build_their_models_one_at_a_time_and_keep_only_shards():
    """in_turns (training/distributed.py): 4 ranks as 2 nodes × 2. Within a node the builds do not overlap in
    time, local rank 0 first; across nodes the same local rank builds at once (one whole model set per node at a
    time); after sharding a rank's parameters hold a quarter of the model's bytes (the whole copy is freed). A
    turn that raises stops every rank: that rank with its own error, the others naming it."""
    port, procs, whole = free_port(), [], 2 * (512 * 512 + 512) * 4
    for rank in range(4):
        env = dict(os.environ, OMP_NUM_THREADS="1", SALT_FORCE_CPU="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="4", LOCAL_RANK=str(rank % 2),
                   LOCAL_WORLD_SIZE="2")
        procs.append(subprocess.Popen([sys.executable, "-c", TURNS_WORKER, "3"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    records = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert finished(p.returncode, out), out[-3000:]
        records.append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))
    for node in (records[:2], records[2:]):
        first, second = sorted(node, key=lambda r: r["local"])
        assert first["end"] <= second["start"], node                   # one at a time, local rank 0 first
    assert records[0]["start"] < records[3]["end"] and records[2]["start"] < records[1]["end"]   # nodes at once
    assert all(whole / 4 <= r["held"] <= whole / 4 + 4096 for r in records), records   # 1/4 each: 4 shards
    assert records[3]["said"] == "ValueError: this rank's teacher file is damaged"
    for r in records[:3]:
        assert r["said"] == (f"RuntimeError: rank {r['rank']} of 4: rank 3 could not build its models (its error "
                             f"is in its log); every rank stops before training"), r
