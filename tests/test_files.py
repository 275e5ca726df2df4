"""weights.files: reading, writing and loading checkpoint files in every layout and format."""
import json
import os
import re

import pytest
import torch
from safetensors import safe_open

from comfyui_salt.salt_core import layouts
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.weights import files


class NotATensor:
    """A custom class a weights-only load must refuse to construct."""


def assert_same_tensors(a, b):
    """Same keys and bit-identical tensors (dtype included)."""
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def velocity(model, cfg, seed=0):
    """The model's prediction on a fixed small input shaped for `cfg`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 2, 8, 8, generator=g)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([400.0]), context)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_every_layout_round_trips_through_save_model_and_load_model(tmp_path, layout, suffix):
    model = build_model("tiny", seed=0)
    path = tmp_path / f"model{suffix}"
    files.save_model(model, path, layout=layout)
    # Torch files carry no config: the head count of 'tiny' (dim 64) must then be given.
    loaded, found = files.load_model(path, num_heads=None if suffix == ".safetensors" else 4)
    assert found == ("self_forcing" if layout == "longlive" else layout)
    assert loaded.cfg == model.cfg or suffix == ".pt"
    assert_same_tensors(loaded.state_dict(), model.state_dict())
    # Equal weights, but kernels may take other paths for differently aligned memory (mmap vs fresh).
    assert torch.allclose(velocity(loaded, model.cfg), velocity(model, model.cfg), rtol=0, atol=1e-5)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


def test_release_safetensors_store_each_tensor_once_and_read_back_nested(tmp_path):
    model = build_model("tiny", seed=0)
    path = tmp_path / "release.safetensors"
    files.save_model(model, path, layout="self_forcing")
    with safe_open(str(path), framework="pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("generator_ema.model.") for k in keys)
    assert metadata["salt_layout"] == "self_forcing" and json.loads(metadata["salt_config"])["dim"] == 64
    obj, _ = files.read_checkpoint(path)
    assert set(obj) == {"generator", "generator_ema"}
    assert obj["generator"]["model.head.modulation"] is obj["generator_ema"]["model.head.modulation"]


def test_aliased_and_overlapping_tensors_save_to_safetensors(tmp_path):
    base = torch.arange(12.0)
    sd = {"a": base, "b": base, "c": base[4:8], "d": base.view(3, 4).t()}
    path = tmp_path / "shared.safetensors"
    files.save_model(sd, path)
    assert_same_tensors(files.read_checkpoint(path)[0], sd)


def test_load_model_casts_to_the_requested_dtype_and_honours_use_ema(tmp_path):
    ema, gen = build_model("tiny", seed=0).state_dict(), build_model("tiny", seed=1).state_dict()
    release = {"generator": layouts.from_wan_state_dict(gen, "self_forcing")["generator"],
               "generator_ema": layouts.from_wan_state_dict(ema, "self_forcing")["generator_ema"],
               "critic": {"model.x": torch.zeros(1)}}
    torch.save(release, tmp_path / "sf.pt")
    model, layout = files.load_model(tmp_path / "sf.pt", preset="tiny", dtype=torch.bfloat16)
    assert layout == "self_forcing" and model.patch_embedding.weight.dtype == torch.bfloat16
    assert torch.equal(model.head.modulation, ema["head.modulation"].to(torch.bfloat16))
    model, _ = files.load_model(tmp_path / "sf.pt", preset="tiny", use_ema=False)
    assert torch.equal(model.head.modulation, gen["head.modulation"])


def test_a_truncated_file_is_refused_with_its_path_in_the_message(tmp_path):
    model = build_model("tiny", seed=0)
    for name in ("model.safetensors", "model.pt"):
        path = tmp_path / name
        files.save_model(model, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="truncated or corrupt") as info:
            files.load_model(path)
        assert str(path) in str(info.value)


def test_a_missing_file_raises_FileNotFoundError_naming_the_path(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        files.read_checkpoint(path)


def test_an_unsupported_extension_is_refused_by_name(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=r"'\.gguf'"):
        files.read_checkpoint(path)


def test_a_checkpoint_of_another_shape_names_the_layout_missing_keys_preset_and_path(tmp_path):
    path = tmp_path / "tiny.safetensors"
    files.save_model(build_model("tiny", seed=0), path, layout="comfyui")
    with pytest.raises(layouts.LayoutError) as info:
        files.load_model(path, preset="toy")
    message = str(info.value)
    for word in (str(path), "'comfyui'", "missing", "shape", "pick preset 'tiny'"):
        assert word in message, word


def test_an_unknown_layout_file_names_its_keys_and_the_supported_layouts(tmp_path):
    path = tmp_path / "vae.pt"
    torch.save({"decoder.conv_in.weight": torch.zeros(2), "encoder.conv_in.weight": torch.zeros(2)}, path)
    with pytest.raises(layouts.LayoutError) as info:
        files.load_model(path)
    for word in (str(path), "decoder.conv_in.weight", "self_forcing"):
        assert word in str(info.value), word


def test_a_pickle_holding_a_custom_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "trainer": NotATensor()}, path)
    with pytest.raises(ValueError, match="never unpickles arbitrary code") as info:
        files.read_checkpoint(path)
    assert str(path) in str(info.value) and "NotATensor" in str(info.value)


def test_an_fsdp_wrapped_release_file_loads(tmp_path):
    model = build_model("tiny", seed=0)
    wrapped = {f"model._fsdp_wrapped_module.{k}".replace("blocks.0.", "blocks.0._checkpoint_wrapped_module."): v
               for k, v in model.state_dict().items()}
    torch.save({"generator": wrapped}, tmp_path / "fsdp.pt")
    loaded, layout = files.load_model(tmp_path / "fsdp.pt", num_heads=4)
    assert layout == "self_forcing"
    assert_same_tensors(loaded.state_dict(), model.state_dict())


def test_a_longlive_file_loads_with_its_lora_merged(tmp_path):
    sd = build_model("tiny", seed=0).state_dict()
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(8, 64, generator=g), torch.randn(64, 8, generator=g)
    lora = {"base_model.model.blocks.1.self_attn.v.lora_A.weight": A,
            "base_model.model.blocks.1.self_attn.v.lora_B.weight": B}
    torch.save(layouts.from_wan_state_dict(sd, "self_forcing") | {"generator_lora": lora}, tmp_path / "ll.pt")
    model, layout = files.load_model(tmp_path / "ll.pt", preset="tiny")
    assert layout == "longlive"
    expected = sd["blocks.1.self_attn.v.weight"] + B @ A  # alpha defaults to the rank
    assert torch.allclose(model.blocks[1].self_attn.v.weight, expected, atol=1e-5)
    # a malformed alpha is reported with the file and the key (the host estimate reads the LoRA first: it raised a
    # bare ValueError naming neither)
    lora["base_model.model.blocks.1.self_attn.v.alpha"] = torch.ones(3)
    torch.save(layouts.from_wan_state_dict(sd, "self_forcing") | {"generator_lora": lora}, tmp_path / "bad.pt")
    with pytest.raises(layouts.LayoutError, match=r"load_model\('.*bad\.pt'\): merge_lora: LoRA alpha "
                                                 r"'base_model\.model\.blocks\.1\.self_attn\.v\.alpha' is a 1-D"):
        files.load_model(tmp_path / "bad.pt", preset="tiny")


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    files.save_model(build_model("tiny", seed=0), path)
    before = path.read_bytes()

    def torn_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "save_file", torn_write)
    with pytest.raises(KeyboardInterrupt):
        files.save_model(build_model("tiny", seed=1), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes and umask")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_saved_file_has_the_mode_any_new_file_gets(tmp_path, umask):
    """0666 less the umask, as a plain open() gives (ComfyUI's own outputs): a server running as another user
    reads an export or a LoRA (a private temp file's 0600 was kept by the rename)."""
    old = os.umask(umask)
    try:
        files.save_model(build_model("tiny", seed=0), tmp_path / "model.safetensors")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777
    assert mode("model.safetensors") == mode("plain") == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "plain"]


def test_a_diffusers_save_pretrained_file_loads_and_predicts_like_diffusers(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    reference = diffusers.WanTransformer3DModel(
        num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=64, freq_dim=32,
        ffn_dim=256, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6).eval()
    reference.save_pretrained(tmp_path / "transformer")
    model, layout = files.load_model(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    assert layout == "diffusers" and model.cfg.num_heads == 2  # inferred: dim 256 // head dim 128
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 8, 64, generator=g)
    with torch.no_grad():
        expected = reference(x, torch.tensor([400.0]), context, return_dict=False)[0]
        got = model(x, torch.tensor([400.0]), context)
    err = (got - expected).abs()
    assert err.max() < 1e-4 * expected.abs().max(), f"max err {err.max():.3g}, mean err {err.mean():.3g}"


def test_a_student_written_as_the_toy_asset_loads_by_its_role_with_the_same_weights(tmp_path):
    from comfyui_salt.weights.files import export_student
    from comfyui_salt.toy.shipped import load_toy_asset, write_toy_student
    student = build_model("toy", seed=3)
    export = export_student(student, str(tmp_path / "run"))[0]
    dest = write_toy_student(export, str(tmp_path / "toy_salt_student.safetensors"), "toy-salt", 200)
    model, role, description = load_toy_asset(dest)
    assert role == "student" and "toy-salt" in description and "200 generator updates" in description
    for (name, a), b in zip(student.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    teacher = tmp_path / "teacher.safetensors"
    files.save_model(student, str(teacher), extra_metadata={"teacher_mode": "teacher_forcing"})
    assert load_toy_asset(str(teacher))[1] == "teacher_forcing"
    with pytest.raises(FileNotFoundError, match="git checkout -- toy/assets"):
        load_toy_asset(str(tmp_path / "gone.safetensors"))


def test_read_metadata_reads_the_header_that_safetensors_wrote_and_names_a_corrupt_file(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"salt_role": "student", "gen_steps": "200"})
    assert files.read_metadata(str(path)) == {"salt_role": "student", "gen_steps": "200"}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="bad.safetensors.*truncated or corrupt"):
        files.read_metadata(str(bad))


# -- fp8 files (Comfy-Org's *_fp8_e4m3fn and *_fp8_scaled Wan files) --------------------------------------
def fp8_file(tmp_path, scaled: bool = False, nan: bool = False):
    """(path, reference state dict) of a tiny-hd128 checkpoint in ComfyUI layout whose linear weights are stored
    in fp8 e4m3fn (scaled: divided by a per-layer scale kept as `scale_weight`, plus `scale_input` and the
    `scaled_fp8` marker); the reference holds what those bytes mean, in float32."""
    from safetensors.torch import save_file
    sd = build_model("tiny-hd128", seed=0).state_dict()
    stored, reference = {}, {}
    for k, v in sd.items():
        key = "model.diffusion_model." + k
        if v.ndim == 2 and k.endswith(".weight"):
            scale = torch.tensor(v.abs().max().item() / 200.0) if scaled else torch.tensor(1.0)
            q = (v / scale).to(torch.float8_e4m3fn)
            stored[key], reference[k] = q, q.float() * scale
            if scaled:
                stored[key[:-len(".weight")] + ".scale_weight"] = scale
                stored[key[:-len(".weight")] + ".scale_input"] = torch.tensor(1.0)
        else:
            stored[key], reference[k] = v, v
    if scaled:
        stored["model.diffusion_model.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)   # under the prefix
    if nan:
        stored["model.diffusion_model.blocks.1.ffn.0.weight"][0, 0] = float("nan")
    path = tmp_path / ("scaled.safetensors" if scaled else "fp8.safetensors")
    save_file(stored, str(path))
    return path, reference


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "scaled-fp8"])
def test_an_fp8_file_loads_with_what_its_bytes_mean(tmp_path, scaled):
    path, reference = fp8_file(tmp_path, scaled)
    model, layout = files.load_model(path, num_heads=2)
    assert layout == "comfyui"
    assert_same_tensors(model.state_dict(), {k: v.float() for k, v in reference.items()})


def test_keep_fp8_leaves_an_fp8_files_linear_weights_in_fp8(tmp_path):
    path, reference = fp8_file(tmp_path)
    model, _ = files.load_model(path, num_heads=2, dtype=torch.bfloat16, keep_fp8=True)
    sd = model.state_dict()
    fp8 = [k for k, v in sd.items() if v.dtype == torch.float8_e4m3fn]
    assert fp8 == [k for k, v in reference.items() if v.ndim == 2 and k.endswith(".weight")]
    assert {v.dtype for k, v in sd.items() if k not in fp8} == {torch.bfloat16}
    assert all(torch.equal(sd[k].float(), reference[k]) for k in fp8)


@pytest.mark.parametrize("where", ["first", "last"])
def test_nan_in_an_fp8_file_is_refused_naming_the_tensor(tmp_path, monkeypatch, where):
    """fp8 tensors are checked a chunk at a time (FINITE_CHUNK elements widened at once): a NaN in the last chunk
    of a tensor of many is found as one in the first."""
    path, _ = fp8_file(tmp_path, nan=True)
    if where == "last":
        from safetensors.torch import load_file, save_file
        sd = load_file(str(path))
        weight = sd["model.diffusion_model.blocks.1.ffn.0.weight"]
        weight[0, 0], weight[-1, -1] = 0.0, float("nan")
        save_file(sd, str(path))
        monkeypatch.setattr(files, "FINITE_CHUNK", 8)
        assert weight.numel() > 8 * files.FINITE_CHUNK
    with pytest.raises(ValueError, match=r"1 tensor\(s\) hold NaN/Inf, e.g. \['blocks.1.ffn.0.weight'\]"):
        files.load_model(path, num_heads=2)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.int64, torch.complex64])
@pytest.mark.parametrize("keep_fp8", [False, True])
def test_weights_that_are_not_floating_point_are_refused_naming_the_tensor(tmp_path, dtype, keep_fp8):
    """An int8 / bool / int64 / complex linear weight is no weight Salt computes with: refused at load, naming the
    tensor and its dtype, whether fp8 weights are kept (weight_dtype fp8, which used to take them) or cast."""
    from safetensors.torch import save_file
    sd = {k: v.clone() for k, v in build_model("tiny-hd128", seed=0).state_dict().items()}
    sd["blocks.1.ffn.0.weight"] = sd["blocks.1.ffn.0.weight"].to(dtype)
    path = tmp_path / "odd.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError, match=rf"odd.safetensors.*not floating point, e.g. "
                                         rf".blocks.1.ffn.0.weight \({dtype}\)."):
        files.load_model(path, num_heads=2, keep_fp8=keep_fp8)


@pytest.mark.parametrize("shape", [(3,), (7, 5)])
def test_a_scaled_fp8_scale_that_does_not_fit_its_weight_is_refused_naming_both(tmp_path, shape):
    from safetensors.torch import load_file, save_file
    path, _ = fp8_file(tmp_path, scaled=True)
    stored = load_file(str(path))
    stored["model.diffusion_model.blocks.0.ffn.0.scale_weight"] = torch.ones(shape)
    save_file(stored, str(path))
    with pytest.raises(ValueError, match=r"'model.diffusion_model.blocks.0.ffn.0.scale_weight' is torch.float32 of "
                                         rf"shape {re.escape(str(shape))}, which does not scale"):
        files.load_model(path, num_heads=2)


@pytest.mark.parametrize("preset", ["toy", "tiny"])
def test_a_torch_file_without_metadata_of_a_presets_shapes_loads_as_that_preset(tmp_path, preset):
    """A .pt holds no config: shapes matching a preset give that preset's heads and text_len (the toy student's
    .pt export came back with 1 head and text_len 512, another network, 28 % off in its output)."""
    model = build_model(preset, seed=0).eval()
    files.save_model(model, tmp_path / "m.pt")
    files.save_model(model, tmp_path / "m.safetensors")
    loaded, _ = files.load_model(tmp_path / "m.pt")
    assert loaded.cfg == model.cfg == files.load_model(tmp_path / "m.safetensors")[0].cfg
    x = torch.randn(1, model.cfg.in_dim, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, model.cfg.text_len, model.cfg.text_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, torch.tensor([500.0]), ctx), model(x, torch.tensor([500.0]), ctx))


def test_no_two_model_presets_share_their_weight_shapes():
    """A file without metadata is matched to a preset by its shapes (the head count is not in them): two presets of
    one shape would make the match a guess, and match_preset then declines."""
    from comfyui_salt.salt_core.config import MODEL_PRESETS
    names = [layouts.match_preset(cfg) for cfg in MODEL_PRESETS.values()]
    assert names == list(MODEL_PRESETS)


def test_match_preset_declines_shapes_two_presets_share_and_shapes_none_has(monkeypatch):
    """The head count is not in the weights: a second preset of the toy's shapes with other heads makes the match a
    guess (None), and so does a width no preset has."""
    import dataclasses
    from comfyui_salt.salt_core.config import MODEL_PRESETS
    toy = MODEL_PRESETS["toy"]
    assert layouts.match_preset(dataclasses.replace(toy, num_heads=2 * toy.num_heads)) == "toy"   # heads ignored
    assert layouts.match_preset(dataclasses.replace(toy, dim=toy.dim + 8)) is None
    monkeypatch.setitem(layouts.MODEL_PRESETS, "toy-twin", dataclasses.replace(toy, num_heads=2 * toy.num_heads))
    assert layouts.match_preset(toy) is None


def test_an_output_in_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    """Tried with an anonymous temporary file (permission bits do not tell for root or a read-only mount): the
    teacher's --export was refused only after training, naming an internal temp file, not the flag."""
    import tempfile

    def refuse(dir=None, **kw):
        raise PermissionError(13, "Permission denied", dir)
    assert files.check_output(tmp_path / "new" / "m.safetensors", "--export")      # a folder made on writing
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(ValueError, match=r"--export=.*: the folder .* cannot be written \(permissions or a "
                                         r"read-only file system\); choose a destination you can write to"):
        files.check_output(tmp_path / "new" / "m.safetensors", "--export")
    assert not (tmp_path / "new").exists()
