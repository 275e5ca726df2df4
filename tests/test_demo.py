"""The README's main job end to end: Python rows, then workflow 1 in a real headless ComfyUI (one boot).

Uses the shipped toy teacher and Salt student when they are built, else random toy-preset stand-ins (the
metrics are then meaningless, the plumbing is what is tested). The WEBP decoder is checked against an upscaled known video.
"""
import pathlib

import pytest
import torch

from comfy_import import COMFYUI_DIR, MISSING, comfyui_installed
from comfyui_salt.dev.comfy_runner import ComfyError, check_comfyui
from comfyui_salt.dev.demo import WORKFLOW_1_ROW, read_webp_video, run_demo
from comfyui_salt.toy.shipped import TOY_STUDENT, TOY_TEACHER


def test_the_webp_reader_undoes_the_nearest_upscale_of_a_known_video(tmp_path):
    from PIL import Image
    video = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    frames = ((video[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0)   # (F, H, W, 3)
    big = frames.repeat_interleave(8, 1).repeat_interleave(8, 2).numpy()
    images = [Image.fromarray(f) for f in big]
    path = tmp_path / "v.webp"
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, lossless=True)
    back = read_webp_video(str(path), 8)
    assert back.shape == (1, 3, 4, 16, 16)
    assert (back - video).abs().max() <= 1 / 127.5 + 1e-6


def test_a_missing_comfyui_says_to_run_the_setup(tmp_path):
    with pytest.raises(ComfyError, match=r"bash \.ci/setup"):
        check_comfyui(tmp_path / "nowhere")


@pytest.mark.slow
@pytest.mark.skipif(not comfyui_installed(), reason=MISSING)
def test_the_demo_runs_workflow_1_in_comfyui_and_scores_its_webp(tmp_path, capsys):
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    teacher, student = TOY_TEACHER, TOY_STUDENT
    if not pathlib.Path(teacher).exists():
        teacher = str(tmp_path / "random_toy_teacher.safetensors")
        save_model(build_model("toy", seed=0), teacher, extra_metadata={"teacher_mode": "teacher_forcing"})
    if not pathlib.Path(student).exists():
        student = str(tmp_path / "random_toy_student.safetensors")
        save_model(build_model("toy", seed=1), student, extra_metadata={"salt_role": "student"})
    out = tmp_path / "demo"
    rows = run_demo(str(out), num_clips=2, threads=1, teacher=teacher, student=student,
                    comfyui_dir=str(COMFYUI_DIR))
    printed = capsys.readouterr().out
    assert (out / "preview.gif").is_file() and (out / "salt_toy_streaming.webp").is_file()
    assert {"real data", "teacher 4 steps", "Salt student 4 steps", "Salt student 2 steps", WORKFLOW_1_ROW} <= set(rows)
    assert 0 <= rows[WORKFLOW_1_ROW]["toy_score"] <= 100 and rows[WORKFLOW_1_ROW]["seconds"] > 0
    assert f"| {WORKFLOW_1_ROW} |" in printed and "| Salt student 2 steps |" in printed


def test_a_refused_prompt_is_reported_with_each_nodes_error():
    from comfyui_salt.dev.comfy_runner import format_prompt_error
    response = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": ""},
                "node_errors": {"5": {"class_type": "SaltStreamingSampler", "dependent_outputs": ["7"],
                                      "errors": [{"type": "value_bigger_than_max", "message": "Value bigger than max",
                                                  "details": "width 99 > 64"}]}}}
    text = format_prompt_error(response)
    assert "Prompt outputs failed validation" in text
    assert "node 5 (SaltStreamingSampler): Value bigger than max: width 99 > 64" in text


def test_the_cli_demo_says_to_use_a_checkout_when_the_dev_harness_is_absent(monkeypatch):
    """A built wheel has no comfyui_salt.dev: `demo` stops with a message instead of a traceback."""
    import sys
    from comfyui_salt.__main__ import main
    monkeypatch.setitem(sys.modules, "comfyui_salt.dev.demo", None)   # import fails as if dev/ were not installed
    with pytest.raises(SystemExit, match="not part of an installed wheel.*from a checkout"):
        main(["demo", "--no-comfyui"])


def test_the_demo_replaces_its_own_outputs_and_never_a_users_file_of_the_same_name(tmp_path):
    """A rerun into the same --out replaces the preview it wrote; a preview.gif it did not write stops the demo
    before any sampling (it was overwritten in silence)."""
    from comfyui_salt.dev.demo import check_demo_outputs, mark_demo_outputs
    out = tmp_path / "demo"
    out.mkdir()
    check_demo_outputs(str(out), comfyui=True)                        # empty: fine
    (out / "preview.gif").write_bytes(b"GIF89a mine")
    with pytest.raises(ValueError, match="holds a preview.gif the demo did not write; it is never replaced"):
        check_demo_outputs(str(out), comfyui=False)
    (out / "preview.gif").unlink()
    mark_demo_outputs(str(out), comfyui=False)
    (out / "preview.gif").write_bytes(b"GIF89a the demo's")
    check_demo_outputs(str(out), comfyui=False)                       # its own: replaced on the rerun
    (out / "salt_toy_streaming.webp").write_bytes(b"RIFF mine")
    with pytest.raises(ValueError, match="salt_toy_streaming.webp the demo did not write"):
        check_demo_outputs(str(out), comfyui=True)
    check_demo_outputs(str(out), comfyui=False)                       # not written without ComfyUI: not checked
    with pytest.raises(ValueError, match="is a file; give a folder"):
        check_demo_outputs(str(out / "preview.gif"), comfyui=False)
