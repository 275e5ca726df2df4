"""The GPU check (tests/bench/gpu_check.py) runs its CPU smoke: every correctness check passes and it reports."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_passes_every_check_and_writes_its_table(tmp_path):
    # A fresh interpreter started outside the tree: the script must find the package from the tree itself.
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "bench" / "gpu_check.py"), str(tmp_path), "--smoke"],
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
