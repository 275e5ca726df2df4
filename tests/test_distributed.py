"""Two CPU processes on the gloo backend: same K / exit / triplet on every rank, replicas stay equal."""
import json
import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

pytest.importorskip("accelerate")

WORKER = r"""
import json, os, sys, torch
from safetensors.torch import save_file
from comfyui_salt.toy.jobs import distill_world
from comfyui_salt.training.distill import run_distillation
from comfyui_salt.training.distill_config import get_preset
out, teacher = sys.argv[1], sys.argv[2]
cfg = get_preset("toy-salt", teacher=teacher, batch_size=1, gen_steps=3, critic_ratio=2, eval_every=0, threads=1,
                 checkpoint_every=100, align_start_iter=0, ema_start_iter=100, step_choices=(8, 4, 2))
model = run_distillation(cfg, out, quiet=True, world=distill_world())
rank = int(os.environ["RANK"])
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f"student_rank{rank}.safetensors"))
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_draw_the_same_steps_and_keep_identical_replicas(tmp_path):
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.training.files import save_model
    teacher = tmp_path / "teacher.safetensors"
    save_model(build_model("toy", seed=0), teacher, extra_metadata={"teacher_mode": "teacher_forcing"})
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(teacher)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    rows = {r: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
            for r, name in ((0, "metrics.jsonl"), (1, "metrics_rank1.jsonl"))}
    draws = {r: [(x["K"], x["exit"], x.get("sc_sigma_m")) for x in rows[r] if "K" in x] for r in rows}
    assert draws[0] == draws[1] and len(draws[0]) == 3
    # the ranks saw different data (per-rank seeds) ...
    assert [x["dmd_loss"] for x in rows[0] if "K" in x] != [x["dmd_loss"] for x in rows[1] if "K" in x]
    # ... but averaged gradients keep the replicas bit-identical
    a, b = load_file(tmp_path / "student_rank0.safetensors"), load_file(tmp_path / "student_rank1.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
