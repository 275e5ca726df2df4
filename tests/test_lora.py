"""A distilled student as a LoRA: salt_core.lora (SVD factors, keys), training.lora_export (file, CLI), the
SaltExtractLoRA node, and ComfyUI 0.3.75's own LoRA loader as the independent reference for the keys and
the application (comfy.sd.load_lora_for_models, what LoraLoaderModelOnly calls).
"""
import logging

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from comfyui_salt.salt_core.config import WanConfig
from comfyui_salt.salt_core.lora import (apply_lora, comfy_applied, extract_lora, format_report, low_rank_factors,
                                         summarize)
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.weights.files import save_model
from comfyui_salt.training.lora_export import export_lora
from helpers import assert_close

# Wan-shaped and accepted by ComfyUI's model detection (head dim 128, freq_dim 256, umT5 width), 1 block.
NATIVE_WAN = dict(dim=256, ffn_dim=256, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=4096, freq_dim=256)


def perturbed(sd: dict, seed: int = 5, scale: float = 0.05) -> dict:
    """A 'student': every tensor of `sd` changed (linear weights by a full-rank random matrix)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * v.abs().mean().clamp_min(1e-3) * torch.randn(v.shape, generator=g) for k, v in sd.items()}


@pytest.fixture(scope="module")
def tiny_pair():
    base = build_model("tiny", seed=0).state_dict()
    return base, perturbed(base)


# -- salt_core.lora ---------------------------------------------------------------------------------------
def test_full_rank_factors_and_diffs_rebuild_the_student_exactly(tiny_pair):
    base, student = tiny_pair
    lora, reports = extract_lora(base, student, rank=10_000)
    rebuilt = apply_lora(base, lora)
    for k in student:
        assert_close(rebuilt[k], student[k], 1e-5, k)
    assert summarize(reports)["total_energy_kept"] == pytest.approx(1.0)
    # brute force on one layer: up @ down is the difference itself
    key = "diffusion_model.blocks.0.self_attn.q"
    delta = student["blocks.0.self_attn.q.weight"] - base["blocks.0.self_attn.q.weight"]
    assert_close(lora[key + ".lora_up.weight"] @ lora[key + ".lora_down.weight"], delta, 1e-5, "up @ down")
    assert float(lora[key + ".alpha"]) == lora[key + ".lora_down.weight"].shape[0] == 64


def test_truncated_factors_keep_the_top_singular_energy_computed_by_numpy():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(48, 32, generator=g) @ torch.diag(torch.linspace(3, 0.1, 32)) @ torch.randn(32, 32, generator=g)
    s = np.linalg.svd(delta.double().numpy(), compute_uv=False)
    for rank in (1, 4, 16, 32):
        up, down, energy = low_rank_factors(delta.double(), rank)
        assert up.shape == (48, rank) and down.shape == (rank, 32)
        assert energy == pytest.approx((s[:rank] ** 2).sum() / (s ** 2).sum(), rel=1e-9)
        residual = np.linalg.norm((delta.double() - up @ down).numpy())
        assert residual == pytest.approx(np.sqrt((s[rank:] ** 2).sum()), abs=1e-8)   # Eckart–Young: the optimum


def test_keys_follow_comfys_names_and_unchanged_tensors_are_skipped(tiny_pair):
    base, student = tiny_pair
    student = dict(student, **{"blocks.1.ffn.0.weight": base["blocks.1.ffn.0.weight"].clone()})
    lora, reports = extract_lora(base, student, rank=8)
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in lora
    assert lora["diffusion_model.blocks.0.self_attn.q.lora_down.weight"].shape == (8, 64)
    assert "diffusion_model.blocks.0.self_attn.q.diff_b" in lora                 # the bias
    assert "diffusion_model.blocks.0.norm3.diff" in lora                         # a LayerNorm gain
    assert "diffusion_model.blocks.0.modulation.diff" in lora                    # a bare parameter
    assert "diffusion_model.patch_embedding.diff" in lora                        # the 5-D conv, exact
    assert not any(k.startswith("diffusion_model.blocks.1.ffn.0.lora") for k in lora)
    assert "blocks.1.ffn.0.weight" not in {r.name for r in reports}


def test_without_diffs_only_factors_are_written_and_the_rest_is_reported_dropped(tiny_pair):
    base, student = tiny_pair
    lora, reports = extract_lora(base, student, rank=4, diffs=False)
    assert all(".lora_" in k or k.endswith(".alpha") for k in lora)
    dropped = {r.name for r in reports if r.kind == "dropped"}
    assert "blocks.0.norm3.weight" in dropped and "blocks.0.self_attn.q.bias" in dropped
    assert summarize(reports)["total_energy_kept"] < 1.0


def test_the_report_gives_the_energy_comfy_applies_measured_on_the_applied_weights(tiny_pair):
    """ComfyUI 0.3.75 loads the modulation .diff tensors but does not apply them; the report's total said 1.0000
    "over everything" all the same. Its ComfyUI line is checked against the weights comfy_applied's part of the
    LoRA gives: Σ‖applied − base‖² / Σ‖student − base‖²."""
    base, student = tiny_pair
    lora, reports = extract_lora(base, student, rank=4)
    s = summarize(reports)
    applied = apply_lora(base, comfy_applied(lora))
    moved = sum(float(((applied[k].double() - base[k].double()) ** 2).sum()) for k in base)
    total = sum(float(((student[k].double() - base[k].double()) ** 2).sum()) for k in base)
    assert s["comfy_skipped"] == sum(k.endswith(".modulation.diff") for k in lora) > 0
    assert s["comfy_energy_kept"] == pytest.approx(moved / total, rel=1e-4) and s["comfy_energy_kept"] < \
        s["total_energy_kept"]
    assert f"applies {s['comfy_energy_kept']:.4f} of the energy" in format_report(reports)


@pytest.mark.parametrize("change, words", [
    (lambda b, s: (b, s, 0), ["rank=0", ">= 1"]),
    (lambda b, s: (b, {k: v for k, v in s.items() if k != "head.head.bias"}, 4),
     ["only in the base", "head.head.bias"]),
    (lambda b, s: (b, dict(s, **{"head.head.bias": torch.zeros(3)}), 4), ["head.head.bias", "same architecture"]),
    (lambda b, s: (b, dict(s, **{"head.head.weight": s["head.head.weight"].to(torch.float8_e4m3fn)}), 4),
     ["student", "fp8", "head.head.weight", "weight_dtype 'default'"]),
    (lambda b, s: (dict(b, **{"blocks.0.ffn.0.weight": b["blocks.0.ffn.0.weight"].to(torch.float8_e5m2)}), s, 4),
     ["base", "fp8", "float8_e5m2"]),
])
def test_bad_pairs_and_ranks_raise_errors_naming_the_problem(tiny_pair, change, words):
    base, student, rank = change(*tiny_pair)
    with pytest.raises(ValueError) as e:
        extract_lora(base, student, rank)
    assert all(w in str(e.value) for w in words), str(e.value)


# -- training.lora_export and the CLI ---------------------------------------------------------------------
def test_export_writes_a_lora_file_with_its_summary_and_refuses_an_unchanged_student(tmp_path, tiny_pair):
    base, student = tiny_pair
    path, reports = export_lora(base, student, tmp_path / "s.safetensors", rank=4, dtype="bf16")
    tensors = load_file(path)
    assert tensors["diffusion_model.blocks.0.ffn.0.lora_up.weight"].dtype == torch.bfloat16
    with safe_open(path, framework="pt") as f:
        assert '"lora": 26' in f.metadata()["salt_lora_summary"] and f.metadata()["salt_rank"] == "4"
    with pytest.raises(ValueError, match="equals its base"):
        export_lora(base, base, tmp_path / "same.safetensors", rank=4)
    # only biases and norms changed, and no diffs: the LoRA would hold nothing (it was written, empty)
    linear = {k for k, v in base.items() if v.ndim == 2 and k.endswith(".weight")}
    tuned = {k: (v if k in linear else student[k]) for k, v in base.items()}
    with pytest.raises(ValueError, match=r"only in \d+ tensor\(s\) that are no linear weight.*without --no-diffs"):
        export_lora(base, tuned, tmp_path / "empty.safetensors", rank=4, diffs=False)
    assert not (tmp_path / "empty.safetensors").exists()
    export_lora(base, tuned, tmp_path / "diffs.safetensors", rank=4)   # with the diffs: exact, not empty


def test_the_cli_exports_a_lora_from_checkpoint_files_and_a_student_in_another_layout(tmp_path, capsys):
    from comfyui_salt.__main__ import main
    base = build_model("tiny-hd128", seed=0).state_dict()    # head dim 128: the .pt's config is inferred
    student = perturbed(base)
    save_model(base, tmp_path / "base.safetensors")
    save_model(student, tmp_path / "student.pt", layout="self_forcing")
    out = tmp_path / "lora.safetensors"
    main(["export", "--lora", "--base", str(tmp_path / "base.safetensors"), "--student", str(tmp_path / "student.pt"),
          "--rank", "1000", "--dtype", "fp32", "--out", str(out)])
    assert "energy kept" in capsys.readouterr().out
    rebuilt = apply_lora(base, load_file(out))
    assert max(float((rebuilt[k] - student[k]).abs().max()) for k in student) < 1e-5
    main(["export", "--student", str(tmp_path / "student.pt"), "--layout", "comfyui",
          "--out", str(tmp_path / "student_comfy.safetensors")])
    assert "model.diffusion_model.blocks.0.self_attn.q.weight" in load_file(tmp_path / "student_comfy.safetensors")


# -- ComfyUI's own loader as the reference ----------------------------------------------------------------
def native_pair(modulation: bool = False):
    """(base ModelPatcher loaded by ComfyUI as UNETLoader does, student state dict, base state dict); the
    student's modulation tables equal the base's unless `modulation` (ComfyUI does not patch them)."""
    from comfy_import import import_comfy
    import_comfy()
    import comfy.sd
    base = {k: v.clone() for k, v in build_model(WanConfig(**NATIVE_WAN), seed=1).state_dict().items()}
    student = perturbed(base, seed=9)
    if not modulation:
        student.update({k: base[k].clone() for k in base if k.endswith("modulation")})
    return comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in base.items()}), student, base


def comfy_apply(patcher, lora):
    """ComfyUI's LoraLoaderModelOnly path: load_lora_for_models, then the patched weights as a sampler loads them."""
    import comfy.model_management
    import comfy.sd
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)
    comfy.model_management.load_models_gpu([patched])
    return patched


def test_comfys_lora_loader_applies_every_key_and_full_rank_reproduces_the_student(caplog):
    patcher, student, base = native_pair()
    import comfy.sd
    lora, _ = extract_lora(base, student, rank=10_000)
    with caplog.at_level(logging.WARNING):
        patched = comfy_apply(patcher, lora)
    assert "lora key not loaded" not in caplog.text, caplog.text
    native_student = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in student.items()})
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 5, 4096, generator=g), torch.tensor([640.0])
    with torch.no_grad():
        ours = patched.model.diffusion_model(x, t, ctx)
        ref = native_student.model.diffusion_model(x, t, ctx)
    assert_close(ours, ref, 1e-5, "base + full-rank LoRA (ComfyUI) vs student")
    patched_sd = patched.model.diffusion_model.state_dict()
    assert all(torch.allclose(patched_sd[k], student[k], atol=1e-5) for k in student)


def test_comfy_applies_a_truncated_lora_exactly_as_salts_apply_lora_less_the_modulation_tables():
    """So the error-vs-rank table (computed with apply_lora of comfy_applied) holds for LoraLoaderModelOnly;
    ComfyUI 0.3.75 loads the modulation diffs without a warning but leaves those tables as they were."""
    patcher, student, base = native_pair(modulation=True)
    lora, _ = extract_lora(base, student, rank=4)
    assert "diffusion_model.blocks.0.modulation.diff" in lora
    patched_sd = comfy_apply(patcher, lora).model.diffusion_model.state_dict()
    ours = apply_lora(base, comfy_applied(lora))
    assert torch.equal(patched_sd["blocks.0.modulation"], base["blocks.0.modulation"])
    for k in student:
        assert_close(patched_sd[k], ours[k], 1e-6, k)
    assert not torch.allclose(patched_sd["blocks.0.ffn.0.weight"], student["blocks.0.ffn.0.weight"], atol=1e-4)


# -- the node ---------------------------------------------------------------------------------------------
def test_the_node_writes_into_models_loras_salt_and_reports_the_energy(tmp_path, monkeypatch):
    from comfy_import import import_nodes
    nodes = import_nodes()
    import folder_paths
    from comfyui_salt.nodes.types import SaltModel
    exts = folder_paths.folder_names_and_paths["loras"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    base = build_model("tiny", seed=0)
    student = build_model("tiny", seed=0)
    student.load_state_dict(perturbed(base.state_dict()))
    wrap = lambda m: SaltModel(m.eval(), "raw", "tiny")   # noqa: E731
    with torch.inference_mode():
        report = nodes.SaltExtractLoRA.execute(base=wrap(base), student=wrap(student), rank=8, include_diffs=True,
                                               dtype="fp32", name="tiny_r8").args[0]
    assert "loras/salt/tiny_r8.safetensors" in report and "energy kept" in report
    assert "salt/tiny_r8.safetensors" in folder_paths.get_filename_list("loras")
    assert "name='../x'" in nodes.SaltExtractLoRA.validate_inputs(name="../x")


def test_a_lora_on_the_native_base_reaches_salts_streaming_through_causal_from_model():
    """UNETLoader (base) → LoraLoaderModelOnly → SaltCausalFromModel: the SALT_MODEL has the student's weights,
    so a causal student shipped as a LoRA streams with Salt's caches."""
    from comfy_import import import_nodes
    nodes = import_nodes()
    import comfy.sd
    patcher, student, base = native_pair()
    lora, _ = extract_lora(base, student, rank=10_000)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)
    from comfyui_salt.nodes.models import salt_in_use
    with torch.inference_mode():
        salt = nodes.SaltCausalFromModel.execute(model=patched).args[0]
        with salt_in_use(salt) as model:
            ours = {k: v.clone() for k, v in model.state_dict().items()}
    for k in student:
        assert_close(ours[k], student[k], 1e-5, k)


def test_the_node_extracts_a_lora_between_two_views_of_one_native_model(tmp_path, monkeypatch):
    """base = SaltCausalFromModel(UNETLoader), student = SaltCausalFromModel(LoraLoaderModelOnly on it): two views of
    one ComfyUI module, each bound to its own MODEL's weights while the node computes. At full rank the extracted
    LoRA is the one the student was patched with."""
    from comfy_import import import_nodes
    nodes = import_nodes()
    import comfy.model_management as mm
    import comfy.sd
    import folder_paths
    exts = folder_paths.folder_names_and_paths["loras"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    patcher, student, base = native_pair()
    lora, _ = extract_lora(base, student, rank=10_000)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)
    try:
        with torch.inference_mode():
            views = [nodes.SaltCausalFromModel.execute(model=m).args[0] for m in (patcher, patched)]
            report = nodes.SaltExtractLoRA.execute(base=views[0], student=views[1], rank=10_000, include_diffs=True,
                                                   dtype="fp32", name="views").args[0]
    finally:
        mm.unload_all_models()
    assert "loras/salt/views.safetensors" in report
    rebuilt = apply_lora(base, comfy_applied(load_file(str(tmp_path / "salt" / "views.safetensors"))))
    for k in student:
        assert_close(rebuilt[k], student[k], 1e-4, k)
    assert all(p.is_meta for v in views for p in v.model.parameters())

