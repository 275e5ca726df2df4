"""salt_core.layouts: detection, normalisation, export, the diffusers rename table, LoRA merge, checks."""
import dataclasses
import json
import logging
import re

import pytest
import torch

from comfyui_salt.salt_core import layouts
from comfyui_salt.salt_core.config import MODEL_PRESETS
from comfyui_salt.salt_core.model import WanModel, build_model
from comfyui_salt.weights import files


def tiny_sd(preset="tiny", seed=0):
    """An original-name state dict of a seeded tiny model."""
    return build_model(preset, seed=seed).state_dict()


def diffusers_config(cfg):
    """The WanTransformer3DModel config with the same shapes as a WanConfig (docs/method.md §6)."""
    return dict(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim,
                out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim,
                num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=cfg.eps,
                patch_size=list(cfg.patch_size), rope_max_seq_len=cfg.rope_max_len)


def assert_same_tensors(a, b):
    """Same keys and bit-identical tensors (dtype included)."""
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))[:5]
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_every_layout_round_trips_to_bit_identical_tensors(layout):
    sd = tiny_sd()
    back, found = layouts.to_wan_state_dict(layouts.from_wan_state_dict(sd, layout))
    assert_same_tensors(back, sd)
    assert found == ("self_forcing" if layout == "longlive" else layout)


def test_exported_layouts_share_tensors_instead_of_copying():
    sd = tiny_sd()
    release = layouts.from_wan_state_dict(sd, "self_forcing")
    key = "blocks.0.self_attn.q.weight"
    ptrs = {release["generator"]["model." + key].data_ptr(), release["generator_ema"]["model." + key].data_ptr(),
            layouts.from_wan_state_dict(sd, "diffusers")["blocks.0.attn1.to_q.weight"].data_ptr(),
            layouts.to_wan_state_dict(release)[0][key].data_ptr()}
    assert ptrs == {sd[key].data_ptr()}


def test_rename_table_inverts_exactly_including_i2v_names():
    keys = list(tiny_sd()) + ["img_emb.proj.0.weight", "img_emb.proj.1.bias", "img_emb.proj.3.weight",
                              "img_emb.proj.4.bias", "img_emb.emb_pos", "blocks.3.cross_attn.k_img.weight",
                              "blocks.3.cross_attn.v_img.bias", "blocks.3.cross_attn.norm_k_img.weight"]
    hf = [layouts.wan_to_diffusers_key(k) for k in keys]
    assert len(set(hf)) == len(keys)
    assert [layouts.diffusers_to_wan_key(k) for k in hf] == keys
    assert layouts.wan_to_diffusers_key("blocks.3.norm3.weight") == "blocks.3.norm2.weight"
    assert layouts.wan_to_diffusers_key("blocks.3.cross_attn.k_img.weight") == "blocks.3.attn2.add_k_proj.weight"


def test_rename_refuses_names_it_does_not_know():
    with pytest.raises(layouts.LayoutError, match="blocks.0.norm2.weight"):
        layouts.wan_to_diffusers_key("blocks.0.norm2.weight")  # Wan's norm2 has no parameters
    with pytest.raises(layouts.LayoutError, match="attn1.to_q.lora"):
        layouts.diffusers_to_wan_key("blocks.0.attn1.to_q.lora.weight")


@pytest.mark.parametrize("preset", ["tiny", "tiny-hd128"])
def test_diffusers_names_and_shapes_equal_an_independently_built_WanTransformer3DModel(preset):
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.WanTransformer3DModel(**diffusers_config(MODEL_PRESETS[preset])).state_dict()
    ours = layouts.from_wan_state_dict(tiny_sd(preset), "diffusers")
    assert set(ours) == set(reference)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


@pytest.mark.parametrize("layout", ["wan", "comfyui"])
def test_diffusers_single_file_loader_reads_our_file_as_our_table_says(tmp_path, layout):
    diffusers = pytest.importorskip("diffusers")
    model = build_model("tiny-hd128", seed=1)
    files.save_model(model, tmp_path / "wan.safetensors", layout=layout)
    (tmp_path / "config").mkdir()
    config = dict(_class_name="WanTransformer3DModel", **diffusers_config(model.cfg))
    (tmp_path / "config" / "config.json").write_text(json.dumps(config))
    loaded = diffusers.WanTransformer3DModel.from_single_file(
        str(tmp_path / "wan.safetensors"), config=str(tmp_path / "config"), torch_dtype=torch.float32)
    assert_same_tensors(loaded.state_dict(), layouts.from_wan_state_dict(model.state_dict(), "diffusers"))


def test_a_diffusers_model_normalised_into_ours_predicts_the_same_velocity():
    diffusers = pytest.importorskip("diffusers")
    cfg = MODEL_PRESETS["tiny-hd128"]
    torch.manual_seed(2)
    reference = diffusers.WanTransformer3DModel(**diffusers_config(cfg)).eval()
    sd, layout = layouts.to_wan_state_dict(reference.state_dict())
    assert layout == "diffusers"
    model = layouts.load_into(build_model(cfg), sd).eval()
    x, t, context = torch.randn(1, cfg.in_dim, 3, 8, 8), torch.tensor([700.0]), torch.randn(1, 8, cfg.text_dim)
    with torch.no_grad():
        expected = reference(x, t, context, return_dict=False)[0]
        got = model(x, t, context)
    err = (got - expected).abs()
    assert err.max() < 1e-4 * expected.abs().max(), f"max err {err.max():.3g}, mean err {err.mean():.3g}"


def test_release_dict_prefers_ema_and_falls_back_to_generator_with_a_warning(caplog):
    ema, gen = tiny_sd(seed=0), tiny_sd(seed=1)
    release = {"generator": layouts.from_wan_state_dict(gen, "self_forcing")["generator"],
               "generator_ema": layouts.from_wan_state_dict(ema, "self_forcing")["generator_ema"], "step": 7}
    assert_same_tensors(layouts.to_wan_state_dict(release)[0], ema)
    assert_same_tensors(layouts.to_wan_state_dict(release, use_ema=False)[0], gen)
    del release["generator_ema"]
    with caplog.at_level(logging.WARNING):
        sd, layout = layouts.to_wan_state_dict(release, use_ema=True)
    assert layout == "self_forcing" and "generator_ema" in caplog.text
    assert_same_tensors(sd, gen)


@pytest.mark.parametrize("present, use_ema, expected", [
    (("generator", "generator_ema", "model"), True, "generator_ema"),
    (("generator", "generator_ema"), False, "generator"), (("generator",), True, "generator"), (("generator_ema",), False, "generator_ema"), (("model",), True, "model"),
    ((), True, None)])
def test_release_entry_names_the_head_that_loads_or_none_for_a_flat_dict(present, use_ema, expected):
    """The head order load_model and the host estimate of a torch file share (the warning is _pick_release_entry's)."""
    obj = {k: {"model.x": torch.zeros(1)} for k in present} | {"step": 7, "blocks.0.x": torch.zeros(1)}
    assert layouts.release_entry(obj, use_ema) == expected


def test_a_release_with_only_a_model_entry_loads_with_or_without_the_model_prefix():
    sd = tiny_sd()
    for inner in ({"model." + k: v for k, v in sd.items()}, sd):
        back, layout = layouts.to_wan_state_dict({"model": inner}, use_ema=False)
        assert layout == "self_forcing"
        assert_same_tensors(back, sd)


def test_fsdp_checkpoint_and_compile_artefacts_are_stripped_anywhere_in_keys():
    sd = tiny_sd()

    def wrapped(key):
        block, _, rest = key.partition(".")
        return f"model._orig_mod._fsdp_wrapped_module.{block}._checkpoint_wrapped_module.{rest}"

    release = {"generator_ema": {wrapped(k): v for k, v in sd.items()}}
    assert layouts.detect_layout(release) == "self_forcing"
    assert_same_tensors(layouts.to_wan_state_dict(release)[0], sd)
    flat = {"_orig_mod." + k: v for k, v in sd.items()}
    assert layouts.to_wan_state_dict(flat) == (sd, "wan")


def test_comfyui_full_checkpoints_keep_only_the_diffusion_model():
    sd = tiny_sd()
    obj = layouts.from_wan_state_dict(sd, "comfyui") | {"first_stage_model.decoder.weight": torch.zeros(2)}
    assert_same_tensors(layouts.to_wan_state_dict(obj)[0], sd)


def lora_for(sd, rank, module_key, adapter=".default", prefix="base_model.model.", seed=3):
    """A PEFT-style LoRA (A (r, in), B (out, r)) for one Linear of `sd`."""
    g = torch.Generator().manual_seed(seed)
    out_features, in_features = sd[module_key + ".weight"].shape
    A, B = torch.randn(rank, in_features, generator=g), torch.randn(out_features, rank, generator=g)
    return {f"{prefix}{module_key}.lora_A{adapter}.weight": A, f"{prefix}{module_key}.lora_B{adapter}.weight": B}, A, B


def test_lora_factors_pairs_each_modules_factors_under_every_naming_and_refuses_the_rest():
    A, B = torch.zeros(2, 5), torch.zeros(3, 2)
    factors, alphas = layouts.lora_factors({"base_model.model.blocks.0.q.lora_A.default.weight": A,
                                            "base_model.model.blocks.0.q.lora_B.default.weight": B,
                                            "base_model.model.blocks.0.q.alpha": torch.tensor(4.0),
                                            "blocks.1.k.lora_B.default.weight": B})
    assert set(factors) == {"base_model.model.blocks.0.q", "blocks.1.k"}
    assert alphas == {"base_model.model.blocks.0.q": 4.0}
    assert factors["base_model.model.blocks.0.q"]["A"] is A and factors["blocks.1.k"] == {"B": B}   # a lone factor
    down_up, _ = layouts.lora_factors({"m.lora_down.weight": A, "m.lora_up.weight": B})
    assert down_up == {"m": {"A": A, "B": B}}
    with pytest.raises(layouts.LayoutError, match="several adapters"):
        layouts.lora_factors({"m.lora_A.one.weight": A, "m.lora_B.two.weight": B})
    with pytest.raises(layouts.LayoutError, match="unexpected LoRA key 'm.bias'"):
        layouts.lora_factors({"m.bias": A})


@pytest.mark.parametrize("entry, words", [
    ({5: torch.zeros(2, 2)}, "LoRA key 5 is no string"),
    ({"m.lora_A.weight": torch.zeros(4)}, "factor 'm.lora_A.weight' is a 1-D float32 tensor of shape (4,)"),
    ({"m.lora_B.weight": torch.zeros(4, 2, dtype=torch.int64)}, "a 2-D int64 tensor"),
    ({"m.lora_B.weight": "weights"}, "factor 'm.lora_B.weight' is a str"),
    ({"m.alpha": torch.ones(2)}, "alpha 'm.alpha' is a 1-D float32 tensor of shape (2,); expected one number"),
    ({"m.alpha": "4"}, "alpha 'm.alpha' is a str"),
    ({"m.alpha": None}, "alpha 'm.alpha' is a NoneType"),
    ({"m.alpha": torch.tensor(float("inf"))}, "alpha 'm.alpha' is inf; expected a finite number")])
def test_a_malformed_lora_entry_is_refused_naming_its_key(entry, words):
    """A bad alpha or factor escaped as a bare TypeError / AttributeError / ValueError naming neither the LoRA nor the
    key (and, from the host estimate, not the file either)."""
    with pytest.raises(layouts.LayoutError, match=re.escape(words)):
        layouts.lora_factors(entry)


def test_lora_merge_equals_W_plus_B_at_A_times_alpha_over_r():
    sd = tiny_sd()
    key = "blocks.1.self_attn.q"
    lora, A, B = lora_for(sd, rank=4, module_key=key)
    W = sd[key + ".weight"]
    by_hand = W + (B @ A) * (4 / 4)
    assert torch.allclose(layouts.merge_lora(sd, lora)[key + ".weight"], by_hand, atol=1e-6)
    assert torch.allclose(layouts.merge_lora(sd, lora, alpha=8.0)[key + ".weight"], W + (B @ A) * 2, atol=1e-6)
    lora[f"base_model.model.{key}.alpha"] = torch.tensor(2.0)  # a stored alpha overrides the argument
    merged = layouts.merge_lora(sd, lora, alpha=8.0)
    assert torch.allclose(merged[key + ".weight"], W + (B @ A) * 0.5, atol=1e-6)
    assert merged["blocks.0.self_attn.q.weight"] is sd["blocks.0.self_attn.q.weight"]


def test_longlive_release_merges_its_lora_into_the_chosen_generator():
    sd = tiny_sd()
    key = "blocks.0.ffn.0"
    lora, A, B = lora_for(sd, rank=2, module_key=key, adapter="", prefix="base_model.model.model.")
    release = layouts.from_wan_state_dict(sd, "self_forcing") | {"generator_lora": lora}
    assert layouts.detect_layout(release) == "longlive"
    merged, layout = layouts.to_wan_state_dict(release, lora_alpha=6.0)
    assert layout == "longlive"
    assert torch.allclose(merged[key + ".weight"], sd[key + ".weight"] + (B @ A) * 3.0, atol=1e-6)


def test_lora_merge_computes_in_float32_and_keeps_the_weight_dtype():
    sd = {k: v.to(torch.bfloat16) for k, v in tiny_sd().items()}
    key = "blocks.0.cross_attn.o"
    lora, A, B = lora_for(sd, rank=3, module_key=key)
    merged = layouts.merge_lora(sd, lora)[key + ".weight"]
    assert merged.dtype == torch.bfloat16
    exact = sd[key + ".weight"].double() + B.double() @ A.double()      # within one bf16 step of the exact sum (the
    assert torch.allclose(merged.double(), exact, rtol=2 ** -7, atol=1e-6)   # float32 order may move the last bit)
    in_bf16 = sd[key + ".weight"] + B.to(torch.bfloat16) @ A.to(torch.bfloat16)
    assert (merged.double() - exact).abs().sum() < (in_bf16.double() - exact).abs().sum()   # not computed in bf16


def test_a_lora_for_another_model_is_refused_by_name():
    lora = {"base_model.model.decoder.up.lora_A.weight": torch.zeros(2, 4),
            "base_model.model.decoder.up.lora_B.weight": torch.zeros(4, 2)}
    with pytest.raises(layouts.LayoutError, match="decoder.up"):
        layouts.merge_lora(tiny_sd(), lora)


def test_an_unknown_layout_error_names_the_keys_and_the_supported_layouts():
    with pytest.raises(layouts.LayoutError) as info:
        layouts.to_wan_state_dict({"encoder.layer.0.weight": torch.zeros(1), "decoder.bias": torch.zeros(1)})
    for word in ("encoder.layer.0.weight", "diffusers", "self_forcing", "longlive"):
        assert word in str(info.value)
    with pytest.raises(layouts.LayoutError, match="state_dict"):
        layouts.detect_layout({"state_dict": {"a": torch.zeros(1)}})


def test_i2v_checkpoints_are_refused_as_not_supported_yet():
    sd = tiny_sd() | {"img_emb.proj.1.weight": torch.zeros(64, 32),
                      "blocks.0.cross_attn.k_img.weight": torch.zeros(64, 64)}
    hf, layout = layouts.to_wan_state_dict(layouts.from_wan_state_dict(sd, "diffusers"))
    assert layout == "diffusers"
    for call in (lambda: layouts.infer_config(hf), lambda: layouts.check_state_dict(hf, MODEL_PRESETS["tiny"])):
        with pytest.raises(layouts.LayoutError, match="I2V checkpoints are not supported yet"):
            call()


def test_infer_config_recovers_every_shape_and_assumes_head_dim_128():
    cfg = layouts.infer_config(tiny_sd("tiny-hd128"))
    assert cfg == dataclasses.replace(MODEL_PRESETS["tiny-hd128"], text_len=cfg.text_len)  # text_len has no weights
    assert layouts.match_preset(cfg) == "tiny-hd128"
    assert layouts.infer_config(tiny_sd("tiny"), num_heads=4).num_heads == 4
    with pytest.raises(layouts.LayoutError, match="num_heads"):
        layouts.infer_config(tiny_sd("tiny"))  # dim 64 is no multiple of 128


def test_check_state_dict_names_missing_unexpected_keys_shapes_and_the_preset_to_pick():
    sd = tiny_sd("tiny") | {"extra.weight": torch.zeros(1)}
    with pytest.raises(layouts.LayoutError) as info:
        layouts.check_state_dict(sd, MODEL_PRESETS["toy"], layout="comfyui")
    message = str(info.value)
    for word in ("'comfyui'", "missing", "blocks.2.", "unexpected", "extra.weight", "shape", "'tiny'"):
        assert word in message, word
    layouts.check_state_dict(tiny_sd("toy"), MODEL_PRESETS["toy"])


def test_checking_foreign_names_says_to_normalise_first():
    hf = layouts.from_wan_state_dict(tiny_sd(), "diffusers")
    with pytest.raises(layouts.LayoutError, match="'diffusers'.*to_wan_state_dict"):
        layouts.check_state_dict(hf, MODEL_PRESETS["tiny"])


def test_adopt_weights_makes_the_parameters_the_given_tensors():
    sd = tiny_sd(seed=5)
    model = layouts.adopt_weights(build_model("tiny", seed=0), sd)
    for key, value in model.state_dict().items():
        assert value.data_ptr() == sd[key].data_ptr(), key
    assert all(p.requires_grad for p in model.parameters())
    with torch.device("meta"):
        meta_model = WanModel(MODEL_PRESETS["tiny"])
    layouts.load_into(meta_model, sd)
    assert meta_model.patch_embedding.weight.data_ptr() == sd["patch_embedding.weight"].data_ptr()


def test_load_into_copies_strictly_and_refuses_misfits():
    sd = tiny_sd(seed=5)
    model = layouts.load_into(build_model("tiny", seed=0), sd)
    assert_same_tensors(model.state_dict(), sd)
    assert model.patch_embedding.weight.data_ptr() != sd["patch_embedding.weight"].data_ptr()
    with pytest.raises(layouts.LayoutError, match="missing"):
        layouts.load_into(model, {k: v for k, v in sd.items() if k != "head.modulation"})


def test_dequantize_scaled_fp8_multiplies_each_weight_by_its_scale_and_drops_the_scales():
    w = torch.randn(4, 3)
    q, scale = (w / 0.5).to(torch.float8_e4m3fn), torch.tensor(0.5)
    sd = {"x.weight": q, "x.scale_weight": scale, "x.scale_input": torch.tensor(1.0), "x.bias": torch.zeros(4),
          "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    out = layouts.dequantize_scaled_fp8(sd)
    assert set(out) == {"x.weight", "x.bias"} and torch.equal(out["x.weight"], q.float() * 0.5)
    plain = {"x.weight": w}
    assert layouts.dequantize_scaled_fp8(plain) is plain
    # a scaled weight already in float32: scaled into a copy, the state dict it came from left as it was
    kept = w.clone()
    out = layouts.dequantize_scaled_fp8({"x.weight": w, "x.scale_weight": scale})
    assert torch.equal(w, kept) and torch.equal(out["x.weight"], kept * 0.5)
    with pytest.raises(layouts.LayoutError, match="'y.scale_weight' has no 'y.weight'"):
        layouts.dequantize_scaled_fp8({"y.scale_weight": scale})


@pytest.mark.parametrize("stored", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scale_shape", [(), (7, 1), (1, 5), (7, 5), (5,)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_scaled_weight_is_scaled_in_chunks_to_the_numbers_of_one_whole_float32_product(monkeypatch, stored,
                                                                                        scale_shape, dtype):
    """scaled_weight over row chunks (DEQUANT_CHUNK made small: 2 rows of 5, and part of a row: one row at a time)
    against the product of the whole weight in float32, cast once: equal bit for bit; the stored weight untouched
    and never the result's storage, whatever the scale's broadcast (scalar, per row, per column, elementwise)."""
    gen = torch.Generator().manual_seed(3)
    w = (torch.randn(7, 5, generator=gen) * 4).to(stored)
    scale = torch.rand(scale_shape, generator=gen) + 0.5
    want = (w.float() * scale.float()).to(dtype)
    kept = w.clone()
    for chunk in (10, 3, 1 << 18):
        monkeypatch.setattr(layouts, "DEQUANT_CHUNK", chunk)
        got = layouts.scaled_weight(w, scale, dtype)
        assert got.dtype == dtype and torch.equal(got, want), (chunk, (got.float() - want.float()).abs().max())
        assert torch.equal(w.float(), kept.float()) and got.data_ptr() != w.data_ptr()


def test_comfys_newer_quantized_format_is_refused_naming_it():
    sd = {"blocks.0.ffn.0.weight": torch.zeros(2, 2, dtype=torch.float8_e4m3fn),
          "blocks.0.ffn.0.weight_scale": torch.tensor(1.0)}
    with pytest.raises(layouts.LayoutError, match="ComfyUI's newer quantized format \\(comfy_quant\\)"):
        layouts.dequantize_scaled_fp8(sd)


def test_check_float_weights_names_tensors_that_are_not_floating_point_and_check_state_dict_leaves_them_alone():
    """Files are refused (weights.files.load_model calls it); a native MODEL a node pack quantized (GGUF: uint8
    tensors with their own casts) is not a file and passes check_state_dict's keys and shapes."""
    from comfyui_salt.salt_core.layouts import LayoutError, check_float_weights, check_state_dict
    from comfyui_salt.salt_core.model import build_model
    model = build_model("tiny-hd128", seed=0)
    sd = dict(model.state_dict())
    check_float_weights(sd)
    for dtype in (torch.uint8, torch.bool, torch.complex64):
        odd = {**sd, "head.head.weight": sd["head.head.weight"].to(dtype)}
        with pytest.raises(LayoutError, match=rf"1 weight\(s\) are not floating point, e.g. 'head.head.weight "
                                              rf"\({dtype}\)'"):
            check_float_weights(odd)
        check_state_dict(odd, model)
