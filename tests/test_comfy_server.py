"""The pack inside a real ComfyUI 0.3.75 server: import, /object_info, a shipped workflow end to end, errors.

One server boot for the module (~40 s on an idle 2-core machine), always stopped by its PID.
The shipped UI workflow is converted to API format with tests/workflow_convert.py against the
server's own /object_info. While the toy teacher asset is not built yet, its loader node is
swapped for SaltLoadCausalModel on a random toy-preset file (same graph otherwise).
"""
import json
import pathlib

import pytest
import torch

from comfy_import import MISSING, comfyui_installed
from comfy_server import PACK_NAME, history_error, output_files, prepare_base, start_server
from workflow_convert import convert

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not comfyui_installed(), reason=MISSING)]

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "salt_toy_streaming.json"
SALT_NODES = ["SaltFewStepSigmas", "SaltFewStepSampler", "SaltCacheOptions", "SaltLoadCausalModel",
              "SaltCausalFromModel", "SaltStreamingSampler", "SaltToyModel", "SaltToyTextEncode", "SaltToyDecode"]
RANDOM_TOY, NOT_WAN = "salt_toy_random.safetensors", "not_wan.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from safetensors.torch import save_file
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.training.files import save_model
    base = tmp_path_factory.mktemp("comfyui_base")
    models = prepare_base(base)
    save_model(build_model("toy", seed=0), models / RANDOM_TOY, extra_metadata={"teacher_mode": "teacher_forcing"})
    save_file({"conv_in.weight": torch.zeros(8, 4), "mid_block.attentions.0.proj.bias": torch.zeros(8)},
              str(models / NOT_WAN))
    srv = start_server(base)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info", timeout=120)


def toy_teacher_installed() -> bool:
    from comfyui_salt.training.toy_assets import TOY_TEACHER
    return pathlib.Path(TOY_TEACHER).exists()


def toy_prompt(object_info: dict) -> dict:
    """The shipped toy workflow in API format (node ids as in the UI file: 1 model, 4 sigmas, 5 sampler)."""
    prompt = convert(json.loads(WORKFLOW.read_text()), object_info)
    if not toy_teacher_installed():
        prompt["1"] = {"class_type": "SaltLoadCausalModel",
                       "inputs": {"ckpt_name": RANDOM_TOY, "use_ema": True, "dtype": "fp32"}}
    return prompt


def test_the_pack_imports_without_errors(server):
    lines = server.log().splitlines()
    failed = [ln for ln in lines if PACK_NAME in ln and ("IMPORT FAILED" in ln or "Cannot import" in ln
                                                         or "comfy_entrypoint" in ln)]
    assert failed == [], "\n".join(failed)
    assert any(PACK_NAME in ln and "seconds" in ln for ln in lines), "the pack is missing from the import times"
    assert "ComfyUI version: 0.3.75" in server.log()


def test_every_salt_node_is_listed_by_object_info(object_info):
    missing = [n for n in SALT_NODES if n not in object_info]
    assert missing == []
    for name in SALT_NODES:
        assert object_info[name]["category"].startswith("Salt/") and object_info[name]["description"], name
    assert RANDOM_TOY in object_info["SaltLoadCausalModel"]["input"]["required"]["ckpt_name"][1]["options"]


def test_the_toy_streaming_workflow_runs_and_saves_a_twelve_frame_animated_webp(server, object_info):
    from PIL import Image, ImageStat
    prompt = toy_prompt(object_info)
    assert prompt["5"]["inputs"]["seed"] == 42 and prompt["5"]["inputs"]["num_chunks"] == 4
    assert prompt["3"]["inputs"]["attention"] == "rolling" and "8" not in prompt   # the Note is dropped
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    files = output_files(server, entry)
    assert len(files) == 1 and files[0].suffix == ".webp" and files[0].is_file(), files
    with Image.open(files[0]) as webp:
        assert webp.n_frames == 12 and webp.size == (128, 128)
        frames = []
        for i in range(webp.n_frames):
            webp.seek(i)
            frames.append(webp.convert("RGB").tobytes())
            assert max(ImageStat.Stat(webp.convert("RGB")).stddev) > 5, f"frame {i} is blank"
    assert len(set(frames)) > 1, "every frame is the same"


def test_bad_inputs_fail_with_node_errors_and_the_server_keeps_working(server, object_info):
    base = toy_prompt(object_info)

    def changed(node, **inputs):
        prompt = json.loads(json.dumps(base))
        prompt[node]["inputs"].update(inputs)
        return prompt

    # Out-of-range widgets and unknown files are rejected when the prompt is queued, naming node and input.
    status, response = server.queue(changed("4", preset="uniform", nfe=9))
    assert status == 400 and "4" in response["node_errors"], response
    assert "nfe" in json.dumps(response["node_errors"]["4"]) and "8" in json.dumps(response["node_errors"]["4"])
    missing = json.loads(json.dumps(base))
    missing["1"] = {"class_type": "SaltLoadCausalModel",
                    "inputs": {"ckpt_name": "missing.safetensors", "use_ema": True, "dtype": "fp32"}}
    status, response = server.queue(missing)
    assert status == 400 and "missing.safetensors" in json.dumps(response["node_errors"]["1"]), response

    # Files and sizes that only fail when run give an execution error from the node that raised.
    wrong = json.loads(json.dumps(missing))
    wrong["1"]["inputs"]["ckpt_name"] = NOT_WAN
    error = history_error(server.run(wrong))
    assert error["node_type"] == "SaltLoadCausalModel"
    assert NOT_WAN in error["exception_message"] and "Wan 2.1 T2V" in error["exception_message"]
    error = history_error(server.run(changed("5", width=18)))
    assert error["node_type"] == "SaltStreamingSampler" and "width=18" in error["exception_message"]

    server.assert_alive()
    after = changed("5", seed=3, num_chunks=1)
    after["7"]["inputs"]["filename_prefix"] = "salt/after_errors"
    entry = server.run(after)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    assert [f.name.startswith("after_errors") for f in output_files(server, entry)] == [True]
