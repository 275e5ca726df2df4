"""Bad input through the ComfyUI nodes (`execute` called directly, as ComfyUI runs them): classes 1, 2, 3 and 5.

Widget ranges are enforced by the UI only: a prompt sent over HTTP may carry NaN, Inf or any size,
so the nodes apply the same rules as the Python API (salt_core/validate.py) and ComfyUI's own free
memory is the limit for streaming requests. Class 5: where SaltDistill publishes, and which input
its run-name error is attached to.
"""
import json

import pytest
import torch


NAN, INF = float("nan"), float("inf")
CAPTION = "a red disc moving left on a dark background"


@pytest.fixture
def models_dir(salt_nodes, tmp_path, monkeypatch):
    """diffusion_models registered as ComfyUI does: the legacy models/unet folder first, then diffusion_models."""
    import folder_paths
    unet, folder, output = tmp_path / "unet", tmp_path / "diffusion_models", tmp_path / "output"
    for f in (unet, folder, output):
        f.mkdir()
    exts = folder_paths.folder_names_and_paths["diffusion_models"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models", ([str(unet), str(folder)], exts))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setattr(folder_paths, "output_directory", str(output))
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(node, **inputs):
    with torch.inference_mode():
        return node.execute(**inputs).args


def sigmas(salt_nodes):
    return run(salt_nodes.SaltFewStepSigmas, preset="2step", nfe=2, shift=1.0)[0]


def stream_inputs(salt_nodes, model, **kw):
    options = run(salt_nodes.SaltCacheOptions, chunk_frames=3, attention="full", window_frames=6, sink_frames=3,
                  relative_rope=False, context_noise=0.0, max_frames=12)[0]
    args = dict(model=model, positive=run(salt_nodes.SaltToyTextEncode, text=CAPTION)[0], cache_options=options,
                sigmas=sigmas(salt_nodes), seed=7, num_chunks=2, width=16, height=16, batch_size=1,
                sampling="stochastic", cfg=1.0)
    args.update(kw)
    return args


def poisoned(conditioning, value):
    ctx = conditioning[0][0].clone()
    ctx.view(-1)[3] = value
    return [[ctx, conditioning[0][1]]]


# -- class 1: non-finite numbers ----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", ["nan", "1000, nan", "inf, 500", "1000, -inf", "1e309, 500", "NaN NaN", "-inf"])
def test_custom_steps_with_non_finite_numbers_fail_instead_of_rendering_black(salt_nodes, steps):
    with pytest.raises(ValueError, match="SaltFewStepSigmas"):
        run(salt_nodes.SaltFewStepSigmas, preset="custom", nfe=4, shift=5.0, custom_steps=steps)


@pytest.mark.parametrize("steps, shift", [("1000, 1e-50", 5.0), ("1000, 999.99999", 5.0), ("1000, 500", 1e-308),
                                          ("1000, 750, 500", 1e300)])
def test_sigmas_that_merge_or_overflow_in_float32_are_refused(salt_nodes, steps, shift):
    """Checked in float64, these raw steps and shifts pass; the SIGMAS are float32, where they become [1, 0, 0],
    [1, 1, 0] or [inf, 0, 0] and ComfyUI's samplers would return a non-finite latent without an error."""
    with pytest.raises(ValueError, match="SaltFewStepSigmas: the noise levels in float32.*too close together"):
        run(salt_nodes.SaltFewStepSigmas, preset="custom", nfe=4, shift=shift, custom_steps=steps)


@pytest.mark.parametrize("steps", ["[1000, 750, 500, 250]", "1000, 750, 500, 250, 0", "(1000 750 500 250)",
                                   " [1000,750,500,250,0] "])
def test_custom_steps_as_the_nodes_description_writes_them_give_the_preset(salt_nodes, steps):
    """In brackets (the node's description writes self_forcing_4step = [1000, 750, 500, 250]) and with the final 0
    of a whole schedule: the same SIGMAS as the preset (both were refused)."""
    want = run(salt_nodes.SaltFewStepSigmas, preset="self_forcing_4step", nfe=4, shift=5.0)[0]
    got = run(salt_nodes.SaltFewStepSigmas, preset="custom", nfe=4, shift=5.0, custom_steps=steps)[0]
    assert torch.equal(got, want)


@pytest.mark.parametrize("steps", ["[1000, 750)", "[[1000, 750, 500, 250]]", "(1000, 750, 500, 250", "[]",
                                   "1000, 750, 500, 250]", "{1000, 750}"])
def test_custom_steps_in_unmatched_or_nested_brackets_are_refused_naming_the_form(salt_nodes, steps):
    """One matching pair of brackets around the list is all that is taken off."""
    with pytest.raises(ValueError, match=r"SaltFewStepSigmas: custom_steps=.* is not a list of numbers; expected raw "
                                         r"timesteps in \(0, 1000\]"):
        run(salt_nodes.SaltFewStepSigmas, preset="custom", nfe=4, shift=5.0, custom_steps=steps)


def test_a_huge_custom_steps_is_quoted_not_echoed(salt_nodes):
    for text in ("x" * (4 << 20), "1000 " + "2000 " * 100_000):
        with pytest.raises(ValueError, match="SaltFewStepSigmas") as e:
            run(salt_nodes.SaltFewStepSigmas, preset="custom", nfe=4, shift=5.0, custom_steps=text)
        assert len(str(e.value)) < 1000, len(str(e.value))


@pytest.mark.parametrize("shift", [NAN, INF, -INF, 0.0, -2.0])
@pytest.mark.parametrize("preset", ["uniform", "self_forcing_4step"])
def test_sigma_shifts_that_are_not_finite_and_positive_are_refused(salt_nodes, shift, preset):
    with pytest.raises(ValueError, match="SaltFewStepSigmas: shift="):
        run(salt_nodes.SaltFewStepSigmas, preset=preset, nfe=4, shift=shift)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("which", ["positive", "negative", "switch_positive"])
def test_text_features_holding_nan_or_inf_are_refused_by_the_streaming_sampler(salt_nodes, toy_salt, value, which):
    text = run(salt_nodes.SaltToyTextEncode, text=CAPTION)[0]
    kw = {which: poisoned(text, value)}
    if which == "negative":
        kw["cfg"] = 3.0
    if which == "switch_positive":
        kw["switch_at_chunk"] = 1
    with pytest.raises(ValueError, match=f"SaltStreamingSampler.*{which} holds 1 non-finite"):
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, **kw))


@pytest.mark.parametrize("kw, words", [
    (dict(cfg=NAN), "cfg=nan"), (dict(cfg=INF), "cfg=inf"), (dict(cfg=-1.0), "cfg=-1.0"),
    (dict(sigmas=torch.tensor([1.0, NAN, 0.0])), "sigmas="), (dict(sigmas=torch.tensor([INF, 0.0])), "sigmas="),
    (dict(sigmas=torch.tensor([])), "sigmas=[]"),
])
def test_streaming_numbers_that_are_not_finite_are_refused(salt_nodes, toy_salt, kw, words):
    with pytest.raises(ValueError) as e:
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, **kw))
    assert "SaltStreamingSampler" in str(e.value) and words in str(e.value), e.value


@pytest.mark.parametrize("noise", [NAN, INF, -INF, -0.5, 1.0])
def test_cache_options_refuse_a_context_noise_that_is_not_a_noise_level(salt_nodes, noise):
    with pytest.raises(ValueError, match="SaltCacheOptions: context_noise="):
        run(salt_nodes.SaltCacheOptions, chunk_frames=3, attention="full", window_frames=6, sink_frames=3,
            relative_rope=False, context_noise=noise, max_frames=12)


@pytest.mark.parametrize("channels", [(48, 48), (36, 16)], ids=["wan2.2-5b", "i2v-36-in"])
def test_the_loader_node_refuses_a_wan_22_or_i2v_shaped_file_by_its_channels(salt_nodes, models_dir, channels):
    """SaltCausalFromModel refused other families by their channels; the file loader took a 48→48 (Wan 2.2 TI2V-5B)
    or 36→16 (I2V-A14B, Fun) file as a T2V model in raw latents, to fail later or make garbage."""
    from comfyui_salt.salt_core.config import WanConfig
    from comfyui_salt.salt_core.model import WanModel
    from comfyui_salt.weights.files import save_model
    cfg = WanConfig(dim=256, ffn_dim=256, num_heads=2, num_layers=2, in_dim=channels[0], out_dim=channels[1],
                    text_dim=64, freq_dim=32)
    save_model(WanModel(cfg), models_dir / "other.safetensors")
    with pytest.raises(ValueError, match=rf"other\.safetensors.*takes {channels[0]}-channel latents and makes "
                                         rf"{channels[1]}; expected a Wan 2.1 T2V model"):
        run(salt_nodes.SaltLoadCausalModel, ckpt_name="other.safetensors", use_ema=True, dtype="fp32")


@pytest.mark.parametrize("value", [NAN, INF])
def test_the_loader_node_refuses_weights_holding_nan_or_inf(salt_nodes, models_dir, value):
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    model = build_model("toy", seed=0)
    with torch.no_grad():
        model.head.head.weight[0, 0] = value
    save_model(model, models_dir / "nan.safetensors")
    with pytest.raises(ValueError, match=r"nan\.safetensors.*NaN/Inf"):
        run(salt_nodes.SaltLoadCausalModel, ckpt_name="nan.safetensors", use_ema=True, dtype="fp32")


@pytest.mark.parametrize("text", ["guidance_scale=nan", "lr_critic=-inf", "ema_decay=inf"])
def test_distill_overrides_with_non_finite_numbers_fail_before_training(salt_nodes, models_dir, text):
    with pytest.raises(ValueError, match=f"SaltDistill.*{text.split('=')[0]}="):
        run(salt_nodes.SaltDistill, preset="toy-dmd", teacher="toy", student_init="teacher", critic_init="teacher",
            gen_steps=1, batch_size=1, seed=0, name="nan_run", overrides=text)
    assert not (models_dir.parent / "output" / "salt_runs" / "nan_run").exists()


# -- class 2: sizes before memory -----------------------------------------------------------------------------
@pytest.mark.parametrize("size, batch, chunks", [(4096, 64, 4), (8192, 8, 4), (4096, 1, 1024)])
def test_a_streaming_request_larger_than_comfys_free_memory_is_refused_before_the_noise_is_drawn(
        salt_nodes, toy_salt, size, batch, chunks):
    options = run(salt_nodes.SaltCacheOptions, chunk_frames=3, attention="full", window_frames=6, sink_frames=3,
                  relative_rope=False, context_noise=0.0, max_frames=3 * chunks)[0]
    with pytest.raises(MemoryError, match=r"SaltStreamingSampler: .*needs about .*GiB.*ComfyUI's free memory.*lower "
                                          r"width/height"):
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, width=size, height=size,
                                                             batch_size=batch, num_chunks=chunks,
                                                             cache_options=options))


@pytest.mark.parametrize("change", [dict(rope_max_len=10**9), dict(num_heads=0)])
def test_the_loader_node_validates_file_metadata_like_user_input(salt_nodes, models_dir, change):
    from safetensors.torch import load_file, save_file
    from comfyui_salt.salt_core.config import get_config
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    path = models_dir / "meta.safetensors"
    save_model(build_model("toy", seed=0), path)
    cfg = {**json.loads(get_config("toy").to_json()), **change}
    save_file(load_file(str(path)), str(path), metadata={"salt_config": json.dumps(cfg), "salt_layout": "wan"})
    with pytest.raises((ValueError, MemoryError), match=rf"meta\.safetensors.*{next(iter(change))}="):
        run(salt_nodes.SaltLoadCausalModel, ckpt_name="meta.safetensors", use_ema=True, dtype="fp32")


# -- class 3: degenerate arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["critic_ratio=0", "checkpoint_every=0", "chunk_frames=0", "batch_size=0",
                                  "sc_symmetric=maybe", "align_k4=nope"])
def test_distill_overrides_with_degenerate_values_fail_naming_the_field(salt_nodes, models_dir, text):
    with pytest.raises(ValueError, match=text.split("=")[0]):
        run(salt_nodes.SaltDistill, preset="toy-dmd", teacher="toy", student_init="teacher", critic_init="teacher",
            gen_steps=1, batch_size=1, seed=0, name="zero_run", overrides=text)


@pytest.mark.parametrize("shape", [(1, 8, 64), (1, 8), (8, 32)])
def test_text_features_of_the_wrong_rank_or_width_name_the_input(salt_nodes, toy_salt, shape):
    with pytest.raises(ValueError, match=r"SaltStreamingSampler.*positive has shape"):
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, positive=[[torch.zeros(shape), {}]]))


# -- class 4 through the node: a refused start does not block the name ---------------------------------------------
def test_a_run_name_refused_once_for_a_bad_teacher_file_works_with_a_good_one(salt_nodes, models_dir):
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    (models_dir / "broken.safetensors").write_bytes(b"garbage")
    save_model(build_model("toy", seed=0), models_dir / "good.safetensors")
    args = dict(preset="toy-dmd", student_init="teacher", critic_init="teacher", gen_steps=1, batch_size=1, seed=0,
                name="retry", overrides="critic_ratio=1; eval_every=0; threads=1")
    with pytest.raises(ValueError, match="broken.safetensors"):
        run(salt_nodes.SaltDistill, teacher="broken.safetensors", **args)
    salt, export = run(salt_nodes.SaltDistill, teacher="good.safetensors", **args)
    assert export.endswith("student.safetensors")


# -- class 5: where the student is published, which input an error names -----------------------------------------
def test_distill_publishes_under_diffusion_models_salt_even_though_comfy_lists_unet_first(salt_nodes, models_dir):
    from comfyui_salt.salt_core.model import build_model
    from comfyui_salt.weights.files import save_model
    save_model(build_model("toy", seed=0), models_dir / "teacher.safetensors")
    run(salt_nodes.SaltDistill, preset="toy-dmd", teacher="teacher.safetensors", student_init="teacher",
        critic_init="teacher", gen_steps=1, batch_size=1, seed=0, name="pub",
        overrides="critic_ratio=1; eval_every=0; threads=1")
    assert (models_dir / "salt" / "pub.safetensors").is_file()
    assert not (models_dir.parent / "unet" / "salt").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 101, "a..b", "name with space"])
def test_a_bad_run_name_is_reported_by_validate_inputs_which_takes_only_the_name(salt_nodes, name):
    import inspect
    node = salt_nodes.SaltDistill
    assert list(inspect.signature(node.validate_inputs).parameters) == ["name"]
    assert "plain folder name" in node.validate_inputs(name=name)


HUGE = "x" * (4 << 20)          # a 4 MiB string sent for an input (ComfyUI 0.3.75 does not check these combos)


@pytest.mark.parametrize("node, inputs", [
    ("SaltDistill", dict(preset=HUGE)),
    ("SaltDistill", dict(teacher=HUGE)),
    ("SaltLoadCausalModel", dict(ckpt_name=HUGE, use_ema=True, dtype="fp32")),
    ("SaltToyTextEncode", dict(text=HUGE)),
])
def test_a_huge_string_input_is_quoted_in_the_error_not_echoed(salt_nodes, models_dir, node, inputs):
    """Errors are stored in the history and broadcast to every browser: a message quotes the first characters of
    a client's string and its length, never the whole (4 MiB here)."""
    from test_nodes_training import distill_inputs
    args = distill_inputs(**inputs) if node == "SaltDistill" else inputs
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        run(getattr(salt_nodes, node), **args)
    assert f"({len(HUGE)} characters)" in str(e.value) and len(str(e.value)) < 2000, str(e.value)[:300]
    message = salt_nodes.SaltDistill.validate_inputs(name=HUGE)                 # the run name, at queue time
    assert f"({len(HUGE)} characters)" in message and len(message) < 2000


@pytest.mark.parametrize("name", ["nl\n", "run\n", "a\n"])
def test_a_name_ending_in_a_newline_is_refused(salt_nodes, name):
    from comfyui_salt.nodes import live, lora
    assert "plain folder name" in salt_nodes.SaltDistill.validate_inputs(name=name)
    with pytest.raises(ValueError, match="stream_id"):
        live.check_stream_id(name)
    with pytest.raises(ValueError, match=r"SaltExtractLoRA: name=.*; expected a plain file name"):
        lora.lora_path(name)


@pytest.mark.parametrize("name", ["CON", "nul", "Com1.run", "lpt9", "run.", "a.b."])
def test_a_file_name_windows_cannot_hold_is_refused_there_and_taken_elsewhere(salt_nodes, monkeypatch, name):
    """On Windows, a device name (any case, any extension: the file opens the device) or a final '.' (Windows drops
    it: two names, one file), for the names the pack writes files and folders under; elsewhere they are plain names
    (a run folder `aux` made on Linux keeps resuming)."""
    from comfyui_salt.nodes import lora
    from comfyui_salt.training import runs
    if not runs.ON_WINDOWS:
        assert salt_nodes.SaltDistill.validate_inputs(name=name) is True
    monkeypatch.setattr(runs, "ON_WINDOWS", True)
    assert "on Windows not ending in '.' nor a device name" in salt_nodes.SaltDistill.validate_inputs(name=name)
    with pytest.raises(ValueError, match=r"SaltExtractLoRA: name=.*; expected a plain file name.*CON or NUL"):
        lora.lora_path(name)


@pytest.mark.parametrize("name", ["console", "nul_run", "com10", "run.1", "CONx", "a.b"])
def test_names_that_only_look_like_device_names_are_taken(salt_nodes, name):
    from comfyui_salt.nodes import lora
    assert salt_nodes.SaltDistill.validate_inputs(name=name) is True
    assert lora.lora_path(name).endswith(name + ".safetensors")


@pytest.mark.parametrize("kw, words", [
    (dict(width=16.5), "width=16.5"), (dict(height=2.5), "height=2.5"), (dict(batch_size=2.5), "batch_size=2.5"),
    (dict(batch_size=0), "batch_size=0"), (dict(num_chunks=1.5), "num_chunks=1.5"),
    (dict(width="wide"), "width='wide'"),
])
def test_streaming_sizes_that_are_not_counts_are_refused_naming_the_input(salt_nodes, toy_salt, kw, words):
    """A linked input (a primitive or a math node) reaches execute without the widget's integer check; a whole
    float (16.0) is the integer it equals."""
    with pytest.raises(ValueError) as e:
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, **kw))
    assert "SaltStreamingSampler" in str(e.value) and words in str(e.value) and "integer" in str(e.value), e.value
    whole = run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, width=16.0, batch_size=1.0))
    assert whole[0]["samples"].shape[-1] == 16


def test_a_huge_batch_is_refused_by_the_memory_check_before_the_text_context_is_expanded(salt_nodes, toy_salt,
                                                                                        monkeypatch):
    from comfyui_salt.nodes import streaming
    expanded = []
    real = streaming.text_context
    monkeypatch.setattr(streaming, "text_context", lambda *a, **k: expanded.append(a[2]) or real(*a, **k))
    with pytest.raises(MemoryError, match="SaltStreamingSampler: 10000000 × 16×16 px"):
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, batch_size=10 ** 7))
    assert expanded == []


@pytest.mark.parametrize("batch, size", [(64, 65536), (1, 2 ** 20)])
def test_a_start_image_is_not_resized_to_a_size_the_host_cannot_hold(salt_nodes, toy_salt, monkeypatch, batch, size):
    import comfy.utils
    from comfyui_salt.nodes import streaming
    monkeypatch.setattr(streaming, "total_memory", lambda device: 2 ** 80)   # a device that holds any video
    resized = []
    real = comfy.utils.common_upscale
    monkeypatch.setattr(comfy.utils, "common_upscale", lambda *a, **k: resized.append(a[1:3]) or real(*a, **k))
    image = torch.rand(batch, 16, 16, 3)        # e.g. EmptyImage 16×16, batch 64, through a linked INT
    with pytest.raises(MemoryError, match=rf"SaltStreamingSampler: start_image resized to {batch} × {size}×{size} "
                                          rf"px needs about .*GiB.*the host's free memory.*lower width/height"):
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, width=size, height=size,
                                                             batch_size=batch, start_image=image))
    assert resized == []
    small = run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, width=32, height=32,
                                                                 batch_size=1, start_image=image[:1]))
    assert resized == [(32, 32)] and small[0]["samples"].shape[-2:] == (32, 32)


def test_a_start_image_is_not_resized_nor_encoded_for_a_video_no_memory_of_the_device_holds(salt_nodes, toy_salt,
                                                                                            monkeypatch):
    """8192 × 8192 (the widgets' largest) fits the host's resize of one image, then the VAE encoded a 67-megapixel
    frame (minutes, its tiled fallback after running out of memory) before the stream's own memory check refused
    the video. Now refused first: the stream's bytes against all the device's memory, named with the fix."""
    import comfy.utils
    from comfyui_salt.nodes import streaming
    monkeypatch.setattr(comfy.utils, "common_upscale", lambda *a, **k: pytest.fail("resized before the check"))
    monkeypatch.setattr(streaming, "encode_image", lambda *a, **k: pytest.fail("encoded before the check"))
    image = torch.rand(1, 16, 16, 3)
    total = streaming.total_memory(streaming.torch_device())
    size = 16 * (int((total / 4) ** 0.5) // 16 + 16)          # more pixels than the device holds float32 numbers
    with pytest.raises(MemoryError, match=rf"SaltStreamingSampler: 1 × {size}×{size} px × 3 chunks and the start "
                                          rf"frame needs about .*all of cpu's memory.*lower width/height"):
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, width=size, height=size,
                                                             num_chunks=3, start_image=image))


def test_a_start_image_of_a_size_the_model_cannot_take_is_refused_before_it_is_resized(salt_nodes, toy_salt,
                                                                                      monkeypatch):
    import comfy.utils
    monkeypatch.setattr(comfy.utils, "common_upscale", lambda *a, **k: pytest.fail("resized before the check"))
    with pytest.raises(ValueError, match="SaltStreamingSampler: width=17, height=16; .*needs multiples"):
        run(salt_nodes.SaltStreamingSampler, **stream_inputs(salt_nodes, toy_salt, width=17, height=16,
                                                             start_image=torch.rand(1, 16, 16, 3)))


@pytest.mark.parametrize("kw, words", [
    (dict(chunk_frames=2.5), "chunk_frames=2.5"), (dict(max_frames=NAN), "max_frames=nan"),
    (dict(max_frames=10 ** 12), "max_frames=1000000000000"), (dict(window_frames=-3), "window_frames=-3"),
    (dict(chunk_frames=65), "chunk_frames=65"), (dict(window_frames=1025), "window_frames=1025"),
    (dict(sink_frames=1.5), "sink_frames=1.5"),
])
def test_cache_options_that_are_not_frame_counts_are_refused(salt_nodes, kw, words):
    args = dict(chunk_frames=3, attention="full", window_frames=6, sink_frames=3, relative_rope=False,
                context_noise=0.0, max_frames=12)
    with pytest.raises(ValueError, match=f"SaltCacheOptions: {words}"):
        run(salt_nodes.SaltCacheOptions, **{**args, **kw})


@pytest.mark.parametrize("kw, words", [
    (dict(seed=-1), "seed=-1"), (dict(seed=1.5), "seed=1.5"), (dict(seed=2 ** 64), "seed=18446744073709551616"),
    (dict(width=16.5), "width=16.5"), (dict(max_chunks=2.5), "max_chunks=2.5"),
])
def test_live_stream_numbers_that_are_not_counts_are_refused(salt_nodes, toy_salt, kw, words):
    from test_live import live_inputs
    with pytest.raises(ValueError, match=f"SaltLiveStream: {words}"):
        run(salt_nodes.SaltLiveStream, **live_inputs(salt_nodes, toy_salt, **kw))


def test_a_lora_name_with_its_extension_and_a_caption_that_is_not_a_string(salt_nodes):
    from comfyui_salt.nodes import lora
    assert lora.lora_path("mine.safetensors").endswith("mine.safetensors")
    assert not lora.lora_path("mine.safetensors").endswith(".safetensors.safetensors")
    for text in (None, 5, ["a red disc"]):
        with pytest.raises(ValueError, match="SaltToyTextEncode: text=.*expected a caption"):
            run(salt_nodes.SaltToyTextEncode, text=text)


def test_the_audits_last_findings_name_the_input_at_fault(salt_nodes, toy_salt, models_dir):
    """A cache window far longer than the clip is named in the memory refusal's fix; a sink without a window names
    sink_frames and local_attn_frames; world= emptied on a toy preset with the toy teacher is named (it used to ask
    for umT5); the defect node's counts and the LoRA rank are integers (grid_steps=3.5 was reported as nfe=3.5,
    rank=True was accepted)."""
    from comfyui_salt.training.distill_config import get_preset
    from comfyui_salt.training.validate import check_distill_memory
    cfg = get_preset("toy-salt", local_attn_frames=10 ** 9, memory_limit_gib=1.0)
    with pytest.raises(MemoryError, match=r"set local_attn_frames to at most num_frames=12 or to -1"):
        check_distill_memory(cfg, toy_salt.model, None, "cpu")
    with pytest.raises(MemoryError) as small:        # a window within the clip: the usual fix only
        check_distill_memory(get_preset("toy-salt", memory_limit_gib=1e-6), toy_salt.model, None, "cpu")
    assert "local_attn_frames" not in str(small.value)
    with pytest.raises(ValueError, match=r"sink_frames=5 with local_attn_frames=-1 .*set local_attn_frames"):
        get_preset("toy-salt", sink_frames=5)
    for text in ("world=", "world= "):
        with pytest.raises(ValueError, match=r"overrides world='' with teacher='toy'.*remove world="):
            run(salt_nodes.SaltDistill, preset="toy-dmd", teacher="toy", student_init="teacher",
                critic_init="teacher", gen_steps=1, batch_size=1, seed=0, name="world_run", overrides=text)
    assert not (models_dir.parent / "output" / "salt_runs" / "world_run").exists()
    for kw, words in ((dict(grid_steps=3.5), "grid_steps=3.5"), (dict(nfe=True), "nfe=True"),
                      (dict(seed=-1), "seed=-1"), (dict(grid_steps=2), "grid_steps=2")):
        args = {**dict(model=toy_salt, prompts=CAPTION, nfe=2, grid_steps=4, seed=0), **kw}
        with pytest.raises(ValueError, match=f"SaltSemigroupDefect: {words}"):
            run(salt_nodes.SaltSemigroupDefect, **args)
    for rank in (True, 2.5, 0):
        with pytest.raises(ValueError, match=f"SaltExtractLoRA: rank={rank}"):
            run(salt_nodes.SaltExtractLoRA, base=toy_salt, student=toy_salt, rank=rank, include_diffs=False,
                dtype="fp32", name="r")


def test_a_text_longer_than_the_model_reads_is_cut_with_a_warning_and_zero_padding_is_not(salt_nodes, toy_salt,
                                                                                           caplog):
    """ComfyUI's umT5 pads to at least 512 tokens and never cuts: a context past text_len is cut as Wan cuts it,
    said in the log only when the cut drops words (non-zero rows), counted in the longest row."""
    from comfyui_salt.nodes.streaming import text_context
    n = toy_salt.model.cfg.text_len
    words = torch.randn(2, n + 5, 32, generator=torch.Generator().manual_seed(0))
    words[1, n + 2:] = 0                                   # row 1 loses 2 tokens, row 0 loses 5
    padded = torch.cat([words[:, :n], torch.zeros(2, 7, 32)], 1)
    with caplog.at_level("WARNING", logger="salt.nodes"):
        quiet = text_context([[padded, {}]], toy_salt, 2, "positive")
        assert not caplog.records
        cut = text_context([[words, {}]], toy_salt, 2, "positive")
    assert torch.equal(quiet, words[:, :n]) and torch.equal(cut, words[:, :n])
    assert [r.getMessage() for r in caplog.records] == [
        f"SaltStreamingSampler: the positive text is 5 tokens longer than the {n} random toy reads; its end is cut "
        f"(as Wan and diffusers cut it): shorten the prompt to keep it"]
