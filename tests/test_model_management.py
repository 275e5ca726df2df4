"""A SALT_MODEL from a file in ComfyUI's model management, measured on the CPU by what moves.

ComfyUI runs here with --cpu, where the load and offload devices are both the CPU: what is observable is
ComfyUI's list of loaded models, each ModelPatcher's loaded size, and the parameters' dtypes and bytes.
On a GPU the same calls move the tensors (not measured here). References: ComfyUI's own model management
(`current_loaded_models`, `free_memory`, `partially_unload`) and ComfyUI's own ModelPatcher around its own
WanModel as the "other" model; the fp8 forward against a plain-torch model whose linear weights are
rounded to fp8 and back.
"""
import gc

import pytest
import torch

from helpers import assert_close
from test_nodes import models_dir, native_wan_patcher, run, stream_inputs  # noqa: F401  (models_dir: a fixture)

FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# Measured on the random toy-preset model below (seed 1): one forward's max error with fp8 linear weights,
# relative to the fp32 output's largest value, is 0.031 stored e4m3 and 0.063 stored e5m2; the bounds leave
# about 2× room (bench/model_memory.py measures the shipped toy student).
FP8_FORWARD_RTOL = {"fp8_e4m3fn": 0.06, "fp8_e5m2": 0.12}


@pytest.fixture
def toy_file(salt_nodes, models_dir):  # noqa: F811
    """(name, model, path) of a random toy-preset checkpoint in models/diffusion_models (fp32)."""
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    model = build_model("toy", seed=1).eval()
    save_model(model, models_dir / "toy.safetensors")
    return "toy.safetensors", model, str(models_dir / "toy.safetensors")


@pytest.fixture(autouse=True)
def nothing_loaded(salt_nodes):
    """Each test starts and ends with ComfyUI's list of loaded models empty."""
    import comfy.model_management as mm
    mm.unload_all_models()
    yield
    mm.unload_all_models()


def load(salt_nodes, name, dtype="fp32", weight_dtype=None):
    extra = {} if weight_dtype is None else {"weight_dtype": weight_dtype}
    return run(salt_nodes.SaltLoadCausalModel, ckpt_name=name, use_ema=True, dtype=dtype, **extra)[0]


def loaded_modules():
    """The torch modules in ComfyUI's list of loaded models."""
    import comfy.model_management as mm
    return [m.model for m in mm.loaded_models()]


def parameter_bytes(module) -> dict:
    """{dtype: bytes} of a module's parameters, counted from the tensors."""
    out = {}
    for p in module.parameters():
        out[p.dtype] = out.get(p.dtype, 0) + p.numel() * p.element_size()
    return out


def sample(salt_nodes, salt, **kw):
    return run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, salt, **kw))[0]["samples"]


# -- what moves ------------------------------------------------------------------------------------------
def test_a_loaded_file_joins_comfys_loaded_models_when_sampled_with_all_its_parameter_bytes(salt_nodes, toy_file):
    import comfy.model_management as mm
    salt = load(salt_nodes, toy_file[0])
    assert salt.patcher.load_device == mm.get_torch_device() and salt.patcher.offload_device == mm.unet_offload_device()
    assert salt.patcher.model is salt.model and salt.patcher.loaded_size() == 0
    assert salt.model not in loaded_modules()                     # loading the file does not claim the device
    sample(salt_nodes, salt)
    assert loaded_modules() == [salt.model]
    bytes_ = sum(parameter_bytes(salt.model).values())
    assert salt.patcher.loaded_size() == salt.patcher.model_size() == bytes_ == 4 * sum(
        p.numel() for p in toy_file[1].parameters())


def test_another_models_load_frees_ours_and_the_next_sampling_loads_it_again(salt_nodes, toy_file):
    import comfy.model_management as mm
    salt = load(salt_nodes, toy_file[0])
    first = sample(salt_nodes, salt)
    native = native_wan_patcher()
    mm.load_models_gpu([native])                                  # a native MODEL, as a KSampler loads it
    assert loaded_modules() == [native.model, salt.model]         # model management sees both
    # What load_models_gpu does on a GPU when the next model needs the room (on the CPU it never needs to).
    freed = mm.free_memory(1e30, mm.get_torch_device(), keep_loaded=[mm.LoadedModel(native)])
    assert [m.model for m in freed] == [salt.patcher] and loaded_modules() == [native.model]
    assert salt.patcher.loaded_size() == 0
    again = sample(salt_nodes, salt)
    assert loaded_modules() == [salt.model, native.model] and salt.patcher.loaded_size() == salt.patcher.model_size()
    assert torch.equal(again, first)


def test_a_partially_offloaded_model_is_loaded_completely_before_sampling(salt_nodes, toy_file):
    salt = load(salt_nodes, toy_file[0])
    first = sample(salt_nodes, salt)
    size = salt.patcher.model_size()
    freed = salt.patcher.partially_unload(salt.patcher.offload_device, memory_to_free=size // 2)
    assert freed >= size // 2 and salt.patcher.loaded_size() == size - freed and salt.model.model_lowvram
    again = sample(salt_nodes, salt)
    assert salt.patcher.loaded_size() == size and not salt.model.model_lowvram
    assert torch.equal(again, first)


def test_the_sampler_asks_model_management_for_room_for_the_weights_and_the_kv_cache(salt_nodes, toy_file,
                                                                                     monkeypatch):
    import comfy.model_management as mm
    from comfyui_salt.salt_core.streaming import stream_memory_bytes
    calls, real = [], mm.load_models_gpu

    def spy(models, **kw):
        calls.append((models, kw))
        return real(models, **kw)
    monkeypatch.setattr(mm, "load_models_gpu", spy)
    salt = load(salt_nodes, toy_file[0])
    inputs = stream_inputs(salt_nodes, salt)
    sample(salt_nodes, salt)
    options = inputs["cache_options"]
    need = stream_memory_bytes(salt.model.cfg, 1, 2 * options.chunk_frames, (16, 16), options.policy,
                               options.chunk_frames, 1.0, torch.float32)
    assert calls == [([salt.patcher], {"memory_required": need, "force_full_load": True})]


def test_comfys_list_forgets_a_salt_model_once_nothing_holds_it(salt_nodes, toy_file):
    import comfy.model_management as mm
    salt = load(salt_nodes, toy_file[0])
    sample(salt_nodes, salt)
    assert len(mm.current_loaded_models) == 1
    del salt                                   # what ComfyUI's cache does when the loader's output is dropped
    gc.collect()
    mm.cleanup_models_gc()
    assert mm.current_loaded_models == []


def test_the_toy_model_is_managed_too(salt_nodes, toy_file, monkeypatch):
    from comfyui_salt.nodes import toy
    monkeypatch.setitem(toy.TOY_ASSETS, "toy_teacher", toy_file[2])
    salt = run(salt_nodes.SaltToyModel, asset="toy_teacher")[0]
    sample(salt_nodes, salt)
    assert loaded_modules() == [salt.model] and salt.patcher.loaded_size() == salt.patcher.model_size()


# -- a native MODEL's view (SaltCausalFromModel) --------------------------------------------------------------
def native_inputs(salt_nodes, salt, seed=7):
    """SaltStreamingSampler inputs for the tiny native Wan (16 latent channels, 4096-wide text)."""
    positive = [[torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(3)), {}]]
    return stream_inputs(salt_nodes, salt, positive=positive, width=64, height=64, seed=seed)


def test_a_native_view_is_loaded_through_its_model_and_holds_no_weight_comfy_unloads(salt_nodes):
    """SaltCausalFromModel on a LoRA-patched MODEL: the sampler has ComfyUI load the MODEL (patches applied);
    once ComfyUI unloads it (patches removed, as before another model loads), no tensor of the Salt model still
    holds the patched weights; the next sampling patches again and gives the same video."""
    import comfy.model_management as mm
    base = native_wan_patcher()
    key = "diffusion_model.blocks.0.self_attn.q.weight"
    native = base.model.diffusion_model
    original = native.blocks[0].self_attn.q.weight.detach().clone()
    patched = base.clone()
    patched.add_patches({key: (torch.randn(original.shape, generator=torch.Generator().manual_seed(5)),)}, 0.5)
    salt = run(salt_nodes.SaltCausalFromModel, model=patched)[0]
    assert loaded_modules() == []                       # wiring the node loads nothing
    first = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    assert loaded_modules() == [patched.model] and patched.loaded_size() == patched.model_size()
    lora_weight = native.blocks[0].self_attn.q.weight
    assert not torch.equal(lora_weight, original)       # the patch was applied for the sampling
    mm.unload_all_models()                              # what load_models_gpu does for a model that needs the room
    assert torch.equal(native.blocks[0].self_attn.q.weight, original)
    held = {t.untyped_storage().data_ptr() for t in salt.model.state_dict().values() if not t.is_meta}
    assert lora_weight.untyped_storage().data_ptr() not in held and held == set()
    again = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    assert torch.equal(again, first) and loaded_modules() == [patched.model]
    plain = run(salt_nodes.SaltStreamingSampler, **native_inputs(
        salt_nodes, run(salt_nodes.SaltCausalFromModel, model=base)[0]))[0]["samples"]
    assert not torch.equal(plain, first)                # the patch reaches Salt's sampling


def test_a_partially_loaded_native_model_samples_the_same_video(salt_nodes):
    patcher = native_wan_patcher()
    salt = run(salt_nodes.SaltCausalFromModel, model=patcher)[0]
    first = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    size = patcher.model_size()
    freed = patcher.partially_unload(patcher.offload_device, memory_to_free=size // 2)
    assert freed >= size // 2 and patcher.model.model_lowvram
    again = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    assert torch.equal(again, first)


def test_a_bind_or_a_sampling_that_fails_leaves_the_native_model_whole(salt_nodes, monkeypatch):
    """A cast that fails while binding (e.g. out of memory) or an error while the view computes: the view goes back
    to its own placeholders and the MODEL keeps its weights; the next sampling works and gives the same video."""
    import comfy.model_management as mm
    from comfyui_salt.nodes import models
    from comfyui_salt.nodes.bridge import view_patcher
    patcher = native_wan_patcher()
    native = patcher.model.diffusion_model
    salt = run(salt_nodes.SaltCausalFromModel, model=patcher)[0]
    first = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    mm.unload_all_models()
    real = view_patcher.cast_weight_bias
    monkeypatch.setattr(view_patcher, "cast_weight_bias",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):       # the bind at load fails: the MODEL is detached
        run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))
    assert loaded_modules() == [] and all(p.is_meta for p in salt.model.parameters())
    monkeypatch.setattr(view_patcher, "cast_weight_bias", real)
    with pytest.raises(ZeroDivisionError), models.salt_in_use(salt):
        1 / 0
    mm.unload_all_models()
    assert all(not p.is_meta for p in native.parameters()) and all(p.is_meta for p in salt.model.parameters())
    assert all(type(m) is torch.nn.Linear for m in salt.model.modules() if isinstance(m, torch.nn.Linear))
    again = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    assert torch.equal(again, first) and all(not p.is_meta for p in native.parameters())


def test_the_views_patcher_binds_on_load_and_frees_when_comfys_own_sampler_loads_the_model(salt_nodes, monkeypatch):
    """The view's patcher is a clone of the MODEL's, of a subclass of its class: each load binds the view (ComfyUI
    detaches and reloads a loaded model at every load_models_gpu, so once per sampling, as before the patcher held
    the binding), loading the original MODEL (what ComfyUI's KSampler does) unloads the clone and leaves the view
    hollow, and a clone of the view's patcher has a view of its own."""
    import comfy.model_management as mm
    from comfyui_salt.nodes.bridge import view_patcher
    patcher = native_wan_patcher()
    native = patcher.model.diffusion_model
    salt = run(salt_nodes.SaltCausalFromModel, model=patcher)[0]
    assert type(salt.patcher).__name__ == f"SaltView{type(patcher).__name__}" and salt.patcher.is_clone(patcher)
    casts = []
    real = view_patcher._small_tensors
    monkeypatch.setattr(view_patcher, "_small_tensors", lambda *a: casts.append(1) or real(*a))
    first = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    again = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    assert torch.equal(first, again) and len(casts) == 2 and loaded_modules() == [patcher.model]
    assert salt.model.blocks[0].self_attn.q is native.blocks[0].self_attn.q
    mm.load_models_gpu([patcher])                        # ComfyUI's own sampler on the original MODEL
    assert [m for m in mm.loaded_models()] == [patcher] and all(p.is_meta for p in salt.model.parameters())
    twin = salt.patcher.clone()
    assert type(twin) is type(salt.patcher) and twin.salt_view is not salt.model and twin.is_clone(patcher)
    assert all(p.is_meta for p in twin.salt_view.parameters())
    third = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    assert torch.equal(third, first) and len(casts) == 3


def test_a_partial_unload_frees_the_views_casts_and_the_next_sampling_binds_again(salt_nodes):
    patcher = native_wan_patcher()
    salt = run(salt_nodes.SaltCausalFromModel, model=patcher)[0]
    first = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    size = salt.patcher.model_size()
    salt.patcher.partially_unload(salt.patcher.offload_device, memory_to_free=size // 2)
    assert all(p.is_meta for p in salt.model.parameters())
    again = run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, salt))[0]["samples"]
    assert torch.equal(again, first)


# -- Dynamic VRAM (ComfyUI 0.16+) and partial loads: a stand-in patcher on the CPU (tests/dynamic_vram.py) -----
def lora_patched(base, seed=5, strength=0.5):
    """A clone of a native MODEL with full-matrix patches (a LoRA's effect) on q of block 0 and the first FFN layer."""
    patched = base.clone()
    native = base.model.diffusion_model
    g = torch.Generator().manual_seed(seed)
    patched.add_patches({f"diffusion_model.{k}": (torch.randn(native.get_parameter(k).shape, generator=g),)
                         for k in ("blocks.0.self_attn.q.weight", "blocks.0.ffn.0.weight")}, strength)
    return patched


def native_sample(salt_nodes, patcher):
    return run(salt_nodes.SaltStreamingSampler, **native_inputs(
        salt_nodes, run(salt_nodes.SaltCausalFromModel, model=patcher)[0]))[0]["samples"]


@pytest.fixture
def native_videos(salt_nodes):
    """(base MODEL, its LoRA-patched clone, the patched clone's video and the base's, both fully loaded)."""
    import comfy.model_management as mm
    base = native_wan_patcher()
    patched = lora_patched(base)
    with_lora = native_sample(salt_nodes, patched)
    mm.unload_all_models()
    plain = native_sample(salt_nodes, base)
    mm.unload_all_models()
    assert not torch.allclose(with_lora, plain, atol=1e-3)
    return base, patched, with_lora, plain


def test_under_dynamic_vram_a_native_view_samples_with_its_lora_applied_per_cast(salt_nodes, native_videos):
    """ComfyUI never loads a dynamic MODEL completely nor writes its LoRA into the weights: Salt's view computes with
    the MODEL's own cast-on-use layers, so the patches are in effect as they are for ComfyUI's own samplers."""
    from dynamic_vram import lowvram_layers, make_dynamic
    base, patched, with_lora, _ = native_videos
    native = base.model.diffusion_model
    original = native.blocks[0].self_attn.q.weight.detach().clone()
    dynamic = make_dynamic(patched.clone())
    out = native_sample(salt_nodes, dynamic)
    assert dynamic.loaded_size() < dynamic.model_size()                    # not loaded completely ...
    assert "blocks.0.self_attn.q" in lowvram_layers(native)                 # ... patched per cast ...
    assert torch.equal(native.blocks[0].self_attn.q.weight, original)       # ... never written into the weight
    assert_close(out, with_lora, 1e-5, "Dynamic VRAM vs a full load with the LoRA written in")


def test_under_novram_a_native_view_samples_with_its_lora_from_a_partial_load(salt_nodes, native_videos,
                                                                               monkeypatch):
    """--novram: ComfyUI loads nothing completely (simulated: a GPU-like device, NO_VRAM); the view samples with
    the LoRA applied per cast instead of refusing."""
    import comfy.model_management as mm
    _, patched, with_lora, _ = native_videos
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    out = native_sample(salt_nodes, patched)
    assert patched.model.model_lowvram and patched.loaded_size() < patched.model_size()
    assert_close(out, with_lora, 1e-5, "--novram partial load vs a full load")


def test_under_dynamic_vram_a_loaded_file_samples_as_comfy_loads_it(salt_nodes, toy_file):
    """A SALT_MODEL from a file gets ComfyUI's core patcher; when that is dynamic it is loaded as ComfyUI decides
    (its linear layers are cast-on-use ops) and samples the same video, in full precision and fp8 storage."""
    import comfy.model_management as mm
    from dynamic_vram import lowvram_layers, make_dynamic
    for weight_dtype in ("default", "fp8_e4m3fn"):
        first = sample(salt_nodes, load(salt_nodes, toy_file[0], weight_dtype=weight_dtype))
        mm.unload_all_models()
        salt = load(salt_nodes, toy_file[0], weight_dtype=weight_dtype)
        make_dynamic(salt.patcher)
        again = sample(salt_nodes, salt)
        assert salt.patcher.loaded_size() < salt.patcher.model_size() and lowvram_layers(salt.model) == []
        assert any(getattr(m, "comfy_cast_weights", False) for m in salt.model.modules())
        assert torch.equal(again, first), weight_dtype
        mm.unload_all_models()


def test_the_sampler_checks_memory_with_the_patchers_own_free_memory_query(salt_nodes, toy_file):
    """Under Dynamic VRAM the module-level query misses what ComfyUI can evict: the patcher's own one is used."""
    from dynamic_vram import make_dynamic
    salt = load(salt_nodes, toy_file[0])
    make_dynamic(salt.patcher).get_free_memory = lambda device: 1000
    with pytest.raises(MemoryError, match="more than 0.0 MiB .ComfyUI.s free memory"):
        sample(salt_nodes, salt)


def test_under_dynamic_vram_extract_lora_reads_each_views_own_patches(salt_nodes, tmp_path, monkeypatch):
    """Two dynamic views of one module (the base MODEL and a LoRA-patched clone): each weight is read with its own
    MODEL's patches, so at full rank the extracted LoRA rebuilds the patched weights."""
    import folder_paths
    from safetensors.torch import load_file
    from comfyui_salt.salt_core.lora import apply_lora, comfy_applied
    from dynamic_vram import make_dynamic
    exts = folder_paths.folder_names_and_paths["loras"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    base = native_wan_patcher()
    patched = lora_patched(base)
    sd = {k: v.detach().clone() for k, v in base.model.diffusion_model.state_dict().items()}
    views = [run(salt_nodes.SaltCausalFromModel, model=make_dynamic(m.clone()))[0] for m in (base, patched)]
    run(salt_nodes.SaltStreamingSampler, **native_inputs(salt_nodes, views[1]))     # the patched clone loaded last
    run(salt_nodes.SaltExtractLoRA, base=views[0], student=views[1], rank=10_000, include_diffs=True,
        dtype="fp32", name="dynamic")
    rebuilt = apply_lora(sd, comfy_applied(load_file(str(tmp_path / "salt" / "dynamic.safetensors"))))
    for k, (delta,) in ((k[len("diffusion_model."):], [p[1][0] for p in v]) for k, v in patched.patches.items()):
        assert_close(rebuilt[k], sd[k] + 0.5 * delta, 1e-5, k)
    unchanged = [k for k in sd if "diffusion_model." + k not in patched.patches]
    assert all(torch.equal(rebuilt[k], sd[k]) for k in unchanged)


def test_a_native_model_stored_in_fp8_samples_what_its_rounded_weights_sample(salt_nodes):
    """Load Diffusion Model with weight_dtype fp8 (Comfy-Org's fp8 Wan files load this way): the view computes in
    the MODEL's compute dtype with each layer cast on use; reference: the same weights rounded to fp8 and back."""
    import comfy.model_management as mm
    import comfy.sd
    from comfyui_salt.salt_core.config import WanConfig
    from comfyui_salt.salt_core.model import build_model
    from test_nodes import NATIVE_WAN
    sd = build_model(WanConfig(**NATIVE_WAN), seed=0).state_dict()
    fp8 = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in sd.items()},
                                                   model_options={"dtype": torch.float8_e4m3fn})
    stored = fp8.model.diffusion_model.state_dict()
    assert stored["blocks.0.self_attn.q.weight"].dtype == torch.float8_e4m3fn
    out = native_sample(salt_nodes, fp8)
    mm.unload_all_models()
    rounded = comfy.sd.load_diffusion_model_state_dict({k: v.to(stored[k].dtype).float() for k, v in sd.items()})
    assert_close(out, native_sample(salt_nodes, rounded), 1e-5, "fp8 storage vs rounded weights")


def test_a_file_model_comfy_will_not_load_completely_is_refused_naming_the_cause(salt_nodes, toy_file, monkeypatch):
    """Under --novram a classic patcher loads a model partially even when asked for a full load; a file model's own
    norms and modulation tables are not cast on use, so Salt refuses, naming the partial load and --novram.
    Simulated: a GPU-like device, NO_VRAM."""
    import comfy.model_management as mm
    salt = load(salt_nodes, toy_file[0])
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    with pytest.raises(RuntimeError, match=r"partial 'lowvram' load: ComfyUI makes one under --novram"):
        sample(salt_nodes, salt)


# -- dtypes ----------------------------------------------------------------------------------------------
def test_bf16_halves_and_fp8_stores_each_linear_weight_in_one_byte(salt_nodes, toy_file):
    model = toy_file[1]
    linear_w = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    assert parameter_bytes(load(salt_nodes, toy_file[0]).model) == {torch.float32: 4 * total}
    assert parameter_bytes(load(salt_nodes, toy_file[0], "bf16").model) == {torch.bfloat16: 2 * total}
    for name, fp8 in FP8.items():
        for dtype, compute, size in [("fp32", torch.float32, 4), ("bf16", torch.bfloat16, 2)]:
            salt = load(salt_nodes, toy_file[0], dtype, name)
            assert parameter_bytes(salt.model) == {fp8: linear_w, compute: size * (total - linear_w)}, (name, dtype)
            assert salt.patcher.model_size() == linear_w + size * (total - linear_w)
            assert salt.model.patch_embedding.weight.dtype == compute      # the compute dtype the model reports


def test_fp8_layers_are_comfys_cast_on_use_ops_and_compute_what_rounded_weights_compute(salt_nodes, toy_file):
    import comfy.ops
    from comfyui_salt.salt_core.model import build_model
    x = torch.randn(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t, ctx = torch.full((1,), 700.0), torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = toy_file[1](x, t, ctx)
        for name, fp8 in FP8.items():
            salt = load(salt_nodes, toy_file[0], "fp32", name)
            linears = [m for m in salt.model.modules() if isinstance(m, torch.nn.Linear)]
            assert linears and all(isinstance(m, comfy.ops.manual_cast.Linear) for m in linears)
            # Independent reference: plain torch layers whose weights went to fp8 and back.
            rounded = build_model("toy").eval()
            rounded.load_state_dict({k: v.to(fp8).float() if k.endswith(".weight") and v.ndim == 2 else v   # linears
                                     for k, v in toy_file[1].state_dict().items()})
            out = salt.model(x, t, ctx)
            assert_close(out, rounded(x, t, ctx), 1e-6, f"{name} storage vs rounded weights")
            assert_close(out, exact, FP8_FORWARD_RTOL[name], f"{name} storage vs fp32")


def test_an_fp8_stored_file_keeps_its_fp8_storage_and_streams_what_rounded_weights_stream(salt_nodes, toy_file,
                                                                                          models_dir):  # noqa: F811
    """Comfy-Org's fp8 Wan files store the linear weights in fp8: weight_dtype 'default' keeps that storage (as
    UNETLoader does) and the video equals the fp32 file's with weight_dtype fp8_e4m3fn (the same rounding)."""
    from safetensors.torch import save_file
    from comfyui_salt.weights.files import read_metadata
    sd = toy_file[1].state_dict()
    save_file({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 and k.endswith(".weight") else v for k, v in sd.items()},
              str(models_dir / "toy_fp8.safetensors"), metadata=read_metadata(toy_file[2]))   # the toy config
    salt = load(salt_nodes, "toy_fp8.safetensors")
    linear = {m.weight.dtype for m in salt.model.modules() if isinstance(m, torch.nn.Linear)}
    assert linear == {torch.float8_e4m3fn} and salt.model.patch_embedding.weight.dtype == torch.float32
    reference = load(salt_nodes, toy_file[0], weight_dtype="fp8_e4m3fn")
    assert torch.equal(sample(salt_nodes, salt), sample(salt_nodes, reference))


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "scaled-fp8"])
def test_an_fp8_wan_file_computes_what_comfys_own_wan_model_computes_from_it(salt_nodes, models_dir, scaled):
    """Independent reference for fp8 files: ComfyUI's UNETLoader path (comfy.sd.load_diffusion_model) on the same
    bytes, its own WanModel forward against SaltLoadCausalModel's (fp32 compute)."""
    import comfy.sd
    from safetensors.torch import save_file
    from comfyui_salt.salt_core.config import WanConfig
    from comfyui_salt.salt_core.model import build_model
    from test_nodes import NATIVE_WAN
    stored = {}
    sd = build_model(WanConfig(**NATIVE_WAN), seed=3).state_dict()
    for k, v in sd.items():
        key = "model.diffusion_model." + k
        if k.endswith(".bias") and k[:-len(".bias")] + ".weight" in sd and sd[k[:-len(".bias")] + ".weight"].ndim == 2:
            v = v.to(torch.float8_e4m3fn).float()    # ComfyUI 0.3.75 stores linear biases of fp8 files in fp8 too
        if v.ndim == 2 and k.endswith(".weight"):
            scale = torch.tensor(v.abs().max().item() / 200.0) if scaled else torch.tensor(1.0)
            stored[key] = (v / scale).to(torch.float8_e4m3fn)
            if scaled:
                stored[key[:-len(".weight")] + ".scale_weight"] = scale
                stored[key[:-len(".weight")] + ".scale_input"] = torch.tensor(1.0)
        else:
            stored[key] = v
    if scaled:
        stored["model.diffusion_model.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)   # under the prefix
    save_file(stored, str(models_dir / "wan_fp8.safetensors"))
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 5, 4096, generator=g), torch.tensor([640.0])
    salt = load(salt_nodes, "wan_fp8.safetensors", "fp32")
    patcher = comfy.sd.load_diffusion_model(str(models_dir / "wan_fp8.safetensors"))   # what UNETLoader does
    native = patcher.model.diffusion_model
    compute = patcher.model.manual_cast_dtype or torch.float32
    with torch.no_grad():
        ours = salt.model(x, t, ctx)
        theirs = native(x.to(compute), t, ctx.to(compute))
    # fp32 compute: the same numbers (1e-5); ComfyUI 0.3.75 computes scaled fp8 in bf16 on the CPU: bf16's 2^-8
    assert_close(ours, theirs, 1e-5 if compute == torch.float32 else 1e-2, f"Salt vs ComfyUI ({compute}) on one file")
    if scaled:   # the same file as a native MODEL: its layers scale in their own forward, which Salt's view skips
        from comfyui_salt.nodes.models import salt_from_native
        # ComfyUI 0.3.75 keeps scale_weight / scale_input beside the fp8 weights; 0.33 loads the same file in its
        # quantized format (comfy_quant): either way refused, naming SaltLoadCausalModel for the file
        with pytest.raises(ValueError, match=r"(scaled fp8 \(\d+ scale tensors|quantized formats \(\d+ tensors).*"
                                             r"SaltLoadCausalModel"):
            salt_from_native(native, patcher)


def test_a_native_model_in_a_quantized_format_is_refused_naming_it_not_sent_to_the_other_loader(salt_nodes):
    """ComfyUI's quantized formats show as `weight_scale` / `input_scale` / `comfy_quant` keys (0.33) or as
    QuantizedTensor weights whose scales live inside them (0.3.75's mixed precision): refused as a format Salt does
    not read (the file loader refuses them too, so neither points to the other)."""
    from comfyui_salt.nodes.models import salt_from_native
    for extra in (".weight_scale", ".input_scale", ".comfy_quant"):
        native = torch.nn.Module()
        native.register_buffer("q", torch.zeros(2, 2))
        sd_keys = {"blocks.0.self_attn.q.weight": torch.zeros(2, 2), "blocks.0.self_attn.q" + extra: torch.ones(())}
        native.state_dict = lambda sd=sd_keys: sd
        with pytest.raises(ValueError, match=r"quantized formats \(1 tensors, e\.g\. 'blocks\.0\.self_attn\.q"
                                             r".*which Salt does not read"):
            salt_from_native(native, None)


def test_comfys_disable_mmap_copies_the_weights_out_of_the_files_mapping(salt_nodes, models_dir, monkeypatch):
    """A weight loaded in the file's own dtype stays a view of its memory map, as ComfyUI keeps it: the file rewritten
    in place changes the model (truncated: SIGBUS). With ComfyUI's --disable-mmap the node copies it out, as
    ComfyUI's loaders then do: the model no longer sees the file."""
    import struct
    import comfy.utils
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    path = models_dir / "mapped.safetensors"
    save_model(build_model("toy", seed=0), path)
    raw = path.read_bytes()
    data = 8 + struct.unpack("<Q", raw[:8])[0]                 # the tensors' bytes start after the header
    seen = {}
    for disabled in (False, True):
        monkeypatch.setattr(comfy.utils, "DISABLE_MMAP", disabled)
        salt = load(salt_nodes, "mapped.safetensors", "fp32")
        before = [p.detach().clone() for p in salt.model.parameters()]
        with open(path, "r+b") as f:                           # zeroed in place: the same inode, the same mapping
            f.seek(data)
            f.write(bytes(len(raw) - data))
        seen[disabled] = all(torch.equal(p, q) for p, q in zip(salt.model.parameters(), before))
        del salt, before
        path.write_bytes(raw)                                  # as it was, for the next pass
    assert seen == {False: False, True: True}, seen


def test_an_unknown_weight_dtype_is_refused_with_the_options(salt_nodes, toy_file):
    with pytest.raises(ValueError, match="SaltLoadCausalModel: weight_dtype='int4'; expected one of "
                                         r"\['default', 'fp8_e4m3fn', 'fp8_e4m3fn_fast', 'fp8_e5m2'\]"):
        load(salt_nodes, toy_file[0], "fp32", "int4")


def test_weight_dtype_is_an_optional_last_widget_so_saved_workflows_keep_loading(salt_nodes):
    info = salt_nodes.SaltLoadCausalModel.GET_NODE_INFO_V1()["input"]
    assert list(info["required"]) == ["ckpt_name", "use_ema", "dtype"]
    assert info["optional"]["weight_dtype"][1]["default"] == "default"


def test_extract_lora_refuses_a_model_loaded_with_fp8_weights_and_names_the_fix(salt_nodes, toy_file):
    """fp8 rounding (~6 % per weight) would swamp a distilled difference: the node says to load full precision."""
    student = load(salt_nodes, toy_file[0], weight_dtype="fp8_e4m3fn")
    base = load(salt_nodes, toy_file[0])
    with pytest.raises(ValueError, match=r"student stores .* in fp8 .*weight_dtype 'default'"):
        salt_nodes.SaltExtractLoRA.execute(base=base, student=student, rank=4, include_diffs=True, dtype="fp32",
                                           name="never_written")
