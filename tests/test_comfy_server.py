"""The pack inside a real ComfyUI server (0.3.75, or the tree SALT_COMFYUI_DIR names, e.g. .venv/comfyui-0.33):
import, /object_info, every shipped workflow, errors.

One server boot for the module (~40 s on an idle 2-core machine), always stopped by its PID. Every UI
workflow in workflows/ is converted to API format with dev/workflow_api.py against the server's
own /object_info; those that need no downloaded weights run as shipped, the others on stand-ins the
test writes:
- a toy asset (teacher, Salt student) that is not built: a random toy-preset file loaded by
  SaltLoadCausalModel (and SaltDistill's teacher 'toy' → that file);
- Wan 2.1 weights: a tiny random Wan transformer in original layout that ComfyUI's own model detection
  accepts (head dim 128, freq_dim 256, umT5 width 4096), a Self Forcing-style release file
  `{"generator_ema": {"model.<name>": tensor}}` of the tiny-hd128 preset (text width 64), and a tiny
  random Wan 2.1 VAE built from ComfyUI's own WanVAE class;
- umT5: a test-only node (custom_nodes/salt_test_nodes) that yields a seeded CONDITIONING of the width
  the transformer expects, with a small latent size, so the graphs run in seconds; and one that builds a
  tiny random umT5 CLIP from ComfyUI's own classes (tests/tiny_clip.py) for SaltDistill's clip input.
"""
import functools
import time
import json
import pathlib

import pytest
import torch

from comfy_import import MISSING, comfyui_installed
from comfyui_salt.dev.comfy_runner import (DEFAULT_COMFYUI_DIR, PACK_NAME, comfyui_version, history_error, output_files,
                                           prepare_base, start_server)
from comfyui_salt.dev.workflow_api import convert
from helpers import (assert_close, missing_core_nodes, tiny_taehv_state_dict,  # noqa: F401  (re-exported)
                     tiny_wan_vae_state_dict)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not comfyui_installed(), reason=MISSING)]

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
WORKFLOW_FILES = sorted(p.name for p in WORKFLOWS.glob("*.json"))
SALT_NODES = ["SaltFewStepSigmas", "SaltFewStepSampler", "SaltCacheOptions", "SaltLoadCausalModel",
              "SaltCausalFromModel", "SaltStreamingSampler", "SaltToyModel", "SaltToyTextEncode", "SaltToyDecode",
              "SaltDistill", "SaltExtractLoRA", "SaltSemigroupDefect", "SaltLiveStream"]
RANDOM_TOY, NOT_WAN = "salt_toy_random.safetensors", "not_wan.safetensors"
WAN_STANDIN, RELEASE_STANDIN, VAE_STANDIN = "tiny_wan_t2v.safetensors", "tiny_self_forcing_dmd.pt", "tiny_wan_vae.safetensors"
TINY_DECODER_STANDIN = "lighttaew2_1_standin.safetensors"   # the name ComfyUI's Wan 2.1 previews look for
START_FRAME = "salt_start_frame.png"                        # the I2V workflow's Load Image file (random pixels)
WAN_STUDENT_STANDIN = "tiny_wan_t2v_student.safetensors"   # WAN_STANDIN with every tensor but the modulation changed
WAN_CAUSAL_STANDIN = "tiny_wan_t2v_causal.safetensors"     # WAN_STANDIN exported as a causal student (causal_ar marker)
# Wan-shaped and accepted by ComfyUI's model detection: head dim 128, freq_dim 256, umT5 width (4096).
NATIVE_WAN = dict(dim=256, ffn_dim=256, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=4096, freq_dim=256)
RELEASE_PRESET, RELEASE_TEXT_DIM = "tiny-hd128", 64
# CI size of the distillation workflow (the shipped graph trains 200 steps at batch 8).
CI_DISTILL = dict(gen_steps=2, batch_size=2, name="ci_distill", overrides="critic_ratio=1; eval_every=0; threads=1")
# SaltDistill at real scale on the release stand-in (text width 64) with the test umT5 CLIP, CI-sized.
REAL_PROMPTS, REAL_PROMPTS_FILE = ["a cat walks on the beach", "waves roll onto the beach"], "salt_prompts.txt"
REAL_OVERRIDES = ("num_frames=6; height=4; width=4; critic_ratio=1; align_start_iter=0; align_block=1; "
                  "step_choices=8,2; step_probs=0.5,0.5; eval_every=0; checkpoint_every=1; threads=1")
TEST_NODES = '''"""Test-only nodes for Salt's server tests (written by tests/test_comfy_server.py)."""
import torch


class SaltTestConditioning:
    """A seeded random CONDITIONING (1, tokens, width): stands in for umT5 in front of tiny Wan stand-ins."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 64, "min": 1, "max": 8192}),
                             "tokens": ("INT", {"default": 4, "min": 1, "max": 512}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, width, tokens, seed):
        return ([[torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed)), {}]],)


class SaltTestUMT5:
    """A tiny random umT5 CLIP built from ComfyUI's own classes (tiny_clip.py): stands in for Load CLIP (wan)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 64, "min": 8, "max": 4096}),
                             "texts": ("STRING", {"multiline": True, "default": "a cat"})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, width, texts):
        from .tiny_clip import tiny_umt5_clip
        return (tiny_umt5_clip([t for t in texts.splitlines() if t.strip()], width=width),)


NODE_CLASS_MAPPINGS = {"SaltTestConditioning": SaltTestConditioning, "SaltTestUMT5": SaltTestUMT5}
'''


def wan_student_standin(base: dict, seed: int = 9, scale: float = 0.05) -> dict:
    """A 'distilled student' of a Wan stand-in: every tensor changed by full-rank noise, except the modulation
    tables (ComfyUI 0.3.75's LoRA loader does not patch them; see salt_core/lora.py)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v.clone() if k.endswith("modulation") else
            v + scale * v.abs().mean().clamp_min(1e-3) * torch.randn(v.shape, generator=g) for k, v in base.items()}


def write_standins(base: pathlib.Path, models: pathlib.Path) -> None:
    """Random-weight files for every model a shipped workflow needs, and the test-only node pack."""
    from safetensors.torch import save_file
    from comfyui_salt.salt_core.config import WanConfig
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model, student_metadata
    save_model(build_model("toy", seed=0), models / RANDOM_TOY, extra_metadata={"teacher_mode": "teacher_forcing"})
    save_file({"conv_in.weight": torch.zeros(8, 4), "mid_block.attentions.0.proj.bias": torch.zeros(8)},
              str(models / NOT_WAN))
    save_model(build_model(WanConfig(**NATIVE_WAN), seed=1), models / WAN_STANDIN, layout="wan")
    save_model(build_model(WanConfig(**NATIVE_WAN), seed=1), models / WAN_CAUSAL_STANDIN, layout="wan",
               extra_metadata=student_metadata(causal=True))
    save_model(wan_student_standin(build_model(WanConfig(**NATIVE_WAN), seed=1).state_dict()),
               models / WAN_STUDENT_STANDIN, layout="wan", config=WanConfig(**NATIVE_WAN))
    release = build_model(RELEASE_PRESET, seed=2).state_dict()
    torch.save({"generator_ema": {f"model.{k}": v.clone() for k, v in release.items()}}, models / RELEASE_STANDIN)
    (base / "models" / "vae").mkdir(parents=True, exist_ok=True)
    save_file(tiny_wan_vae_state_dict(), str(base / "models" / "vae" / VAE_STANDIN))
    (base / "models" / "vae_approx").mkdir(parents=True, exist_ok=True)
    save_file(tiny_taehv_state_dict(), str(base / "models" / "vae_approx" / TINY_DECODER_STANDIN))
    (base / "input").mkdir(parents=True, exist_ok=True)
    from PIL import Image
    Image.fromarray((torch.rand(40, 24, 3, generator=torch.Generator().manual_seed(4)) * 255).byte().numpy()).save(
        base / "input" / START_FRAME)
    pack = base / "custom_nodes" / "salt_test_nodes"
    pack.mkdir(parents=True, exist_ok=True)
    (pack / "__init__.py").write_text(TEST_NODES)
    (pack / "tiny_clip.py").write_text((ROOT / "tests" / "tiny_clip.py").read_text())
    (base / "input" / REAL_PROMPTS_FILE).write_text("\n".join(REAL_PROMPTS) + "\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui_base")
    write_standins(base, prepare_base(base))
    srv = start_server(base, threads=1)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info", timeout=120)


def toy_asset_installed(asset: str = "toy_teacher") -> bool:
    from comfyui_salt.nodes.toy import TOY_ASSETS
    return pathlib.Path(TOY_ASSETS[asset]).exists()


def api_prompt(name: str, object_info: dict) -> dict:
    """A shipped workflow in API format (node ids as in the UI file), toy assets swapped while they are missing."""
    prompt = convert(json.loads((WORKFLOWS / name).read_text()), object_info)
    for node in prompt.values():
        if node["class_type"] == "SaltToyModel" and not toy_asset_installed(node["inputs"]["asset"]):
            node.update(class_type="SaltLoadCausalModel",
                        inputs={"ckpt_name": RANDOM_TOY, "use_ema": True, "dtype": "fp32"})
        if node["class_type"] == "SaltDistill" and node["inputs"]["teacher"] == "toy" and not toy_asset_installed():
            node["inputs"]["teacher"] = RANDOM_TOY
    return prompt


def nodes_of(prompt: dict, class_type: str) -> list:
    return [node for node in prompt.values() if node["class_type"] == class_type]


def stand_in_text(prompt: dict, width: int) -> None:
    """Replace umT5 (CLIPLoader + CLIPTextEncode) by the test node's seeded conditioning of `width`."""
    for key in [k for k, node in prompt.items() if node["class_type"] == "CLIPLoader"]:
        del prompt[key]
    for seed, node in enumerate(nodes_of(prompt, "CLIPTextEncode")):
        node.update(class_type="SaltTestConditioning", inputs={"width": width, "tokens": 4, "seed": seed})


def webp_frames(path: pathlib.Path) -> list:
    """RGB frames of an animated WEBP as PIL images."""
    from PIL import Image
    frames = []
    with Image.open(path) as webp:
        for i in range(webp.n_frames):
            webp.seek(i)
            frames.append(webp.convert("RGB"))
    return frames


def assert_non_degenerate(frames: list, min_std: float = 2.0, blank_std: float = 1.0) -> None:
    """No frame is blank (a flat colour through lossy WEBP stays below `blank_std`), the clip has spatial
    structure somewhere (std > `min_std`), and it varies in time. This guards the pipeline (blank, constant
    or frozen output); how good the content is, is the oracle metrics' job (the main job prints them)."""
    from PIL import ImageStat
    stds = [max(ImageStat.Stat(frame).stddev) for frame in frames]
    for i, std in enumerate(stds):
        assert std > blank_std, f"frame {i} is blank (std {std:.2f})"
    assert max(stds) > min_std, f"no frame has clear structure (largest std {max(stds):.2f})"
    assert len({f.tobytes() for f in frames}) > 1, "every frame is the same"


def run_ok(server, prompt: dict) -> dict:
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    return entry


# -- the pack in the server ------------------------------------------------------------------------------
def test_the_pack_imports_without_errors(server):
    lines = server.log().splitlines()
    failed = [ln for ln in lines if PACK_NAME in ln and ("IMPORT FAILED" in ln or "Cannot import" in ln
                                                         or "comfy_entrypoint" in ln)]
    assert failed == [], "\n".join(failed)
    assert any(PACK_NAME in ln and "seconds" in ln for ln in lines), "the pack is missing from the import times"
    version = comfyui_version(DEFAULT_COMFYUI_DIR)   # the tree the tests booted, whichever line it is
    assert version and server.get("/system_stats")["system"]["comfyui_version"] == version


def test_every_salt_node_is_listed_by_object_info(object_info):
    missing = [n for n in SALT_NODES + ["SaltTestConditioning"] if n not in object_info]
    assert missing == []
    for name in SALT_NODES:
        assert object_info[name]["category"].startswith("Salt/") and object_info[name]["description"], name
    assert RANDOM_TOY in object_info["SaltLoadCausalModel"]["input"]["required"]["ckpt_name"][1]["options"]
    assert {"toy", RANDOM_TOY} <= set(object_info["SaltDistill"]["input"]["required"]["teacher"][1]["options"])
    assert object_info["SaltSemigroupDefect"]["output_node"] is True


def skip_without_core_nodes(name: str, object_info: dict) -> None:
    """Skip a workflow that needs core nodes this ComfyUI lacks (NEEDS_CORE_NODES), saying which."""
    missing = missing_core_nodes(name, object_info)
    if missing:
        pytest.skip(f"{name} needs {missing}, core nodes of ComfyUI 0.16+; this server is "
                    f"{comfyui_version(DEFAULT_COMFYUI_DIR)} (the 0.33 line runs it)")


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_every_shipped_workflow_converts_against_the_servers_node_list(object_info, name):
    skip_without_core_nodes(name, object_info)
    prompt = convert(json.loads((WORKFLOWS / name).read_text()), object_info)
    assert prompt and all(node["class_type"] in object_info for node in prompt.values())
    assert any(object_info[node["class_type"]]["output_node"] for node in prompt.values()), "nothing is saved"


# -- workflows that need no downloads ---------------------------------------------------------------------
def test_the_toy_streaming_workflow_runs_and_saves_a_twelve_frame_animated_webp(server, object_info):
    prompt = api_prompt("salt_toy_streaming.json", object_info)
    assert prompt["5"]["inputs"]["seed"] == 42 and prompt["5"]["inputs"]["num_chunks"] == 4
    assert prompt["3"]["inputs"]["attention"] == "rolling" and "8" not in prompt   # the Note is dropped
    files = output_files(server, run_ok(server, prompt))
    assert len(files) == 1 and files[0].suffix == ".webp" and files[0].is_file(), files
    frames = webp_frames(files[0])
    assert len(frames) == 12 and frames[0].size == (128, 128)
    assert_non_degenerate(frames)


def test_the_side_by_side_workflow_saves_teacher_and_few_step_columns_in_one_webp(server, object_info):
    prompt = api_prompt("salt_toy_side_by_side.json", object_info)
    teacher, four, two = (prompt[k]["inputs"] for k in ("9", "10", "11"))
    assert (teacher["cfg"], teacher["sampling"], teacher["negative"]) == (3.0, "deterministic", ["4", 0])
    assert len(prompt["6"]["inputs"]["custom_steps"].split(",")) == 40
    assert (four["sampling"], four["cfg"], two["cfg"]) == ("stochastic", 1.0, 1.0)
    files = output_files(server, run_ok(server, prompt))
    assert len(files) == 1 and files[0].suffix == ".webp", files
    frames = webp_frames(files[0])
    assert len(frames) == 12 and frames[0].size == (3 * 128 + 2 * 4, 128)        # three columns, 4 px gaps
    assert_non_degenerate(frames)
    columns = [frames[5].crop((i * 132, 0, i * 132 + 128, 128)).tobytes() for i in range(3)]
    assert len(set(columns)) == 3, "the three samplers gave the same clip"


def test_the_distill_workflow_trains_streams_reports_and_publishes_a_loadable_student(server, object_info):
    prompt = api_prompt("salt_toy_distill.json", object_info)
    assert prompt["1"]["inputs"]["preset"] == "toy-salt" and prompt["1"]["inputs"]["gen_steps"] == 200
    prompt["1"]["inputs"].update(CI_DISTILL)
    entry = run_ok(server, prompt)
    files = output_files(server, entry)
    assert [f.suffix for f in files] == [".webp"]
    frames = webp_frames(files[0])
    assert len(frames) == 12 and frames[0].size == (128, 128)
    assert_non_degenerate(frames)
    export = pathlib.Path(entry["outputs"]["9"]["text"][0])
    assert export == server.base / "output" / "salt_runs" / "ci_distill" / "export" / "student.safetensors"
    assert export.is_file() and (export.parent.parent / "checkpoints" / "step_00000002").is_dir()
    report = entry["outputs"]["8"]["text"][0]
    assert "semigroup defect: " in report and "toy oracle metrics at 2 NFE (4 clips" in report, report
    lora = entry["outputs"]["12"]["text"][0]
    assert "wrote loras/salt/toy_salt_r32.safetensors (rank 32)" in lora and "energy kept" in lora, lora
    assert (server.base / "models" / "loras" / "salt" / "toy_salt_r32.safetensors").is_file()

    # The published student appears in the loader's list and streams in the shipped toy graph.
    published = "salt/ci_distill.safetensors"
    assert (server.base / "models" / "diffusion_models" / published).is_file()   # not models/unet (listed first)
    info = server.get("/object_info/SaltLoadCausalModel")["SaltLoadCausalModel"]
    assert published in info["input"]["required"]["ckpt_name"][1]["options"]
    streaming = api_prompt("salt_toy_streaming.json", object_info)
    streaming["1"] = {"class_type": "SaltLoadCausalModel",
                      "inputs": {"ckpt_name": published, "use_ema": True, "dtype": "fp32"}}
    streaming["7"]["inputs"]["filename_prefix"] = "salt/ci_student"
    assert len(webp_frames(output_files(server, run_ok(server, streaming))[0])) == 12


# -- Wan workflows on stand-ins ---------------------------------------------------------------------------
def test_the_native_wan_workflow_runs_salts_sampler_on_comfys_wan_model_and_vae(server, object_info):
    prompt = api_prompt("salt_wan_bidirectional_4step.json", object_info)
    assert prompt["2"]["inputs"]["shift"] == 5.0 and prompt["10"]["inputs"]["preset"] == "self_forcing_4step"
    assert prompt["11"]["inputs"]["sampler"] == ["9", 0] and prompt["11"]["inputs"]["sigmas"] == ["10", 0]
    stand_in_text(prompt, NATIVE_WAN["text_dim"])
    prompt["1"]["inputs"]["unet_name"] = WAN_STANDIN
    prompt["5"]["inputs"]["vae_name"] = VAE_STANDIN
    prompt["6"]["inputs"].update(width=32, height=48, length=9)                   # 3 latent frames of 6×4
    entry = run_ok(server, prompt)
    frames = webp_frames(output_files(server, entry)[0])
    assert len(frames) == 9 and frames[0].size == (32, 48)
    assert_non_degenerate(frames, min_std=1.0)
    assert "Requested to load WAN21" in server.log() and "Requested to load WanVAE" in server.log()


def test_the_ar_side_by_side_workflow_runs_cores_ar_sampler_and_salts_on_one_causal_model(server, object_info):
    """ComfyUI 0.16+: UNETLoader loads a causal Salt export as core's CausalWanModel (the causal_ar marker);
    SamplerARVideo and SaltStreamingSampler both sample it; the two columns are stitched into one WEBP."""
    name = "salt_wan_ar_side_by_side.json"
    skip_without_core_nodes(name, object_info)
    prompt = api_prompt(name, object_info)
    assert prompt["9"]["inputs"]["num_frame_per_block"] == 3 == prompt["13"]["inputs"]["chunk_frames"]
    assert prompt["11"]["inputs"]["sigmas"] == ["5", 0] == prompt["14"]["inputs"]["sigmas"]
    assert prompt["12"]["inputs"]["model"] == ["1", 0] and prompt["6"]["inputs"]["model"] == ["1", 0]
    stand_in_text(prompt, NATIVE_WAN["text_dim"])
    prompt["1"]["inputs"]["unet_name"] = WAN_CAUSAL_STANDIN
    prompt["4"]["inputs"]["vae_name"] = VAE_STANDIN
    prompt["10"]["inputs"].update(width=32, height=32, length=21)                  # 6 latent frames = 2 chunks
    prompt["14"]["inputs"].update(width=32, height=32, num_chunks=2)
    frames = webp_frames(output_files(server, run_ok(server, prompt))[0])
    assert len(frames) == 21 and frames[0].size == (32 + 4 + 32, 32)             # two columns, a 4 px gap
    for column in (0, 36):
        assert_non_degenerate([f.crop((column, 0, column + 32, 32)) for f in frames], min_std=1.0)
    assert "Requested to load WAN21_CausalAR" in server.log()                   # core's causal model, not WanModel


def test_the_longlive_workflow_streams_a_self_forcing_release_file_through_comfys_vae(server, object_info):
    prompt = api_prompt("salt_causal_streaming_longlive.json", object_info)
    cache, sampler = prompt["5"]["inputs"], prompt["7"]["inputs"]
    assert (cache["attention"], cache["window_frames"], cache["sink_frames"], cache["relative_rope"]) == (
        "sink", 12, 3, True)
    assert sampler["switch_positive"] == ["4", 0] and sampler["switch_at_chunk"] == 5
    stand_in_text(prompt, RELEASE_TEXT_DIM)
    prompt["1"]["inputs"].update(ckpt_name=RELEASE_STANDIN, dtype="fp32")
    prompt["8"]["inputs"]["vae_name"] = VAE_STANDIN
    sampler.update(width=32, height=32, num_chunks=5, switch_at_chunk=3)      # 15 latent frames: past the window
    entry = run_ok(server, prompt)
    frames = webp_frames(output_files(server, entry)[0])
    assert len(frames) == 4 * (5 * 3 - 1) + 1 and frames[0].size == (32, 32)
    assert_non_degenerate(frames, min_std=1.0)


def test_a_salt_model_file_streams_with_fp8_weights_loaded_by_comfys_model_management(server, object_info):
    prompt = api_prompt("salt_causal_streaming_longlive.json", object_info)
    stand_in_text(prompt, RELEASE_TEXT_DIM)
    prompt["1"]["inputs"].update(ckpt_name=RELEASE_STANDIN, dtype="fp32", weight_dtype="fp8_e4m3fn")
    prompt["8"]["inputs"]["vae_name"] = VAE_STANDIN
    prompt["7"]["inputs"].update(width=32, height=32, num_chunks=2, switch_at_chunk=1)
    loads = server.log().count("Requested to load WanModel")      # Salt's module, as ComfyUI's log names it
    frames = webp_frames(output_files(server, run_ok(server, prompt))[0])
    assert len(frames) == 4 * (2 * 3 - 1) + 1 and server.log().count("Requested to load WanModel") == loads + 1


def saved_latent(server, entry: dict, node: str) -> torch.Tensor:
    """The LATENT a SaveLatent node wrote (safetensors key latent_tensor)."""
    from safetensors.torch import load_file
    item = entry["outputs"][node]["latents"][0]
    return load_file(str(server.base / "output" / item["subfolder"] / item["filename"]))["latent_tensor"]


def extract_prompt(name: str, rank: int) -> dict:
    """An API prompt: SaltExtractLoRA of the Wan student stand-in on its base, written as loras/salt/<name>."""
    return {"1": {"class_type": "SaltLoadCausalModel", "inputs": {"ckpt_name": WAN_STANDIN, "use_ema": True,
                                                                  "dtype": "fp32"}},
            "2": {"class_type": "SaltLoadCausalModel", "inputs": {"ckpt_name": WAN_STUDENT_STANDIN, "use_ema": True,
                                                                  "dtype": "fp32"}},
            "3": {"class_type": "SaltExtractLoRA", "inputs": {"base": ["1", 0], "student": ["2", 0], "rank": rank,
                                                              "include_diffs": True, "dtype": "fp32", "name": name}}}


def test_the_lora_workflow_applies_an_extracted_full_rank_lora_that_reproduces_the_student(server, object_info):
    """SaltExtractLoRA (in the server) writes student − base at full rank; the shipped LoRA workflow's
    LoraLoaderModelOnly on the base then samples what UNETLoader on the student samples (same seed), to 1e-4
    relative (float32 on CPU; ComfyUI adds the LoRA to the weights in float32)."""
    extract = extract_prompt("ci_full", 4096)
    report = run_ok(server, extract)["outputs"]["3"]["text"][0]
    assert "loras/salt/ci_full.safetensors" in report and "min 1.0000 over factored layers" in report, report
    loras = server.get("/object_info/LoraLoaderModelOnly")["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]
    assert "salt/ci_full.safetensors" in loras

    prompt = api_prompt("salt_wan_lora_4step.json", object_info)
    assert prompt["15"]["class_type"] == "LoraLoaderModelOnly" and prompt["2"]["inputs"]["model"] == ["15", 0]
    assert prompt["15"]["inputs"]["strength_model"] == 1.0 and prompt["15"]["inputs"]["model"] == ["1", 0]
    stand_in_text(prompt, NATIVE_WAN["text_dim"])
    prompt["1"]["inputs"]["unet_name"] = WAN_STANDIN
    prompt["15"]["inputs"]["lora_name"] = "salt/ci_full.safetensors"
    prompt["5"]["inputs"]["vae_name"] = VAE_STANDIN
    prompt["6"]["inputs"].update(width=32, height=48, length=9)
    prompt["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "salt/lora"}}
    entry = run_ok(server, prompt)
    frames = webp_frames(output_files(server, entry)[0])
    assert len(frames) == 9 and frames[0].size == (32, 48)
    assert_non_degenerate(frames, min_std=1.0)
    with_lora = saved_latent(server, entry, "20")

    student = json.loads(json.dumps(prompt))
    student["1"]["inputs"]["unet_name"] = WAN_STUDENT_STANDIN
    student["2"]["inputs"]["model"] = ["1", 0]
    del student["15"]
    student["20"]["inputs"]["filename_prefix"] = "salt/student"
    reference = saved_latent(server, run_ok(server, student), "20")
    base = json.loads(json.dumps(prompt))
    base["15"]["inputs"]["strength_model"] = 0.0
    base["20"]["inputs"]["filename_prefix"] = "salt/base"
    without = saved_latent(server, run_ok(server, base), "20")
    assert with_lora.shape == reference.shape == (1, 16, 3, 6, 4)
    assert_close(with_lora, reference, 1e-4, "base + full-rank LoRA vs student")
    assert (without - reference).abs().max() > 100 * (with_lora - reference).abs().max(), "the LoRA did nothing"


def test_the_i2v_workflow_encodes_the_start_image_with_comfys_vae_and_streams_after_it(server, object_info):
    prompt = api_prompt("salt_causal_i2v.json", object_info)
    sampler = prompt["7"]["inputs"]
    assert sampler["start_image"] == ["12", 0] and sampler["vae"] == ["8", 0] and "switch_positive" not in sampler
    assert prompt["12"]["inputs"]["image"] == START_FRAME and prompt["5"]["inputs"]["attention"] == "sink"
    stand_in_text(prompt, RELEASE_TEXT_DIM)
    prompt["1"]["inputs"].update(ckpt_name=RELEASE_STANDIN, dtype="fp32")
    prompt["8"]["inputs"]["vae_name"] = VAE_STANDIN
    sampler.update(width=32, height=32, num_chunks=2)                       # 1 + 6 latent frames
    frames = webp_frames(output_files(server, run_ok(server, prompt))[0])
    assert len(frames) == 4 * (1 + 2 * 3 - 1) + 1 and frames[0].size == (32, 32)
    assert_non_degenerate(frames, min_std=1.0)


# -- errors ----------------------------------------------------------------------------------------------
def test_salt_distill_embeds_a_real_scale_runs_prompts_with_a_clip_from_the_graph(server):
    from safetensors.torch import load_file
    from comfyui_salt.training.prompts import WAN_NEGATIVE_PROMPT
    distill = dict(preset="salt-causal-forcing", teacher=RELEASE_STANDIN, student_init="teacher",
                   critic_init="teacher", gen_steps=1, batch_size=1, seed=0, name="ci_real_clip",
                   overrides=f"prompts_file={REAL_PROMPTS_FILE}; {REAL_OVERRIDES}")   # a name in ComfyUI's input/
    prompt = {"1": {"class_type": "SaltTestUMT5",
                    "inputs": {"width": RELEASE_TEXT_DIM, "texts": "\n".join(REAL_PROMPTS + [WAN_NEGATIVE_PROMPT])}},
              "2": {"class_type": "SaltDistill", "inputs": {**distill, "clip": ["1", 0]}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}}
    entry = run_ok(server, prompt)
    folder = server.base / "output" / "salt_runs" / "ci_real_clip"
    assert entry["outputs"]["3"]["text"][0] == str(folder / "export" / "student.safetensors")
    embeds = load_file(str(folder / "prompt_embeds.safetensors"))["embeds"]
    assert embeds.shape == (len(REAL_PROMPTS) + 1, 512, RELEASE_TEXT_DIM)
    real = (embeds.abs().sum(-1) > 0).sum(-1)                   # tokens per prompt; the rest is zero padding
    assert (real > 0).all() and (real < 512).all() and real[-1] > real[:-1].max()   # the negative prompt is longest

    # Without the CLIP, a fresh run name fails naming both fixes, and the queue goes on.
    entry = server.run({**prompt, "2": {"class_type": "SaltDistill", "inputs": {**distill, "name": "ci_no_clip"}}})
    assert entry["status"]["status_str"] == "error"
    error = history_error(entry)
    assert error["node_type"] == "SaltDistill", error
    assert "clip input" in error["exception_message"] and "text_encoder=" in error["exception_message"], error


def changed_prompt(base: dict, node: str, **inputs) -> dict:
    """A deep copy of API prompt `base` with `inputs` set on `node`."""
    prompt = json.loads(json.dumps(base))
    prompt[node]["inputs"].update(inputs)
    return prompt


def test_bad_inputs_fail_with_node_errors_and_the_server_keeps_working(server, object_info):
    base = api_prompt("salt_toy_streaming.json", object_info)
    changed = functools.partial(changed_prompt, base)

    # Out-of-range widgets and unknown files are rejected when the prompt is queued, naming node and input.
    status, response = server.queue(changed("4", preset="uniform", nfe=9))
    assert status == 400 and "4" in response["node_errors"], response
    assert "nfe" in json.dumps(response["node_errors"]["4"]) and "8" in json.dumps(response["node_errors"]["4"])
    missing = json.loads(json.dumps(base))
    missing["1"] = {"class_type": "SaltLoadCausalModel",
                    "inputs": {"ckpt_name": "missing.safetensors", "use_ema": True, "dtype": "fp32"}}
    status, response = server.queue(missing)
    assert status == 400 and "missing.safetensors" in json.dumps(response["node_errors"]["1"]), response
    distill = api_prompt("salt_toy_distill.json", object_info)
    distill["1"]["inputs"]["name"] = "../outside"
    status, response = server.queue(distill)
    assert status == 400 and "plain folder name" in json.dumps(response["node_errors"]["1"]), response

    # Files and sizes that only fail when run give an execution error from the node that raised.
    wrong = json.loads(json.dumps(missing))
    wrong["1"]["inputs"]["ckpt_name"] = NOT_WAN
    error = history_error(server.run(wrong))
    assert error["node_type"] == "SaltLoadCausalModel"
    assert NOT_WAN in error["exception_message"] and "Wan 2.1 T2V" in error["exception_message"]
    error = history_error(server.run(changed("5", width=18)))
    assert error["node_type"] == "SaltStreamingSampler" and "width=18" in error["exception_message"]

    server.check_alive()
    after = changed("5", seed=3, num_chunks=1)
    after["7"]["inputs"]["filename_prefix"] = "salt/after_errors"
    entry = run_ok(server, after)
    assert [f.name.startswith("after_errors") for f in output_files(server, entry)] == [True]


def test_bad_numbers_and_sizes_end_in_node_errors_never_in_success(server, object_info):
    """Issue 11 over HTTP: widget ranges are the UI's; a prompt may carry NaN or any size (JSON allows NaN)."""
    changed = functools.partial(changed_prompt, api_prompt("salt_toy_streaming.json", object_info))

    for node, inputs, words in [
        ("4", dict(preset="custom", custom_steps="1000, nan, 250"), "raw step list"),   # was an all-black success
        ("4", dict(shift=float("nan")), "shift=nan"),
        ("5", dict(cfg=float("nan")), "cfg=nan"),
        ("5", dict(cfg=float("inf")), "cfg"),        # ComfyUI's own range check refuses inf at queue time
        ("3", dict(context_noise=float("nan")), "context_noise=nan"),
    ]:
        status, response = server.queue(changed(node, **inputs))
        if status == 400:
            assert words in json.dumps(response["node_errors"][node]), response
            continue
        entry = server.wait(response["prompt_id"])
        assert entry["status"]["status_str"] == "error", (inputs, entry["status"])
        error = history_error(entry)
        assert error["node_id"] == node and words in error["exception_message"], error
    error = history_error(server.run(changed("5", width=4096, height=4096, batch_size=64)))
    assert error["node_type"] == "SaltStreamingSampler" and "ComfyUI's free memory" in error["exception_message"]
    assert error["exception_type"].endswith("MemoryError"), error

    # A bad run name is attached to the `name` input only.
    distill = api_prompt("salt_toy_distill.json", object_info)
    distill["1"]["inputs"]["name"] = "../outside"
    status, response = server.queue(distill)
    errors = response["node_errors"]["1"]["errors"]
    assert status == 400 and [e["extra_info"]["input_name"] for e in errors] == ["name"], errors
    server.check_alive()


def test_hostile_inputs_on_the_newest_surfaces_end_in_short_errors_and_the_server_lives(server, object_info):
    """Issue 23 over HTTP: client paths resolve inside ComfyUI's folders only (one refusal for missing and outside),
    a thread count cannot take the server down, an error never echoes a huge input, JSON objects for combos are
    named; after each the server answers and nothing outside its folders was read."""
    distill = api_prompt("salt_toy_distill.json", object_info)
    distill["1"]["inputs"].update(CI_DISTILL)
    changed = functools.partial(changed_prompt, distill)
    streaming = functools.partial(changed_prompt, api_prompt("salt_toy_streaming.json", object_info))
    refusals = []
    for prompt, node, words in [
        (changed("1", overrides="prompts_file=/etc/passwd"), "1", "is not a file in ComfyUI's input folder"),
        (changed("1", overrides="prompts_file=/no/such/file"), "1", "is not a file in ComfyUI's input folder"),
        (changed("1", overrides="prompts_file=../../etc/passwd"), "1", "is not a file in ComfyUI's input folder"),
        (changed("1", overrides="threads=4096"), "1", "threads=4096; expected an integer in [0, 256]"),
        (changed("1", overrides="x" * (4 << 20)), "1", "(4194304 characters) is not `field=value`"),
        # 0.3.75 leaves V3 combos to the node (our message); 0.33 refuses them at queue time (its own)
        (streaming("3", attention={"kind": "full"}), "3", ("attention={'kind': 'full'}; expected one of",
                                                           "attention: {'kind': 'full'} not in ['full'")),
    ]:
        status, response = server.queue(prompt)
        if status == 400:
            message = json.dumps(response["node_errors"][node])
        else:
            error = history_error(server.wait(response["prompt_id"]))
            assert error["node_id"] == node, error
            message = error["exception_message"]
        assert any(w in message for w in ((words,) if isinstance(words, str) else words)), message[:3000]
        assert len(message) < 2000, message[:3000]
        refusals.append(message)
        assert server.get("/system_stats")["system"]["comfyui_version"]          # alive and answering
    paths = [m.split("prompts_file=")[1].split(" is not")[0] for m in refusals[:3]]
    assert len({m.replace(p, "NAME") for m, p in zip(refusals[:3], paths)}) == 1     # no existence oracle
    assert "root:" not in "".join(refusals)                                           # /etc/passwd was not read
    server.check_alive()


def test_a_nan_lora_strength_and_a_repeated_lora_name_over_http(server, object_info):
    """Issue 23 over HTTP: LoraLoaderModelOnly at strength NaN ends in an error (never a NaN 'success'), and
    SaltExtractLoRA queued twice with one name keeps the first file and numbers the second."""
    extract = extract_prompt("ci_twice", 8)
    first = run_ok(server, extract)["outputs"]["3"]["text"][0]
    written = server.base / "models" / "loras" / "salt" / "ci_twice.safetensors"
    before = written.read_bytes()
    extract["3"]["inputs"]["rank"] = 4
    second = run_ok(server, extract)["outputs"]["3"]["text"][0]
    assert "salt/ci_twice.safetensors" in first and "salt/ci_twice_00001_.safetensors" in second, second
    assert written.read_bytes() == before

    prompt = api_prompt("salt_wan_lora_4step.json", object_info)
    stand_in_text(prompt, NATIVE_WAN["text_dim"])
    prompt["1"]["inputs"]["unet_name"] = WAN_STANDIN
    prompt["15"]["inputs"].update(lora_name="salt/ci_twice.safetensors", strength_model=float("nan"))
    prompt["5"]["inputs"]["vae_name"] = VAE_STANDIN
    prompt["6"]["inputs"].update(width=32, height=48, length=9)
    status, response = server.queue(prompt)
    if status == 400:                          # ComfyUI refused NaN itself
        assert "strength_model" in json.dumps(response["node_errors"]), response
    else:
        entry = server.wait(response["prompt_id"])
        assert entry["status"]["status_str"] == "error", entry["status"]
        error = history_error(entry)
        assert "non-finite" in error["exception_message"] and "LoRA strengths" in error["exception_message"], error
    assert server.get("/system_stats")["system"]["comfyui_version"]


def live_stream_prompt(stream_id: str, **kw) -> dict:
    """An API prompt streaming the random toy model live (sink cache, 2 steps) until stopped, as `stream_id`."""
    inputs = dict(model=["1", 0], positive=["2", 0], cache_options=["3", 0], sigmas=["4", 0], seed=3, width=16,
                  height=16, max_chunks=100000, stream_id=stream_id, continue_stream=True)
    inputs.update(kw)
    return {"1": {"class_type": "SaltLoadCausalModel", "inputs": {"ckpt_name": RANDOM_TOY, "use_ema": True,
                                                                  "dtype": "fp32"}},
            "2": {"class_type": "SaltToyTextEncode", "inputs": {"text": "a red disc moving left"}},
            "3": {"class_type": "SaltCacheOptions", "inputs": dict(
                chunk_frames=3, attention="sink", window_frames=9, sink_frames=3, relative_rope=True,
                context_noise=0.0, max_frames=21)},
            "4": {"class_type": "SaltFewStepSigmas", "inputs": {"preset": "2step", "nfe": 2, "shift": 3.0,
                                                                "custom_steps": ""}},
            "5": {"class_type": "SaltLiveStream", "inputs": inputs}}


def test_comfys_cancel_ends_a_live_stream_and_queueing_again_continues_it(server):
    """ComfyUI's own Cancel (POST /interrupt) while the stream runs: the prompt ends interrupted, the stream's
    state stays on the server, and the next queue run continues its chunk count."""
    status, response = server.queue(live_stream_prompt("ci_cancel"))
    assert status == 200, response
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        code, state = server.request("/salt/live/ci_cancel/status")
        if code == 200 and state["chunks"] >= 5:
            break
        time.sleep(0.2)
    assert server.request("/interrupt", {})[0] == 200
    entry = server.wait(response["prompt_id"])
    assert entry["status"]["status_str"] == "error"              # ComfyUI records an interrupted prompt so
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    before = server.request("/salt/live/ci_cancel/status")[1]
    assert before["chunks"] >= 5 and not before["running"]
    status, response = server.queue(live_stream_prompt("ci_cancel", max_chunks=2))
    assert server.wait(response["prompt_id"])["status"]["status_str"] == "success"
    assert server.request("/salt/live/ci_cancel/status")[1]["chunks"] == before["chunks"] + 2
    server.check_alive()


def test_a_live_stream_shows_frames_while_it_runs_obeys_its_routes_and_continues_when_queued_again(server):
    """SaltLiveStream in the real server: frames arrive over the websocket before the prompt finishes; Pause stops
    them, Resume and a typed prompt are taken at chunk boundaries, Stop ends the prompt with success, bad route
    input gets a 4xx; queueing again continues the stream's chunk count."""
    import asyncio
    import urllib.request
    import aiohttp

    def live_prompt(**kw):
        return live_stream_prompt("ci_live", **kw)

    def control(action, body=None, raw=None, method=None, content_type="application/json"):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(f"{server.url}/salt/live/ci_live/{action}", data=data,
                                     method=method or ("GET" if action == "status" else "POST"),
                                     headers={"Content-Type": content_type} if content_type else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")        # HEAD: no body

    async def scenario():
        chunks, timeline = [], {}
        async with aiohttp.ClientSession() as session:
            # the client that queues (the runner queues as "salt"): frames go to it, as ComfyUI's previews do
            async with session.ws_connect(f"{server.url.replace('http', 'ws')}/ws?clientId=salt") as ws:
                status, response = server.queue(live_prompt())
                assert status == 200, response
                prompt_id = response["prompt_id"]

                async def until(count, timeout=120):
                    deadline = asyncio.get_event_loop().time() + timeout
                    while len(chunks) < count:
                        msg = await asyncio.wait_for(ws.receive(), deadline - asyncio.get_event_loop().time())
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            event = json.loads(msg.data)
                            if event.get("type") == "salt.live" and event["data"]["stream"] == "ci_live":
                                assert event["data"]["frames"][0].startswith("data:image/jpeg;base64,")
                                chunks.append(event["data"]["chunk"])
                await until(3)
                timeline["running"] = server.get(f"/history/{prompt_id}").get(prompt_id) is None
                assert control("pause")[0] == 200
                await asyncio.sleep(1.0)
                paused_at = len(chunks)
                while True:                                 # drain what was in flight
                    try:
                        msg = await asyncio.wait_for(ws.receive(), 1.5)
                    except asyncio.TimeoutError:
                        break
                    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "salt.live":
                        chunks.append(json.loads(msg.data)["data"]["chunk"])
                timeline["paused_extra"] = len(chunks) - paused_at
                timeline["bad"] = [control("prompt", {"text": ""})[0], control("prompt", raw=b"not json")[0],
                                   control("explode")[0], control("stop", method="GET")[0],      # GET only reads
                                   control("prompt", raw=b"[" * 30_000 + b"]" * 30_000)[0],     # deeper than JSON
                                   control("prompt", raw=b" " * (65 << 10) + b"{}")[0],        # over 64 KiB
                                   control("prompt", {"text": "a purple elephant"})[0],         # not toy words
                                   control("stop", method="HEAD")[0],                          # HEAD changes nothing
                                   control("stop", raw=b"{}", content_type="text/plain")[0],    # a cross-site form
                                   control("pause", content_type=None)[0]]                      # or an empty POST
                assert control("prompt", {"text": "a blue square moving up"})[0] == 200
                assert control("resume")[0] == 200
                await until(len(chunks) + 3)
                assert control("stop")[0] == 200
                entry = server.wait(prompt_id)
                timeline["status"] = entry["status"]["status_str"]
                timeline["after_stop"] = control("status")[1]
        return chunks, timeline
    chunks, timeline = asyncio.run(scenario())
    assert timeline["running"], "the frames came only after the prompt finished"
    assert timeline["paused_extra"] <= 3, timeline                                # ≤ the pushes in flight
    assert timeline["bad"] == [400, 400, 404, 405, 400, 413, 400, 405, 415, 415], timeline
    assert timeline["status"] == "success" and timeline["after_stop"]["prompt"] == "a blue square moving up"
    assert chunks == list(range(1, len(chunks) + 1))
    status, response = server.queue(live_prompt(max_chunks=2))      # queued again: the same stream continues
    entry = server.wait(response["prompt_id"])
    before = timeline["after_stop"]["chunks"]                       # ≥ the last chunk seen (one may follow the stop)
    assert before >= chunks[-1] and entry["status"]["status_str"] == "success"
    assert control("status")[1]["chunks"] == before + 2
    status, response = server.queue(live_prompt(max_chunks=2))      # the same inputs again: not a cached output
    assert server.wait(response["prompt_id"])["status"]["status_str"] == "success"
    assert control("status")[1]["chunks"] == before + 4
    status, response = server.request("/salt/live/nope/stop", {})
    assert status == 404 and "no live stream" in response["error"]
    server.check_alive()


def test_a_browser_slower_than_the_stream_gets_chunks_without_frames_and_nothing_piles_up(server):
    """A websocket client that reads nothing while 1,000 chunks stream (a connection slower than the stream): once
    the connection's buffers are full, ComfyUI's one sending coroutine waits on that socket and pushes queue behind
    it in the server; past the backlog the node pushes chunks without their frames. Once the client reads, every
    chunk is announced in order, the late ones with their frame count as "skipped"."""
    import asyncio
    import aiohttp

    async def scenario():
        events = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url.replace('http', 'ws')}/ws?clientId=salt",
                                          max_msg_size=0) as ws:
                status, response = server.queue(live_stream_prompt("ci_slow", max_chunks=1000))
                assert status == 200, response
                entry = await asyncio.to_thread(server.wait, response["prompt_id"])   # reading nothing meanwhile
                while True:
                    try:
                        msg = await asyncio.wait_for(ws.receive(), 10)
                    except asyncio.TimeoutError:
                        break
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    event = json.loads(msg.data)
                    if event.get("type") == "salt.live" and event["data"]["stream"] == "ci_slow":
                        events.append(event["data"])
                    if event.get("type") == "salt.live.end":
                        break
        return entry, events
    entry, events = asyncio.run(scenario())
    assert entry["status"]["status_str"] == "success"
    assert [e["chunk"] for e in events] == list(range(1, 1001))
    skipped = [e for e in events if e.get("skipped")]
    assert skipped and all(e["frames"] == [] and e["skipped"] == 3 for e in skipped), events[-1]
    shown = [e for e in events if e["frames"]]
    assert shown and len(shown) < 1000 and all(len(e["frames"]) == 3 for e in shown)
    server.check_alive()


def test_the_toy_live_workflow_runs_and_saves_the_frames_of_its_run(server, object_info):
    prompt = api_prompt("salt_toy_live.json", object_info)
    live = prompt["5"]["inputs"]
    assert (live["max_chunks"], live["stream_id"], live["continue_stream"]) == (400, "toy_live", True)
    assert prompt["3"]["inputs"]["attention"] == "sink" and prompt["3"]["inputs"]["relative_rope"] is True
    live.update(max_chunks=4, stream_id="ci_toy_live")
    frames = webp_frames(output_files(server, run_ok(server, prompt))[0])
    assert len(frames) == 12 and frames[0].size == (128, 128)
    assert_non_degenerate(frames)


def test_the_wan_live_workflow_decodes_each_chunk_with_comfys_vae_as_it_streams(server, object_info):
    """On stand-ins: a Self Forcing-style release file, the test conditioning, the tiny Wan VAE. The live node's
    frames are the VAE's chunk by chunk (WanChunkDecoder): 3 chunks of 3 latent frames → 1 + 4·8 = 33 frames (32 on
    a ComfyUI that decodes pairs, whose last pair is unfinished)."""
    prompt = api_prompt("salt_wan_live.json", object_info)
    live = prompt["7"]["inputs"]
    assert live["vae"] == ["6", 0] and live["clip"] == ["2", 0] and prompt["8"]["inputs"]["images"] == ["7", 0]
    stand_in_text(prompt, RELEASE_TEXT_DIM)
    del live["clip"]                                  # the test conditioning replaces the CLIP loader
    prompt["1"]["inputs"].update(ckpt_name=RELEASE_STANDIN, dtype="fp32")
    prompt["6"]["inputs"]["vae_name"] = VAE_STANDIN
    live.update(width=32, height=32, max_chunks=3, stream_id="ci_wan_live")
    frames = webp_frames(output_files(server, run_ok(server, prompt))[0])
    assert len(frames) in (32, 33) and frames[0].size == (32, 32)
    assert_non_degenerate(frames, min_std=1.0)


def test_the_wan_live_stream_can_show_its_frames_with_a_tiny_decoder_from_vae_approx(server, object_info):
    """live_decoder lists the Wan 2.1 tiny decoders in models/vae_approx (the name ComfyUI's previews look for);
    chosen, it decodes the stream without the vae input: 2 chunks of 3 latent frames → 1 + 4·5 = 21 frames."""
    options = object_info["SaltLiveStream"]["input"]["optional"]["live_decoder"]
    assert TINY_DECODER_STANDIN in json.dumps(options) and "vae" in json.dumps(options)
    prompt = api_prompt("salt_wan_live.json", object_info)
    live = prompt["7"]["inputs"]
    stand_in_text(prompt, RELEASE_TEXT_DIM)
    del live["clip"], live["vae"]
    prompt["1"]["inputs"].update(ckpt_name=RELEASE_STANDIN, dtype="fp32")
    live.update(width=32, height=32, max_chunks=2, stream_id="ci_wan_tiny", live_decoder=TINY_DECODER_STANDIN)
    frames = webp_frames(output_files(server, run_ok(server, prompt))[0])
    assert len(frames) == 21 and frames[0].size == (32, 32)
