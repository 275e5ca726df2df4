"""The GPU check (bench/gpu_check.py) runs its CPU smoke: every correctness check passes and it reports."""
import json
import pathlib
import subprocess
import sys

import pytest

from comfyui_salt.dev.comfy_runner import COMFYUI_033_DIR, DEFAULT_COMFYUI_DIR

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_passes_every_check_and_writes_its_table(tmp_path):
    # A fresh interpreter started outside the tree: the script must find the package from the tree itself.
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tmp_path), "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    table = (tmp_path / "gpu_check.md").read_text()
    failed = [c for c in report["checks"] if not c["passed"]]
    assert report["all_passed"] and not failed, failed
    assert len(report["checks"]) >= 12 and "| check | result | detail |" in table
    assert f"package {ROOT}" in report["header"]
    assert all(s["status"] == "done" or s["status"].startswith("skipped (smoke") for s in report["sections"]), report["sections"]
    streams = [r for r in report["speed"] if r["cache"] != "bidirectional (no cache)" and "latent frames/s" in r]
    assert {(r["cache"], r["NFE"]) for r in streams} == {("Self Forcing full cache", 4), ("Self Forcing full cache", 2),
                                                          ("LongLive window 12 + sink 3", 4), ("LongLive window 12 + sink 3", 2)}
    assert all(r["SDPA"] != "not seen" for r in streams)


@pytest.mark.slow
@pytest.mark.parametrize("tree", [DEFAULT_COMFYUI_DIR, COMFYUI_033_DIR], ids=["default-line", "0.33-line"])
def test_the_comfyui_section_passes_its_smoke_on_each_installed_comfyui(tmp_path, tree):
    """bench/gpu_comfy.py: a native MODEL + LoRA through Salt's nodes vs the merged weights, in that tree."""
    if not (tree / "main.py").is_file():
        pytest.skip(f"no ComfyUI tree at {tree} (bash .ci/setup installs 0.3.75, and 0.33 where ../shared has it)")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_comfy.py"), str(tmp_path),
                           "--comfyui", str(tree), "--smoke"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["all_passed"] and len(report["checks"]) == 9, report["checks"]   # + the start image beyond the device
    assert str(tree) in report["header"]
