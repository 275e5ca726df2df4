"""The ComfyUI-facing tests again on the newer line, ComfyUI 0.33.0 (frontend 1.49.6), beside 0.3.75.

ComfyUI can be imported once per process, so each file runs in its own pytest process with SALT_COMFYUI_DIR naming
the 0.33 tree (`.ci/setup_comfyui_033` installs it into .venv/comfyui-0.33 from ../shared/comfyui; its own packages
in `<tree>/site` come first there). Where that tree is absent (a user's clone without ../shared) these skip, saying
so. The whole suite runs on 0.3.75 as usual; 0.33 is where Dynamic VRAM, core's CausalWanModel, SamplerARVideo and
the newer frontend live.
"""
import os
import pathlib
import subprocess
import sys

import pytest

from comfyui_salt.dev.comfy_runner import COMFYUI_033_DIR, comfyui_version

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Node import, model management, LoRA, previews, training nodes, bad input at the nodes, the real server with every
# shipped workflow, and the browser checks with 0.33's own frontend.
COMFY_FACING = ["test_nodes.py", "test_model_management.py", "test_lora.py", "test_nodes_training.py",
                "test_bad_input_nodes.py", "test_workflow_convert.py", "test_chunk_decode.py", "test_live.py",
                "test_comfy_server.py",
                "test_browser.py"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (COMFYUI_033_DIR / "main.py").is_file(),
    reason=f"ComfyUI 0.33 is not installed at {COMFYUI_033_DIR}: `bash .ci/setup` installs it when "
           f"../shared/comfyui/ComfyUI-0.33.0-*.tar.gz exists (a clone without it tests on 0.3.75 only)")]


def test_the_033_tree_is_the_newer_line():
    assert comfyui_version(COMFYUI_033_DIR).split(".")[:2] == ["0", "33"]


@pytest.mark.parametrize("name", COMFY_FACING)
def test_the_comfyui_facing_tests_pass_on_comfyui_033(name):
    env = dict(os.environ, SALT_COMFYUI_DIR=str(COMFYUI_033_DIR))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/{name}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    summary = done.stdout.strip().splitlines()[-1:] or [""]
    assert done.returncode == 0, f"{name} on ComfyUI 0.33: {summary[0]}\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert " passed" in summary[0], summary[0]
