"""Node tests: each node's `execute` called directly, in-process, with ComfyUI's modules importable.

Independent references where there are some: ComfyUI's own WanModel forward and its native
SamplerCustomAdvanced / RandomNoise / BasicGuider nodes. Skipped when ComfyUI is not installed.
"""
import ast
import asyncio
import pathlib

import re

import pytest
import torch

from comfy_import import import_comfy
from helpers import assert_close, brute_force_rollout

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "latent_preview",
                 "node_helpers", "server", "execution"}
# A Wan-shaped model ComfyUI's model detection accepts (head dim 128, freq_dim 256, umT5 width), 1 block.
NATIVE_WAN = dict(dim=256, ffn_dim=256, num_heads=2, num_layers=1, in_dim=16, out_dim=16, text_dim=4096, freq_dim=256)
CAPTION = "a red disc moving left on a dark background"


@pytest.fixture
def models_dir(salt_nodes, tmp_path, monkeypatch):
    """A temporary models/diffusion_models folder registered with ComfyUI's folder_paths."""
    import folder_paths
    folder = tmp_path / "diffusion_models"
    folder.mkdir()
    exts = folder_paths.folder_names_and_paths["diffusion_models"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models", ([str(folder)], exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return folder


def run(node, **inputs):
    """The node's outputs (tuple) from a direct `execute` call, under inference mode as ComfyUI runs nodes."""
    with torch.inference_mode():
        return node.execute(**inputs).args


def toy_options(salt_nodes, attention="full", **kw):
    args = dict(chunk_frames=3, attention=attention, window_frames=6, sink_frames=3, relative_rope=False,
                context_noise=0.0, max_frames=12)
    args.update(kw)
    return run(salt_nodes.SaltCacheOptions, **args)[0]


def stream_inputs(salt_nodes, model, **kw):
    args = dict(model=model, positive=run(salt_nodes.SaltToyTextEncode, text=CAPTION)[0],
                cache_options=toy_options(salt_nodes), sigmas=run(salt_nodes.SaltFewStepSigmas, preset="2step",
                                                                  nfe=2, shift=1.0)[0],
                seed=7, num_chunks=2, width=16, height=16, batch_size=1, sampling="stochastic", cfg=1.0)
    args.update(kw)
    return args


# -- structure -------------------------------------------------------------------------------------------
def _imported_modules(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def test_only_the_bridge_package_imports_comfyui():
    offenders = [f"{p.name}: {m}" for p in (ROOT / "nodes").glob("*.py") for m in _imported_modules(p)
                 if m in COMFY_MODULES]
    assert offenders == []
    inside = {p.name: set(_imported_modules(p)) & COMFY_MODULES for p in (ROOT / "nodes" / "bridge").glob("*.py")}
    assert inside["__init__.py"] == {"comfy_api"} and all(inside[f"{m}.py"] for m in
                                                         ("paths", "memory", "progress", "convert", "decoders"))


def test_the_entry_point_lists_every_node_with_a_stable_salt_id_category_and_description(salt_nodes):
    from comfy_api.latest import ComfyExtension
    extension = asyncio.run(salt_nodes.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    nodes = asyncio.run(extension.get_node_list())
    ids = [n.GET_SCHEMA().node_id for n in nodes]
    assert ids == ["SaltFewStepSigmas", "SaltFewStepSampler", "SaltCacheOptions", "SaltLoadCausalModel",
                   "SaltCausalFromModel", "SaltStreamingSampler", "SaltToyModel", "SaltToyTextEncode", "SaltToyDecode",
                   "SaltDistill", "SaltExtractLoRA", "SaltSemigroupDefect", "SaltLiveStream"]
    for node in nodes:
        schema = node.GET_SCHEMA()
        assert schema.category.startswith("Salt/") and schema.description and node.__doc__, schema.node_id


def test_every_widget_has_a_tooltip_and_every_number_a_range(salt_nodes):
    for node in salt_nodes.NODES:
        info = node.GET_NODE_INFO_V1()
        for group in (g for kind, g in info["input"].items() if kind != "hidden"):   # output nodes get hidden ones
            for name, (kind, opts) in group.items():
                assert opts.get("tooltip"), f"{info['name']}.{name} has no tooltip"
                if kind in ("INT", "FLOAT"):
                    assert "min" in opts and "max" in opts, f"{info['name']}.{name} has no range"


def test_the_pack_root_loaded_as_comfyui_loads_it_exposes_the_entry_point():
    """ComfyUI executes the pack folder's __init__.py as a package named after its path."""
    import importlib.util
    import sys
    import_comfy()
    name = "salt_pack_loaded_as_comfy"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        nodes = asyncio.run(asyncio.run(module.comfy_entrypoint()).get_node_list())
        assert len(nodes) == 13 and nodes[0].__module__ == f"{name}.nodes.sampling"
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


# -- sigmas and the native sampler ----------------------------------------------------------------------
def test_the_self_forcing_preset_gives_the_warped_four_step_grid(salt_nodes):
    sigmas = run(salt_nodes.SaltFewStepSigmas, preset="self_forcing_4step", nfe=1, shift=5.0)[0]
    assert sigmas.dtype == torch.float32
    assert_close(sigmas, torch.tensor([1.0, 0.9375, 5 / 6, 0.625, 0.0]), 1e-6, "4-step grid")


def test_uniform_custom_and_named_presets_agree_where_they_should(salt_nodes):
    sig = salt_nodes.SaltFewStepSigmas
    two = run(sig, preset="2step", nfe=1, shift=3.0)[0]
    assert torch.equal(run(sig, preset="uniform", nfe=2, shift=3.0)[0], two)
    assert torch.equal(run(sig, preset="custom", nfe=1, shift=3.0, custom_steps="1000, 500")[0], two)
    assert len(run(sig, preset="training_8step", nfe=1, shift=5.0)[0]) == 9
    assert_close(run(sig, preset="uniform", nfe=4, shift=1.0)[0], torch.tensor([1, .75, .5, .25, 0.]), 1e-7)


@pytest.mark.parametrize("inputs, words", [
    (dict(preset="uniform", nfe=9, shift=5.0), ["nfe=9", "1..8"]),
    (dict(preset="custom", nfe=4, shift=5.0, custom_steps="fast please"), ["custom_steps", "1000, 750"]),
    (dict(preset="custom", nfe=4, shift=5.0, custom_steps="500 750"), ["decreasing"]),
    (dict(preset="uniform", nfe=4, shift=0.0), ["shift=0.0"]),
])
def test_bad_sigma_inputs_raise_errors_naming_the_input_and_the_fix(salt_nodes, inputs, words):
    with pytest.raises(ValueError) as e:
        run(salt_nodes.SaltFewStepSigmas, **inputs)
    assert all(w in str(e.value) for w in ["SaltFewStepSigmas"] + words), str(e.value)


def test_the_sampler_is_a_ksampler_that_matches_the_few_step_recursion_given_comfys_noise_scaling(salt_nodes):
    import comfy.model_sampling
    import comfy.samplers

    class Sampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    class Wrap:  # stands in for ComfyUI's CFG guider: model(x, σ, ...) → x0, with the attributes KSAMPLER reads
        inner_model = type("Inner", (), {"model_sampling": Sampling()})()
        model_patcher, cfg = type("Patcher", (), {"model": inner_model})(), 1.0   # 0.33 logs them at the first step

        def __call__(self, x, sigma, **_):
            return 0.5 * x + 0.1 * sigma.view(-1, 1, 1, 1, 1)

    sampler = run(salt_nodes.SaltFewStepSampler, mode="stochastic")[0]
    assert isinstance(sampler, comfy.samplers.KSAMPLER)
    sigmas = run(salt_nodes.SaltFewStepSigmas, preset="self_forcing_4step", nfe=4, shift=5.0)[0]
    noise, latent = torch.randn(1, 4, 3, 4, 4), torch.randn(1, 4, 3, 4, 4)
    out = sampler.sample(Wrap(), sigmas, {"seed": 3}, None, noise, latent_image=latent)
    # By hand: ComfyUI noises the latent to σ0; each step re-noises x0 with a fresh draw from Generator(seed), the last
    # step's x0 is the sample.
    x, gen = sigmas[0] * noise + (1 - sigmas[0]) * latent, torch.Generator().manual_seed(3)
    for sigma, nxt in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        x0 = 0.5 * x + 0.1 * sigma
        x = x0 if nxt == 0 else (1 - nxt) * x0 + nxt * torch.randn(x.shape, generator=gen)
    assert_close(out, x, 1e-6, "KSAMPLER vs the recursion by hand")


def native_wan_state_dict(seed=0) -> dict:
    """The original-name state dict of a tiny random Wan (NATIVE_WAN)."""
    from comfyui_salt.salt_core.config import WanConfig
    from comfyui_salt.salt_core.model import build_model
    return {k: v.clone() for k, v in build_model(WanConfig(**NATIVE_WAN), seed=seed).state_dict().items()}


def native_wan_patcher(seed=0):
    """A ComfyUI MODEL (ModelPatcher around comfy's WanModel) loaded from a tiny Wan state dict, as UNETLoader does."""
    import comfy.sd
    return comfy.sd.load_diffusion_model_state_dict(native_wan_state_dict(seed))


@pytest.mark.parametrize("mode", ["stochastic", "deterministic"])
def test_the_sampler_runs_in_native_sampler_custom_advanced_like_salts_own_sampler(salt_nodes, mode):
    """Native path (RandomNoise + BasicGuider + SamplerCustomAdvanced on comfy's WanModel) vs Salt's path
    (the same weights adopted by SaltCausalFromModel, FlowDenoiser, salt_core sampler, LATENT conversion)."""
    from comfy_extras import nodes_custom_sampler as ncs
    from comfyui_salt.nodes.bridge.convert import latent_to_comfy
    from comfyui_salt.salt_core.denoiser import FlowDenoiser
    from comfyui_salt.nodes.sampling import SAMPLERS
    patcher = native_wan_patcher()
    context = torch.randn(1, 6, NATIVE_WAN["text_dim"], generator=torch.Generator().manual_seed(1))
    latent = {"samples": torch.zeros(1, 16, 3, 8, 8)}
    noise = run(ncs.RandomNoise, noise_seed=11)[0]
    guider = run(ncs.BasicGuider, model=patcher, conditioning=[[context, {}]])[0]
    sigmas = run(salt_nodes.SaltFewStepSigmas, preset="self_forcing_4step", nfe=4, shift=5.0)[0]
    sampler = run(salt_nodes.SaltFewStepSampler, mode=mode)[0]
    native = run(ncs.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                 latent_image=latent)[0]["samples"]

    from comfyui_salt.nodes.models import salt_in_use
    salt = run(salt_nodes.SaltCausalFromModel, model=patcher)[0]
    x = noise.generate_noise(latent) * sigmas[0]
    with salt_in_use(salt) as model:
        ours = SAMPLERS[mode](FlowDenoiser(model, context), x, sigmas, extra_args={"seed": 11}, disable=True)
    assert_close(native, latent_to_comfy(ours, salt.latent_format), 1e-4, f"{mode}: native vs Salt")


# -- models ----------------------------------------------------------------------------------------------
def test_causal_from_model_shares_every_weight_with_comfys_wan_model_and_matches_its_forward(salt_nodes):
    from comfyui_salt.nodes.models import salt_in_use
    patcher = native_wan_patcher()
    native = patcher.model.diffusion_model
    flags = {k: p.requires_grad for k, p in native.named_parameters()}
    import comfy.model_management as mm
    salt = run(salt_nodes.SaltCausalFromModel, model=patcher)[0]
    assert salt.native and salt.patcher.is_clone(patcher) and isinstance(salt.patcher, type(patcher))
    assert all(p.is_meta for p in salt.model.parameters()), "the view holds tensors before ComfyUI loads the MODEL"
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 5, 4096, generator=g)
    t = torch.tensor([640.0])
    with salt_in_use(salt) as model, torch.no_grad():
        theirs = dict(native.named_parameters())
        ours = dict(model.named_parameters())
        assert set(ours) == set(theirs)
        linears = [n for n, m in native.named_modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(model.get_submodule(n) is native.get_submodule(n) for n in linears)
        assert all(ours[k].data_ptr() == theirs[k].data_ptr() for k in ours), "weights were copied"
        assert salt.latent_format == "wan21" and model.cfg.text_len == native.text_len
        assert_close(model(x, t, ctx), native(x, t, ctx), 1e-5, "Salt vs ComfyUI WanModel forward")
        with salt_in_use(salt) as inner:                  # nested: one binding, the same view
            assert inner is model and inner.blocks[0].ffn[0].weight is native.blocks[0].ffn[0].weight
        mm.unload_all_models()                            # ComfyUI detaches the MODEL while the block computes ...
        assert model.blocks[0].ffn[0].weight is native.blocks[0].ffn[0].weight   # ... the block keeps its view
    assert all(p.is_meta for p in salt.model.parameters())   # ... which goes hollow when the block ends
    with salt_in_use(salt) as model:
        assert model.blocks[0].ffn[0] is native.blocks[0].ffn[0]
    assert model.blocks[0].ffn[0] is native.blocks[0].ffn[0]   # bound while ComfyUI has the MODEL loaded
    mm.unload_all_models()
    assert all(p.is_meta for p in salt.model.parameters())
    assert {k: p.requires_grad for k, p in native.named_parameters()} == flags   # the MODEL's flags untouched


def test_causal_from_model_casts_only_tensors_of_another_dtype(salt_nodes):
    """ComfyUI keeps patch_embedding in fp32 beside bf16 blocks: only that conv is cast (copied); linear layers
    are the MODEL's own."""
    from comfyui_salt.nodes.models import salt_from_native, salt_in_use
    patcher = native_wan_patcher()
    native = patcher.model.diffusion_model
    native.to(torch.bfloat16)
    native.patch_embedding.float()
    salt = salt_from_native(native, patcher)
    with salt_in_use(salt) as model:
        assert model.patch_embedding.weight.dtype == torch.bfloat16
        assert_close(model.patch_embedding.weight.float(), native.patch_embedding.weight, 1e-2, "cast")
        assert model.blocks[0].ffn[0] is native.blocks[0].ffn[0]
        assert model.blocks[0].modulation.data_ptr() == native.blocks[0].modulation.data_ptr()
    assert native.patch_embedding.weight.dtype == torch.float32      # the MODEL itself is left as it was


def causal_wan_patcher():
    """A MODEL whose diffusion model is ComfyUI's autoregressive `comfy.ldm.wan.ar_model.CausalWanModel`: core's own
    class where this ComfyUI has it (0.16+, loaded from a state dict with the `causal_ar` metadata marker Salt's
    exports carry), else a stand-in for it (0.3.75): same class name and module, same attributes and state dict as
    WanModel (the real one declares itself weight-compatible with WanModel), plus the cache constructors
    SamplerARVideo checks."""
    import comfy.sd
    import comfy.supported_models
    from comfyui_salt.weights.files import student_metadata
    if hasattr(comfy.supported_models, "WAN21_CausalAR_T2V"):
        patcher = comfy.sd.load_diffusion_model_state_dict(native_wan_state_dict(), metadata=student_metadata(True))
        assert type(patcher.model.diffusion_model).__module__ == "comfy.ldm.wan.ar_model"
        return patcher
    patcher = native_wan_patcher()
    inner = patcher.model.diffusion_model
    inner.__class__ = type("CausalWanModel", (type(inner),), {
        "__module__": "comfy.ldm.wan.ar_model",
        "init_kv_caches": lambda self, *a: [], "init_crossattn_caches": lambda self, *a: []})
    return patcher


def test_a_causal_student_file_loads_as_comfys_causal_wan_model_where_comfyui_has_one(salt_nodes, tmp_path):
    """Salt's exports carry ComfyUI's `causal_ar` marker: UNETLoader on 0.16+ gives core's CausalWanModel (so
    SamplerARVideo runs it); 0.3.75 ignores the marker and gives WanModel. Bidirectional students are not marked."""
    import comfy.sd
    import comfy.supported_models
    from comfyui_salt.salt_core.config import WanConfig
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import export_student, read_metadata
    model = build_model(WanConfig(**NATIVE_WAN), seed=0)
    causal = export_student(model, str(tmp_path / "causal"), causal=True)[0]
    bidirectional = export_student(model, str(tmp_path / "bidir"), causal=False)[0]
    assert read_metadata(bidirectional)["teacher_mode"] == "bidirectional" and "config" not in read_metadata(bidirectional)
    expected = "CausalWanModel" if hasattr(comfy.supported_models, "WAN21_CausalAR_T2V") else "WanModel"
    assert type(comfy.sd.load_diffusion_model(causal).model.diffusion_model).__name__ == expected
    assert type(comfy.sd.load_diffusion_model(bidirectional).model.diffusion_model).__name__ == "WanModel"


def test_causal_from_model_accepts_comfys_autoregressive_causal_wan_model(salt_nodes):
    patcher = causal_wan_patcher()
    native = patcher.model.diffusion_model
    assert type(native).__name__ == "CausalWanModel" and type(native).__module__ == "comfy.ldm.wan.ar_model"
    from comfyui_salt.nodes.models import salt_in_use
    salt = run(salt_nodes.SaltCausalFromModel, model=patcher)[0]
    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 5, 4096, generator=g), torch.tensor([640.0])
    with salt_in_use(salt) as model, torch.no_grad():
        ours, theirs = model.state_dict(), native.state_dict()
        assert set(ours) == set(theirs) and all(ours[k].data_ptr() == theirs[k].data_ptr() for k in ours)
        assert_close(model(x, t, ctx), native(x, t, ctx), 1e-5, "Salt vs the CausalWanModel stand-in")


def test_salt_sigmas_are_self_forcing_timesteps_under_comfys_flow_sampling_as_sampler_ar_video_uses_them(salt_nodes):
    """SamplerARVideo (ComfyUI PR #13082) runs every block through the given SIGMAS: model(x, σ_i), then
    x = (1 − σ_{i+1})·x0 + σ_{i+1}·noise until σ_{i+1} == 0. So a SIGMAS for it must end at exactly 0, and
    ComfyUI's own flow sampling (ModelSamplingSD3) must turn σ into the student's timesteps."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    patched = ModelSamplingSD3().patch(native_wan_patcher(), shift=5.0)[0]
    model_sampling = patched.get_model_object("model_sampling")
    sigmas = run(salt_nodes.SaltFewStepSigmas, preset="self_forcing_4step", nfe=4, shift=5.0)[0]
    assert sigmas[-1].item() == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all()) and sigmas[0].item() <= 1.0
    timesteps = model_sampling.timestep(sigmas[:-1])
    warped = [1000 * 5 * (t / 1000) / (1 + 4 * (t / 1000)) for t in (1000, 750, 500, 250)]   # Self Forcing's warp
    assert_close(timesteps, torch.tensor(warped), 1e-6, "ComfyUI timesteps vs Self Forcing's warped grid")
    for preset in ("2step", "training_8step", "uniform"):
        assert run(salt_nodes.SaltFewStepSigmas, preset=preset, nfe=3, shift=5.0)[0][-1].item() == 0.0


def test_causal_from_model_rejects_a_model_that_is_not_wan(salt_nodes):
    patcher = type("Patcher", (), {"model": type("Base", (), {"diffusion_model": torch.nn.Linear(2, 2)})()})()
    with pytest.raises(TypeError, match="expected comfy.ldm.wan.model.WanModel or .*CausalWanModel"):
        run(salt_nodes.SaltCausalFromModel, model=patcher)
    elsewhere = type("Patcher", (), {"model": type("Base", (), {"diffusion_model": type(
        "CausalWanModel", (torch.nn.Module,), {"__module__": "other_pack.model"})()})()})()
    with pytest.raises(TypeError, match="other_pack.model.CausalWanModel"):
        run(salt_nodes.SaltCausalFromModel, model=elsewhere)


@pytest.mark.parametrize("channels", [(36, 16), (48, 48)])
def test_causal_from_model_refuses_wan_models_of_other_latents(salt_nodes, channels):
    """A Fun / inpaint Wan (36 channels in) or Wan 2.2 5B (48 in and out), as ComfyUI loads them: refused naming the
    channels, not wrapped to fail at sampling (36) or to sample latents of the wrong space (48)."""
    import comfy.sd
    from comfyui_salt.salt_core.config import WanConfig
    from comfyui_salt.salt_core.model import build_model
    cfg = WanConfig(**{**NATIVE_WAN, "in_dim": channels[0], "out_dim": channels[1]})
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(build_model(cfg, seed=0).state_dict()))
    with pytest.raises(ValueError, match=f"takes {channels[0]}-channel latents and makes {channels[1]}; expected a "
                                         f"Wan 2.1 T2V model"):
        run(salt_nodes.SaltCausalFromModel, model=patcher)


@pytest.mark.parametrize("layout, use_ema", [("wan", True), ("comfyui", True), ("self_forcing", False)])
def test_load_causal_model_reads_any_layout_from_diffusion_models(salt_nodes, models_dir, layout, use_ema):
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    model = build_model("toy", seed=1)
    save_model(model, models_dir / f"toy_{layout}.safetensors", layout=layout)
    assert f"toy_{layout}.safetensors" in salt_nodes.SaltLoadCausalModel.GET_NODE_INFO_V1()["input"]["required"][
        "ckpt_name"][1]["options"]
    salt = run(salt_nodes.SaltLoadCausalModel, ckpt_name=f"toy_{layout}.safetensors", use_ema=use_ema, dtype="fp32")[0]
    assert salt.causal and salt.latent_format == "pixels" and layout in salt.name
    assert torch.equal(salt.model.blocks[0].self_attn.q.weight, model.blocks[0].self_attn.q.weight)
    bf16 = run(salt_nodes.SaltLoadCausalModel, ckpt_name=f"toy_{layout}.safetensors", use_ema=True, dtype="bf16")[0]
    assert bf16.model.head.head.weight.dtype == torch.bfloat16


def test_load_causal_model_explains_an_incompatible_checkpoint(salt_nodes, models_dir):
    from safetensors.torch import save_file
    save_file({"conv_in.weight": torch.zeros(4, 4), "down_blocks.0.norm.bias": torch.zeros(4)},
              str(models_dir / "sd15_unet.safetensors"))
    with pytest.raises(ValueError) as e:
        run(salt_nodes.SaltLoadCausalModel, ckpt_name="sd15_unet.safetensors", use_ema=True, dtype="fp32")
    assert all(w in str(e.value) for w in ["SaltLoadCausalModel", "sd15_unet.safetensors", "Wan 2.1 T2V"]), e.value


def test_a_file_too_large_for_the_host_is_refused_by_the_loader_and_its_fix_loads_it(salt_nodes, models_dir,
                                                                                      monkeypatch):
    """Before a byte is read (the server stays up), naming the node, the file and the node's own fix; the fix named
    (bf16: half the bytes of fp32) then loads within the same limit."""
    import comfyui_salt.weights.files as files
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    save_model(build_model("toy", seed=1), models_dir / "big.safetensors")
    fp32 = files.load_host_bytes(models_dir / "big.safetensors", torch.float32)
    monkeypatch.setattr(files, "available_memory", lambda device, swap=False: fp32 - 1)
    with pytest.raises(MemoryError, match=r"SaltLoadCausalModel: ckpt_name='big\.safetensors': load_model: reading "
                                          r".* in float32 needs about .*\(here: dtype=bf16"):
        run(salt_nodes.SaltLoadCausalModel, ckpt_name="big.safetensors", use_ema=True, dtype="fp32")
    salt = run(salt_nodes.SaltLoadCausalModel, ckpt_name="big.safetensors", use_ema=True, dtype="bf16")[0]
    assert salt.model.head.head.weight.dtype == torch.bfloat16
    monkeypatch.setattr(files, "available_memory", lambda device, swap=False: 1 << 10)
    with pytest.raises(MemoryError, match=r"\(here: an unscaled fp8 file") as e:   # bf16 is not offered again
        run(salt_nodes.SaltLoadCausalModel, ckpt_name="big.safetensors", use_ema=True, dtype="bf16")
    assert "dtype=bf16" not in str(e.value)


def test_load_causal_model_explains_a_missing_file(salt_nodes, models_dir):
    with pytest.raises(FileNotFoundError, match="no file 'gone.safetensors' in the diffusion_models folders"):
        run(salt_nodes.SaltLoadCausalModel, ckpt_name="gone.safetensors", use_ema=True, dtype="fp32")


def test_a_bidirectional_file_is_marked_and_refused_by_the_streaming_sampler(salt_nodes, models_dir):
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    save_model(build_model("toy", seed=1), models_dir / "bi.safetensors", extra_metadata={"teacher_mode": "bidirectional"})
    salt = run(salt_nodes.SaltLoadCausalModel, ckpt_name="bi.safetensors", use_ema=True, dtype="fp32")[0]
    assert not salt.causal
    with pytest.raises(ValueError, match="bidirectional"):
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, salt))


# -- cache options ---------------------------------------------------------------------------------------
def test_cache_options_build_the_named_policies(salt_nodes):
    full = toy_options(salt_nodes, "full", max_frames=21)
    rolling = toy_options(salt_nodes, "rolling", window_frames=9, relative_rope=True)
    sink = toy_options(salt_nodes, "sink", window_frames=12, sink_frames=3, context_noise=0.05)
    assert (full.policy.kind, full.policy.capacity_frames) == ("full", 21)
    assert (rolling.policy.kind, rolling.policy.window_frames, rolling.policy.relative_rope) == ("rolling", 9, True)
    assert (sink.policy.kind, sink.policy.sink_frames, sink.context_noise) == ("sink", 3, 0.05)


@pytest.mark.parametrize("attention, kw, words", [
    ("rolling", dict(window_frames=2), ["window_frames=2", "at least 3"]),
    ("sink", dict(window_frames=5, sink_frames=3), ["sink_frames=3", "window_frames >= sink_frames + chunk_frames"]),
    ("sink", dict(window_frames=6, sink_frames=0), ["sink_frames=0"]),
    ("full", dict(max_frames=2), ["max_frames=2"]),
])
def test_inconsistent_cache_options_name_the_widgets_and_the_fix(salt_nodes, attention, kw, words):
    with pytest.raises(ValueError) as e:
        toy_options(salt_nodes, attention, **kw)
    assert all(w in str(e.value) for w in ["SaltCacheOptions"] + words), str(e.value)


# -- streaming -------------------------------------------------------------------------------------------
def test_streaming_equals_a_brute_force_rollout_without_cache_with_the_seeded_noise(salt_nodes, toy_salt):
    inputs = stream_inputs(salt_nodes, toy_salt, cache_options=toy_options(salt_nodes, "rolling", window_frames=6))
    latent = run(salt_nodes.SaltStreamingSampler, **inputs)[0]["samples"]
    assert latent.shape == (1, 3, 6, 16, 16) and torch.isfinite(latent).all()
    gen = torch.Generator().manual_seed(7)    # the seed convention: the noise, then every re-noise, from one generator
    noise = torch.randn(1, 3, 6, 16, 16, generator=gen)
    context = inputs["positive"][0][0].clone()  # a normal tensor: the cache tracks contexts by version
    with torch.no_grad():   # the 6-frame window never evicts 2 chunks of 3: a full history is the reference
        ref = brute_force_rollout(toy_salt.model, noise, context, inputs["sigmas"].double(), 3, gen)
    assert_close(latent, ref, 1e-5, "node vs brute-force rollout")
    again = run(salt_nodes.SaltStreamingSampler, **inputs)[0]["samples"]
    assert torch.equal(latent, again)


def set_preview_method(monkeypatch, name: str):
    """As if ComfyUI had been started with --preview-method <name>."""
    import comfy.cli_args
    monkeypatch.setattr(comfy.cli_args.args, "preview_method", comfy.cli_args.LatentPreviewMethod(name))


def progress_hook(monkeypatch) -> list:
    import comfy.utils
    calls = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, p, node_id=None: calls.append((v, t, p)))
    return calls


def test_streaming_previews_each_step_and_each_finished_chunk_when_previews_are_on(salt_nodes, toy_salt, monkeypatch):
    set_preview_method(monkeypatch, "auto")
    calls = progress_hook(monkeypatch)
    latent = run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, num_chunks=3))[0]["samples"]
    # two steps per chunk, then the finished chunk at the same count
    assert [(v, t) for v, t, _ in calls] == [(1, 6), (2, 6), (2, 6), (3, 6), (4, 6), (4, 6), (5, 6), (6, 6), (6, 6)]
    kind, image, _ = calls[0][2]
    assert kind == "JPEG" and image.size == (128, 128)                 # the current x0's last frame, ×8
    kind, strip, _ = calls[-1][2]
    assert kind == "JPEG" and strip.size == (3 * 128, 128)             # the finished chunk's three frames
    last = latent[0, :, -1].movedim(0, -1)                             # the video's last frame, (16, 16, 3)
    expected = ((last + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.equal(torch.frombuffer(bytearray(strip.tobytes()), dtype=torch.uint8).view(128, 384, 3)[:, 256:], expected)


def test_streaming_shows_no_preview_when_comfyui_runs_without_previews(salt_nodes, toy_salt, monkeypatch):
    set_preview_method(monkeypatch, "none")
    calls = progress_hook(monkeypatch)
    run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, num_chunks=2))
    # how many plain updates reach the hook is ComfyUI's choice (0.33 throttles them): the bar ends full, no previews
    assert calls and calls[-1][:2] == (4, 4) and all(p is None for _, _, p in calls)


def test_streaming_stops_when_the_user_cancels(salt_nodes, toy_salt):
    import comfy.model_management as mm
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt))
        assert not mm.processing_interrupted()
    finally:
        mm.interrupt_current_processing(False)


def test_a_prompt_switch_changes_only_the_chunks_from_the_switch_on(salt_nodes, toy_salt):
    other = run(salt_nodes.SaltToyTextEncode, text="a blue square moving up on a light background")[0]
    base = stream_inputs(salt_nodes, toy_salt, num_chunks=3, sampling="deterministic")
    plain = run(salt_nodes.SaltStreamingSampler, **base)[0]["samples"]
    switched = run(salt_nodes.SaltStreamingSampler, **base, switch_positive=other, switch_at_chunk=2)[0]["samples"]
    assert torch.equal(plain[:, :, :6], switched[:, :, :6])
    assert (plain[:, :, 6:] - switched[:, :, 6:]).abs().max() > 1e-3


def test_guidance_and_batches_run_with_a_negative_prompt(salt_nodes, toy_salt):
    negative = run(salt_nodes.SaltToyTextEncode, text="")[0]
    latent = run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, batch_size=2, cfg=3.0,
                                                                  negative=negative))[0]["samples"]
    assert latent.shape == (2, 3, 6, 16, 16) and torch.isfinite(latent).all()


@pytest.mark.parametrize("kw, words", [
    (dict(cfg=2.0), ["cfg=2.0", "negative"]),
    (dict(width=18), ["width=18", "multiples of 4"]),
    (dict(num_chunks=5), ["15 latent frames", "max_frames=12"]),
    (dict(positive=[[torch.zeros(1, 8, 4096), {}]]), ["(1, 8, 4096)", "SaltToyTextEncode"]),
    (dict(switch_at_chunk=2), ["switch_at_chunk=2", "num_chunks=2"]),
    (dict(sigmas=torch.tensor([1.0, 0.5])), ["ending with 0"]),
])
def test_bad_streaming_inputs_raise_errors_naming_the_input_and_the_fix(salt_nodes, toy_salt, kw, words):
    if "switch_at_chunk" in kw:
        kw["switch_positive"] = run(salt_nodes.SaltToyTextEncode, text="a blue bar moving up")[0]
    with pytest.raises(ValueError) as e:
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, **kw))
    assert all(w in str(e.value) for w in ["SaltStreamingSampler"] + words), str(e.value)


def test_wan_latents_are_sized_at_one_eighth_and_returned_in_comfys_latent_space(salt_nodes):
    import comfy.latent_formats
    from comfyui_salt.nodes.streaming import latent_shape
    salt = run(salt_nodes.SaltCausalFromModel, model=native_wan_patcher())[0]
    assert latent_shape(salt, 1, 3, 832, 480) == (1, 16, 3, 60, 104)
    with pytest.raises(ValueError, match="multiples of 16×16 pixels"):
        latent_shape(salt, 1, 3, 840, 480)
    x = torch.randn(1, 16, 3, 4, 4)
    from comfyui_salt.nodes.bridge.convert import latent_to_comfy
    assert_close(comfy.latent_formats.Wan21().process_in(latent_to_comfy(x, "wan21")), x, 1e-5, "round trip")


# -- image-to-video -------------------------------------------------------------------------------------
def test_a_toy_start_image_is_cached_first_and_returned_as_frame_zero_like_salt_cores_first_frames(salt_nodes, toy_salt):
    from comfyui_salt.salt_core.kv_cache import CachePolicy
    from comfyui_salt.salt_core.seeding import seeded_noise
    from comfyui_salt.salt_core.streaming import stream_video
    from comfyui_salt.toy.world import sample_batch
    from comfyui_salt.toy.worlds import get_world
    clip = sample_batch(get_world("default").cfg, 3, 1)[0]                     # (1, 3, 12, 16, 16) in [-1, 1]
    image = ((clip[:, :, 0] + 1) / 2).movedim(1, -1)                      # IMAGE (1, 16, 16, 3)
    inputs = stream_inputs(salt_nodes, toy_salt, start_image=image)
    latent = run(salt_nodes.SaltStreamingSampler, **inputs)[0]["samples"]
    assert latent.shape == (1, 3, 1 + 2 * 3, 16, 16)
    assert_close(latent[:, :, :1], clip[:, :, :1], 1e-6, "frame 0 is the start image")
    sig = inputs["sigmas"].double()
    noise, gen = seeded_noise(7, (1, 3, 6, 16, 16))      # the node's seed convention
    ref = stream_video(toy_salt.model, noise, inputs["positive"][0][0], sig, policy=CachePolicy.full(12),
                       chunk_frames=3, generator=gen, first_frames=clip[:, :, :1])
    assert_close(latent, ref, 1e-6, "node vs stream_video(first_frames)")
    plain = run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt))[0]["samples"]
    assert not torch.allclose(plain, latent[:, :, 1:], atol=1e-3), "the start image changed nothing"


def test_a_wan_start_image_is_encoded_with_the_users_vae_into_comfys_latent_space(salt_nodes):
    import comfy.sd
    import comfy.utils
    from test_comfy_server import tiny_wan_vae_state_dict
    vae = comfy.sd.VAE(sd=tiny_wan_vae_state_dict())
    salt = run(salt_nodes.SaltCausalFromModel, model=native_wan_patcher())[0]
    image = torch.rand(1, 40, 24, 3, generator=torch.Generator().manual_seed(2))      # resized to 32×32
    context = torch.randn(1, 4, NATIVE_WAN["text_dim"], generator=torch.Generator().manual_seed(1))
    base = dict(model=salt, positive=[[context, {}]], cache_options=toy_options(salt_nodes), seed=3,
                sigmas=run(salt_nodes.SaltFewStepSigmas, preset="2step", nfe=2, shift=5.0)[0], num_chunks=1,
                width=32, height=32, batch_size=1, sampling="stochastic", cfg=1.0)
    out = run(salt_nodes.SaltStreamingSampler, **base, start_image=image, vae=vae)[0]["samples"]
    encoded = vae.encode(comfy.utils.common_upscale(image.movedim(-1, 1), 32, 32, "bilinear", "center").movedim(1, -1))
    assert out.shape == (1, 16, 1 + 3, 4, 4) and encoded.shape == (1, 16, 1, 4, 4)
    assert_close(out[:, :, :1], encoded, 1e-5, "frame 0 = the VAE's latent of the image, in ComfyUI's space")
    again = run(salt_nodes.SaltStreamingSampler, **base, start_latent={"samples": encoded})[0]["samples"]
    assert_close(again, out, 1e-5, "start_latent = start_image through the same VAE")
    with pytest.raises(ValueError, match="start_image needs the vae input"):
        run(salt_nodes.SaltStreamingSampler, **base, start_image=image)
    with pytest.raises(ValueError, match="connect one"):
        run(salt_nodes.SaltStreamingSampler, **base, start_image=image, vae=vae, start_latent={"samples": encoded})
    with pytest.raises(ValueError, match=r"expected \(1 or 1, 16, frames, 4, 4\)"):
        run(salt_nodes.SaltStreamingSampler, **base, start_latent={"samples": torch.zeros(1, 16, 1, 8, 8)})
    # what a client may send as start_latent: another model's channels, the wrong rank, NaN, no samples at all;
    # each named before ComfyUI's latent conversion sees it
    nan = torch.zeros(1, 16, 1, 4, 4)
    nan[0, 0, 0, 0, 0] = float("nan")
    for bad, words in ((torch.zeros(1, 4, 1, 4, 4), "C=16"), (torch.zeros(1, 48, 4, 4), "C=16"),
                       (torch.zeros(16, 4, 4), "start_latent holds (16, 4, 4)"), (nan, "start_latent holds 1 non-finite value(s) (NaN/Inf)"),
                       (None, "start_latent holds NoneType")):
        with pytest.raises(ValueError, match=re.escape(words)):
            run(salt_nodes.SaltStreamingSampler, **base, start_latent={"samples": bad} if bad is not None else {})
    calls = []
    counting = type("VAE", (), {"encode": lambda self, x: calls.append(x.shape) or vae.encode(x)})()
    with pytest.raises(ValueError, match="start_image holds 3 images for batch_size=1"):
        run(salt_nodes.SaltStreamingSampler, **base, start_image=image.expand(3, -1, -1, -1), vae=counting)
    assert calls == []                                                   # refused before the VAE ran
    with pytest.raises(ValueError, match="start_latent holds list"):
        run(salt_nodes.SaltStreamingSampler, **base, start_latent=[1, 2])
    with pytest.raises(ValueError, match="switch_at_chunk=1.5"):
        run(salt_nodes.SaltStreamingSampler, **{**base, "num_chunks": 3}, switch_positive=[[context, {}]],
            switch_at_chunk=1.5)


# -- toy world -------------------------------------------------------------------------------------------
def test_toy_text_encode_gives_the_toy_encoders_embeddings(salt_nodes):
    from comfyui_salt.toy.text import ToyTextEncoder
    cond = run(salt_nodes.SaltToyTextEncode, text=CAPTION)[0]
    assert len(cond) == 1 and cond[0][1] == {}
    assert torch.equal(cond[0][0], ToyTextEncoder(text_dim=32, max_tokens=8).encode([CAPTION]))
    with pytest.raises(ValueError, match="SaltToyTextEncode: text='a purple disc'.*unknown word 'purple'"):
        run(salt_nodes.SaltToyTextEncode, text="a purple disc")


def test_toy_decode_makes_frames_in_zero_one_enlarged_by_nearest_neighbour(salt_nodes):
    samples = torch.rand(2, 3, 4, 16, 16) * 2.4 - 1.2
    images = run(salt_nodes.SaltToyDecode, samples={"samples": samples}, upscale=3)[0]
    assert images.shape == (8, 48, 48, 3) and images.min() >= 0 and images.max() <= 1
    expected = (samples[1, :, 2].clamp(-1, 1) + 1) / 2                                   # video 1, frame 2
    assert_close(images[4 + 2, ::3, ::3].permute(2, 0, 1), expected, 1e-6, "frame order")
    assert torch.equal(images[:, 1::3, 2::3], images[:, ::3, ::3])
    with pytest.raises(ValueError, match="SaltToyDecode: samples of shape \\(1, 16, 3, 8, 8\\)"):
        run(salt_nodes.SaltToyDecode, samples={"samples": torch.zeros(1, 16, 3, 8, 8)}, upscale=1)
    # sizes are checked before memory is taken: the widget's largest upscale on a large latent (a meta tensor:
    # nothing allocated here), an upscale beyond the widget from a link, and upscales that are not counts
    for latent, upscale in (((1, 3, 24, 512, 512), 64), ((1, 3, 12, 16, 16), 4096)):
        with pytest.raises(MemoryError, match="SaltToyDecode: IMAGE of .* needs about .*lower upscale"):
            run(salt_nodes.SaltToyDecode, samples={"samples": torch.empty(latent, device="meta")}, upscale=upscale)
    for upscale in (0, -1, 2.5, float("nan")):
        with pytest.raises(ValueError, match="SaltToyDecode: upscale="):
            run(salt_nodes.SaltToyDecode, samples={"samples": samples}, upscale=upscale)


@pytest.mark.parametrize("asset, role", [("toy_teacher", "teacher_forcing"), ("toy_salt_student", "student")])
def test_toy_model_loads_each_shipped_asset(salt_nodes, tmp_path, monkeypatch, asset, role):
    from comfyui_salt.nodes import toy
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    if not pathlib.Path(toy.TOY_ASSETS[asset]).exists():   # not built yet: a random stand-in with the same metadata
        path = tmp_path / f"{asset}.safetensors"
        meta = {"salt_role": "student"} if role == "student" else {"teacher_mode": role}
        save_model(build_model("toy", seed=2), path, extra_metadata=meta)
        monkeypatch.setitem(toy.TOY_ASSETS, asset, str(path))
    salt = run(salt_nodes.SaltToyModel, asset=asset)[0]
    assert salt.latent_format == "pixels" and salt.causal and salt.model.cfg.in_dim == 3
    assert ("causal student" in salt.name) == (role == "student")
    latent = run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, salt))[0]["samples"]
    assert latent.shape == (1, 3, 6, 16, 16)


def test_a_missing_toy_asset_says_how_to_restore_it(salt_nodes, tmp_path, monkeypatch):
    from comfyui_salt.nodes import toy
    monkeypatch.setitem(toy.TOY_ASSETS, "toy_salt_student", str(tmp_path / "gone.safetensors"))
    with pytest.raises(FileNotFoundError, match="SaltToyModel: asset='toy_salt_student' is not installed.*git checkout"):
        run(salt_nodes.SaltToyModel, asset="toy_salt_student")


def test_comfyui_itself_is_importable_in_cpu_mode():
    import_comfy()
    import comfy.model_management as mm
    assert mm.get_torch_device().type == "cpu"


def test_load_causal_model_validates_the_file_name_when_the_prompt_is_queued(salt_nodes, models_dir):
    (models_dir / "there.safetensors").write_bytes(b"")
    assert salt_nodes.SaltLoadCausalModel.validate_inputs(ckpt_name="there.safetensors") is True
    message = salt_nodes.SaltLoadCausalModel.validate_inputs(ckpt_name="gone.safetensors")
    assert "ckpt_name" in message and "gone.safetensors" in message and "diffusion_models" in message


def test_wan_latents_are_previewed_through_comfys_latent_to_rgb_factors(salt_nodes, monkeypatch):
    from comfyui_salt.nodes.bridge.progress import Progress
    set_preview_method(monkeypatch, "latent2rgb")
    calls = progress_hook(monkeypatch)
    progress = Progress(3, "wan21")
    progress.update(1, torch.randn(1, 16, 3, 6, 10))
    progress.update(2, torch.randn(1, 5, 3, 6, 10))       # not previewable as Wan: progress only
    progress.show_chunk(3, torch.randn(1, 16, 3, 6, 10))
    # step 2 is progress only: ComfyUI may drop such an update (0.33 throttles them), never a preview
    previews = [(v, t, p[0], p[1].size) for v, t, p in calls if p is not None]
    assert previews == [(1, 3, "JPEG", (10, 6)), (3, 3, "JPEG", (30, 6))]


def test_wan_previews_use_the_previewer_comfyui_selects_for_wan21(salt_nodes, monkeypatch):
    """TAESD (lighttaew2_1 in models/vae_approx) or Latent2RGB is ComfyUI's choice: the node asks
    latent_preview.get_previewer with the Wan21 latent format and shows what that previewer decodes."""
    import latent_preview
    from PIL import Image
    from comfyui_salt.nodes.bridge.progress import Progress
    set_preview_method(monkeypatch, "taesd")
    seen = []

    class Stub(latent_preview.LatentPreviewer):
        def decode_latent_to_preview(self, x0):
            seen.append(tuple(x0.shape))
            return Image.new("RGB", (7, 5))

    monkeypatch.setattr(latent_preview, "get_previewer", lambda device, fmt: seen.append(type(fmt).__name__) or Stub())
    calls = progress_hook(monkeypatch)
    progress = Progress(2, "wan21")
    progress.update(1, torch.randn(2, 16, 3, 6, 10))
    progress.show_chunk(2, torch.randn(2, 16, 3, 6, 10))
    assert seen == ["Wan21", (1, 16, 1, 6, 10), (1, 16, 1, 6, 10), (1, 16, 1, 6, 10), (1, 16, 1, 6, 10)]
    assert calls[0][2][1].size == (7, 5) and calls[1][2][1].size == (21, 5)
