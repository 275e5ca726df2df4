"""GPU check, ComfyUI section: a native Wan MODEL with a LoRA through Salt's nodes under ComfyUI's default flags.

    python3 bench/gpu_comfy.py OUT --comfyui DIR           # a GPU machine with a ComfyUI tree (+ its packages)
    python3 bench/gpu_comfy.py OUT --comfyui DIR --smoke   # CPU, tiny sizes (CI: tests/test_gpu_check.py)
    python3 bench/gpu_check.py OUT --comfyui DIR           # the same, as a section of the whole GPU check

ComfyUI's modules are imported from the tree DIR (its `site` folder first, as .ci/setup_comfyui_033 lays 0.33 out)
with ComfyUI's default command line (`--cpu` only for --smoke). On NVIDIA with ComfyUI 0.16+ that means Dynamic
VRAM: `enable_dynamic_vram` does what ComfyUI's main.py does at boot (comfy-aimdo's init, then
`CoreModelPatcher = ModelPatcherDynamic`). Then, at real size (Wan 2.1 T2V 1.3B config, random bf16 weights,
832×480, 2 chunks of 3 latent frames, 4 steps) or tiny for --smoke:

1. the MODEL as UNETLoader makes it (`comfy.sd.load_diffusion_model_state_dict`) + a random rank-16 LoRA on every
   attention and FFN layer as LoraLoaderModelOnly applies it (`comfy.sd.load_lora_for_models`) →
   SaltCausalFromModel → SaltStreamingSampler;
2. the reference: the LoRA merged into the weights by Salt's `apply_lora` (tested against ComfyUI's own loader),
   loaded as a classic, fully loaded MODEL → the same nodes;
3. checks: the MODEL's patcher is dynamic (real runs), the two videos agree, and the LoRA moved the video far more
   than that disagreement. Times and peak memory go in the speed table.
Nothing here is downloaded; the package is imported from this tree (gpu_check.import_package).

A lent GPU machine has no ComfyUI and can be sent 64 MiB. `--prepare` (here, with network) lays out the gitignored
`.gpu/`: the ComfyUI tree without its frontend, templates and tests (~23 MB), the wheels 0.33 needs that the GPU
image lacks (comfy-aimdo, comfy-kitchen's pure-Python wheel: eager and Triton backends, no CUDA kernels; blake3,
simpleeval, torchsde, trampoline), and a stand-in for PyAV (a 35 MB wheel; ComfyUI imports it for video files, which
nothing here reads). The device command is in docs/training.md "GPU check".

    python3 bench/gpu_comfy.py --prepare --comfyui .venv/comfyui-0.33      # here, once: writes .gpu/
"""
import argparse
import os
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gpu_check import Report, import_package, sync  # noqa: E402  (a sibling script, not a package)

REAL = dict(preset="wan2.1-t2v-1.3b", width=832, height=480, chunks=2, rank=16, dtype=torch.bfloat16, rtol=5e-2)
SMOKE = dict(config=dict(dim=256, ffn_dim=256, num_heads=2, num_layers=2, in_dim=16, out_dim=16, text_dim=4096,
                         freq_dim=256), width=64, height=64, chunks=2, rank=4, dtype=torch.float32, rtol=1e-4)
LORA_LAYERS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o",
               "ffn.0", "ffn.2")


def import_comfy(tree: pathlib.Path, cpu: bool):
    """ComfyUI's modules from `tree` in this process, with ComfyUI's default flags (plus --cpu)."""
    os.environ.setdefault("SALT_COMFYUI_DIR", str(tree))   # the tests' VAE helpers look for ComfyUI there
    site = tree / "site"
    if site.is_dir():
        sys.path.insert(0, str(site))
    sys.path.append(str(tree))
    import comfy.options
    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, [sys.argv[0]] + (["--cpu"] if cpu else [])
    try:
        import comfy.cli_args
        aimdo_init()                   # before model_management: comfy-aimdo's modules bind its library on import
        import comfy.model_management  # noqa: F401
    finally:
        sys.argv = argv


def aimdo_init():
    """comfy-aimdo's library loaded where ComfyUI's flags ask for Dynamic VRAM, as main.py does before it imports
    model management (comfy_aimdo.host_buffer copies `control.lib` when imported: after that, too late)."""
    import comfy.cli_args
    if not getattr(comfy.cli_args, "enables_dynamic_vram", lambda: False)():
        return
    try:
        import comfy_aimdo.control
    except ImportError:
        return                         # enable_dynamic_vram says so
    args = comfy.cli_args.args
    headroom = None if args.reserve_vram is None else int(args.reserve_vram * 1024 ** 3)
    for kwargs in ({"simple_vram_headroom": headroom, "nvml_pressure": not args.disable_nvml_pressure},
                   {"simple_vram_headroom": headroom}, {}):           # comfy-aimdo 0.4.11+, 0.4.10, 0.4.9
        try:
            comfy_aimdo.control.init(**kwargs)
            return
        except TypeError:
            continue


def enable_dynamic_vram() -> str:
    """Turn on Dynamic VRAM as ComfyUI's main.py does at boot when its flags allow it; returns what happened."""
    import comfy.cli_args
    import comfy.model_management as mm
    if not getattr(comfy.cli_args, "enables_dynamic_vram", lambda: False)():
        return "off: this ComfyUI has no Dynamic VRAM, or its flags turn it off"
    try:
        import comfy_aimdo.control
        import comfy.memory_management
        import comfy.model_patcher
    except ImportError as e:
        return f"off: {e} (install comfy-aimdo)"
    args = comfy.cli_args.args
    if comfy_aimdo.control.lib is None:
        return "off: comfy-aimdo's library did not load (import_comfy loads it, as ComfyUI's main.py does)"
    if not mm.is_nvidia():
        return "off: not an NVIDIA device"
    devices = mm.get_all_torch_devices()
    try:
        ok = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024 ** 3)) for d in devices)
    except TypeError:
        ok = comfy_aimdo.control.init_devices(d.index for d in devices)
    if not ok:
        return "off: comfy-aimdo did not initialise"
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return "on"


def random_lora(sd: dict, rank: int, scale: float, seed: int = 0) -> dict:
    """A rank-`rank` LoRA in ComfyUI's keys on LORA_LAYERS of every block, its update about `scale` of the weight."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, w in sd.items():
        module = name[:-len(".weight")]
        if w.ndim != 2 or not module.endswith(LORA_LAYERS) or not module.startswith("blocks."):
            continue
        key = f"diffusion_model.{module}"
        std = scale * float(w.float().std()) / rank ** 0.5
        lora[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * std ** 0.5
        lora[f"{key}.lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * std ** 0.5
        lora[f"{key}.alpha"] = torch.tensor(float(rank))
    return lora


def comfy_dynamic_vram(rep: Report, smoke: bool, tree: pathlib.Path):
    """The section: checks and one speed row (see the module docstring)."""
    import comfy.model_management as mm
    import comfy.sd
    nodes = __import__("comfyui_salt.nodes", fromlist=["SaltCausalFromModel"])
    from comfyui_salt.salt_core.config import WanConfig, get_config
    from comfyui_salt.salt_core.lora import apply_lora, comfy_applied
    from comfyui_salt.salt_core.model import build_model
    size = SMOKE if smoke else REAL
    cfg = WanConfig(**size["config"]) if smoke else get_config(size["preset"])
    state = "off (--smoke: CPU)" if smoke else enable_dynamic_vram()
    with torch.device("cpu"):
        sd = {k: v.to(size["dtype"]) for k, v in build_model(cfg, seed=0).state_dict().items()}
    lora = random_lora(sd, size["rank"], 0.5)
    context = torch.randn(1, 16, cfg.text_dim, generator=torch.Generator().manual_seed(1))

    views = []

    def sample(model):
        salt = nodes.SaltCausalFromModel.execute(model=model).args[0]
        views.append(salt)
        options = nodes.SaltCacheOptions.execute(chunk_frames=3, attention="sink", window_frames=12, sink_frames=3,
                                                 relative_rope=True, context_noise=0.0, max_frames=21).args[0]
        sigmas = nodes.SaltFewStepSigmas.execute(preset="self_forcing_4step", nfe=4, shift=5.0).args[0]
        device = mm.get_torch_device()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = nodes.SaltStreamingSampler.execute(
                model=salt, positive=[[context, {}]], cache_options=options, sigmas=sigmas, seed=7,
                num_chunks=size["chunks"], width=size["width"], height=size["height"], batch_size=1,
                sampling="stochastic", cfg=1.0).args[0]["samples"]
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
        return out, time.perf_counter() - start, peak

    base = comfy.sd.load_diffusion_model_state_dict(dict(sd))
    patched = comfy.sd.load_lora_for_models(base, None, lora, 1.0, 0)[0]
    dynamic = bool(getattr(patched, "is_dynamic", lambda: False)())
    if not smoke:
        rep.check("ComfyUI: the MODEL's patcher is dynamic under default flags", dynamic,
                  f"Dynamic VRAM {state}; patcher {type(patched).__name__}")
    ours, seconds, peak = sample(patched)
    bound = not any(p.is_meta for p in views[-1].model.parameters())
    mm.unload_all_models()
    rep.check("ComfyUI: the view's patcher binds it while the MODEL is loaded and frees it when ComfyUI unloads",
              bound and all(p.is_meta for p in views[-1].model.parameters()),
              f"patcher {type(views[-1].patcher).__name__}")
    plain, _, _ = sample(base)
    mm.unload_all_models()
    merged = apply_lora({k: v.float() for k, v in sd.items()}, comfy_applied(lora))
    classic_kw = {"disable_dynamic": True} if "disable_dynamic" in comfy.sd.load_diffusion_model_state_dict.__code__.co_varnames else {}
    reference = comfy.sd.load_diffusion_model_state_dict({k: v.to(size["dtype"]) for k, v in merged.items()}, **classic_kw)
    ref, ref_seconds, ref_peak = sample(reference)
    mm.unload_all_models()
    rep.close(f"ComfyUI: native MODEL + LoRA ({'dynamic' if dynamic else 'classic'} patcher) through "
              f"SaltStreamingSampler vs the LoRA merged in", ours, ref, size["rtol"])
    moved = float((ref.double() - plain.double()).abs().max() / ref.double().abs().max())
    agree = float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())
    floor = size["rtol"] / 10                                   # a bf16 run never agrees better than this is worth
    rep.check("ComfyUI: the LoRA reaches Salt's sampling", moved > 4 * max(agree, floor),
              f"the LoRA changes the video by {moved:.2e} relative (> 4 × the disagreement above, {agree:.2e}, "
              f"floored at {floor:.0e})")
    # a start image for a video no memory of the device holds: refused before its resize and VAE encode (no vae given)
    options = nodes.SaltCacheOptions.execute(chunk_frames=3, attention="sink", window_frames=12, sink_frames=3,
                                             relative_rope=True, context_noise=0.0, max_frames=21).args[0]
    sigmas = nodes.SaltFewStepSigmas.execute(preset="self_forcing_4step", nfe=4, shift=5.0).args[0]
    try:
        nodes.SaltStreamingSampler.execute(
            model=nodes.SaltCausalFromModel.execute(model=base).args[0], positive=[[context, {}]],
            cache_options=options, sigmas=sigmas, seed=7, num_chunks=4, width=65536, height=65536, batch_size=1,
            sampling="stochastic", cfg=1.0, start_image=torch.rand(1, 64, 64, 3))
        refused = "not refused"
    except MemoryError as e:
        refused = str(e)
    device = mm.get_torch_device()
    rep.check("ComfyUI: a start image for a video beyond the device's memory is refused before its resize and encode",
              f"all of {device}'s memory" in refused, refused[:240])
    frames = size["chunks"] * 3
    warm = []            # each MODEL sampled twice in a row, the second timed: loading and CUDA warm-up left out
    for model in (patched, reference):
        sample(model)
        warm.append(frames / sample(model)[1])
        mm.unload_all_models()
    rep.speed.append({"cache": f"ComfyUI MODEL + LoRA, sink 3 + window 12 ({'dynamic' if dynamic else 'classic'})",
                      "NFE": 4, "latent frames/s": f"{frames / seconds:.2f} first, {warm[0]:.2f} warm",
                      "peak GiB": f"{peak:.1f}",
                      "detail": f"{size['width']}×{size['height']}, {frames} latent frames; merged weights on a "
                                f"classic patcher: {frames / ref_seconds:.2f} first, {warm[1]:.2f} warm latent "
                                f"frames/s, {ref_peak:.1f} GiB (first runs include loading the MODEL)"})


def live_speed_row(rep: Report, how: str, pushes: list, start: float, size: dict) -> None:
    """The speed table's row of a live stream: latent frames per second, time to first frame, chunk period."""
    periods = [b[0] - a[0] for a, b in zip(pushes, pushes[1:])]
    rep.speed.append({"cache": f"SaltLiveStream, sink 3 + window 12, {how}", "NFE": 4,
                      "latent frames/s": f"{3 / statistics.median(periods):.2f}" if periods else "",
                      "detail": f"{size['width']}×{size['height']}; first frame {pushes[0][0] - start:.2f} s after the "
                                f"start, median chunk period {1000 * statistics.median(periods):.0f} ms"
                      if periods else ""})


def comfy_live(rep: Report, smoke: bool, tree: pathlib.Path):
    """SaltLiveStream on a native Wan MODEL with a random Wan 2.1 VAE of ComfyUI's own class at real width: chunks
    decoded on the worker thread (its own CUDA stream on a GPU) equal what VAEDecode gives for the same latents."""
    import comfy.model_management as mm
    import comfy.sd
    import nodes as comfy_nodes
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))   # the VAE stand-in
    from helpers import tiny_wan_vae_state_dict
    salt_nodes = __import__("comfyui_salt.nodes", fromlist=["SaltLiveStream"])
    live = sys.modules["comfyui_salt.nodes.live"]
    from comfyui_salt.salt_core.config import WanConfig, get_config
    from comfyui_salt.salt_core.model import build_model
    size = SMOKE if smoke else REAL
    cfg = WanConfig(**size["config"]) if smoke else get_config(size["preset"])
    with torch.device("cpu"):
        sd = {k: v.to(size["dtype"]) for k, v in build_model(cfg, seed=0).state_dict().items()}
    patcher = comfy.sd.load_diffusion_model_state_dict(sd)
    vae = comfy.sd.VAE(sd=tiny_wan_vae_state_dict(dim=8 if smoke else 96))
    pushes = []
    live.push_event = lambda event, data, pixels: (event == live.LIVE_EVENT    # the frame pushes (not the run's end)
                                                   and pushes.append((time.perf_counter(), data["frames"].shape[0])))
    salt = salt_nodes.SaltCausalFromModel.execute(model=patcher).args[0]
    options = salt_nodes.SaltCacheOptions.execute(chunk_frames=3, attention="sink", window_frames=12, sink_frames=3,
                                                  relative_rope=True, context_noise=0.0, max_frames=21).args[0]
    sigmas = salt_nodes.SaltFewStepSigmas.execute(preset="self_forcing_4step", nfe=4, shift=5.0).args[0]
    context = torch.randn(1, 16, cfg.text_dim, generator=torch.Generator().manual_seed(1))
    chunks = 3 if smoke else 8
    start = time.perf_counter()
    with torch.inference_mode():
        images, latent = salt_nodes.SaltLiveStream.execute(
            model=salt, positive=[[context, {}]], cache_options=options, sigmas=sigmas, seed=7, width=size["width"],
            height=size["height"], max_chunks=chunks, stream_id="gpu_check", continue_stream=False, vae=vae).args
        whole = comfy_nodes.VAEDecode().decode(vae, latent)[0]
    mm.unload_all_models()
    rep.close("ComfyUI: SaltLiveStream's chunk-wise frames vs VAEDecode of its latents", images,
              whole[:images.shape[0]], 1e-3)
    rep.check("ComfyUI: SaltLiveStream pushed every chunk", len(pushes) == chunks and images.shape[0] >= whole.shape[0] - 4,
              f"{len(pushes)} pushes of {chunks} chunks, {images.shape[0]} of {whole.shape[0]} frames shown")
    live_speed_row(rep, "decoded live", pushes, start, size)
    # queued again: the stream's decoder, parked on the host between runs, goes on where it stopped
    with torch.inference_mode():
        more, more_latent = salt_nodes.SaltLiveStream.execute(
            model=salt, positive=[[context, {}]], cache_options=options, sigmas=sigmas, seed=7, width=size["width"],
            height=size["height"], max_chunks=2, stream_id="gpu_check", continue_stream=True, vae=vae).args
        both = torch.cat([latent["samples"], more_latent["samples"]], 2)
        whole = comfy_nodes.VAEDecode().decode(vae, {"samples": both})[0]
    mm.unload_all_models()
    shown = torch.cat([images, more])
    rep.close("ComfyUI: SaltLiveStream queued again: both runs' frames vs VAEDecode of both runs' latents", shown,
              whole[:shown.shape[0]], 1e-3)
    # Cancel between two steps of the second chunk: the device generator's state is restored, so queueing again
    # continues as a stream never cancelled (one boundary look and 4 step looks a chunk: look 8 is in chunk 2)
    looks, real_check = [], live.check_interrupted

    def cancel_mid_chunk():
        looks.append(1)
        if len(looks) == 8:
            raise mm.InterruptProcessingException()
    live.check_interrupted = cancel_mid_chunk
    runs = dict(model=salt, positive=[[context, {}]], cache_options=options, sigmas=sigmas, seed=7,
                width=size["width"], height=size["height"], vae=None, live_decoder="vae")
    try:
        with torch.inference_mode():
            salt_nodes.SaltLiveStream.execute(**runs, max_chunks=3, stream_id="gpu_cancel", continue_stream=False)
    except mm.InterruptProcessingException:
        pass
    finally:
        live.check_interrupted = real_check
    with torch.inference_mode():
        after = salt_nodes.SaltLiveStream.execute(**runs, max_chunks=2, stream_id="gpu_cancel",
                                                  continue_stream=True).args[1]["samples"]
        never = salt_nodes.SaltLiveStream.execute(**runs, max_chunks=3, stream_id="gpu_never",
                                                  continue_stream=False).args[1]["samples"]
    mm.unload_all_models()
    rep.close("ComfyUI: SaltLiveStream cancelled between steps, then queued again, vs never cancelled (latents)",
              after, never[:, :, -after.shape[2]:], 1e-3)
    # the same stream shown with a tiny decoder (a random TAEHV of ComfyUI's class, as lighttaew2_1 loads)
    from helpers import tiny_taehv_state_dict
    tiny = comfy.sd.VAE(sd=tiny_taehv_state_dict())
    live.load_tiny_wan_decoder = lambda name: sys.modules["comfyui_salt.nodes.bridge.decoders"].TinyChunkDecoder(tiny)
    pushes.clear()
    start = time.perf_counter()
    with torch.inference_mode():
        images, latent = salt_nodes.SaltLiveStream.execute(
            model=salt, positive=[[context, {}]], cache_options=options, sigmas=sigmas, seed=7, width=size["width"],
            height=size["height"], max_chunks=chunks, stream_id="gpu_check_tiny", continue_stream=False,
            live_decoder="lighttaew2_1.safetensors").args
        whole = comfy_nodes.VAEDecode().decode(tiny, latent)[0]
    mm.unload_all_models()
    rep.close("ComfyUI: SaltLiveStream's tiny-decoder frames vs VAEDecode with the tiny decoder", images, whole, 1e-3)
    live_speed_row(rep, "tiny decoder", pushes, start, size)


CARRY = pathlib.Path(__file__).resolve().parents[1] / ".gpu"     # gitignored; `carry` it to the GPU machine
CARRY_SKIP = {"site", "blueprints", "tests", "tests-unit", "comfy_api_nodes", ".github", "openapi.yaml", "__pycache__"}
CARRY_WHEELS = ["comfy-aimdo==0.4.13", "blake3==1.0.11", "simpleeval==1.0.8", "torchsde==0.2.6", "trampoline==0.1.2"]
PURE_WHEELS = ["comfy-kitchen==0.2.31"]          # its py3-none-any build: 0.2 MB against 59 MB with CUDA kernels
AV_MODULES = ("__init__", "container", "error", "filter", "subtitles/__init__", "subtitles/stream", "video/__init__",
              "video/reformatter", "audio/__init__", "audio/resampler")
AV_STANDIN = '''"""GPU-check stand-in for PyAV: ComfyUI imports it for video files, which the GPU check never reads."""


class _AbsentType(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return cls


class _Absent(metaclass=_AbsentType):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("PyAV is a stand-in on this GPU check machine: no video files here")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Absent
'''


def prepare_carry(tree: pathlib.Path, dest: pathlib.Path = CARRY):
    """Write dest/comfyui (the tree without what the check never imports), dest/whl, dest/stubs/av; sizes printed."""
    import shutil
    import subprocess
    if not (tree / "comfy" / "model_management.py").is_file():
        raise SystemExit(f"--comfyui {tree}: not a ComfyUI tree (no comfy/model_management.py); expected e.g. "
                         f".venv/comfyui-0.33 (bash .ci/setup_comfyui_033)")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(tree, dest / "comfyui", ignore=lambda d, names: [n for n in names if n in CARRY_SKIP])
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "-d", str(dest / "whl")]
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    subprocess.run(pip + platforms + CARRY_WHEELS, check=True)
    subprocess.run(pip + ["--platform", "any"] + PURE_WHEELS, check=True)
    for module in AV_MODULES:
        path = dest / "stubs" / "av" / f"{module}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(AV_STANDIN)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{dest}: {size / 2 ** 20:.1f} MiB (+ the working tree and .whl/ must stay under the 64 MiB a call sends)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", help="output folder for gpu_check.md and gpu_check.json")
    ap.add_argument("--comfyui", required=True, help="a ComfyUI tree (e.g. .venv/comfyui-0.33)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (CI)")
    ap.add_argument("--prepare", action="store_true", help=f"write {CARRY} for a GPU machine and exit")
    args = ap.parse_args()
    if args.prepare:
        return prepare_carry(pathlib.Path(args.comfyui).resolve())
    if not args.out:
        ap.error("give an output folder (or --prepare)")
    import_package()
    import_comfy(pathlib.Path(args.comfyui).resolve(), cpu=args.smoke)
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    rep = Report(args.out, args.smoke)
    with rep.section("ComfyUI: native MODEL + LoRA under default flags", 240) as go:
        if go:
            comfy_dynamic_vram(rep, args.smoke, pathlib.Path(args.comfyui))
    with rep.section("ComfyUI: live stream decoded chunk by chunk", 120) as go:
        if go:
            comfy_live(rep, args.smoke, pathlib.Path(args.comfyui))
    rep.write(f"ComfyUI tree {os.path.abspath(args.comfyui)}; torch {torch.__version__}")
    return 0 if rep.checks and all(c["passed"] for c in rep.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
