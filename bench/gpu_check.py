"""One-command GPU check: CUDA correctness, then real-size streaming speed (markdown table + JSON).

    python3 bench/gpu_check.py OUT_DIR            # on the GPU machine (docs/training.md "GPU check"), < 8 min
    python3 bench/gpu_check.py OUT_DIR --smoke    # CPU at tiny size, seconds (CI: tests/test_gpu_check.py)
    python3 bench/gpu_check.py OUT_DIR --comfyui DIR   # + a native Wan MODEL with a LoRA through Salt's nodes
                                                             #   in the ComfyUI tree DIR under its default flags
    python3 bench/gpu_check.py --fetch-wheels     # here, once: the diffusers wheel into .whl/ (gitignored)

1. Correctness on the device (each check fails loudly and the rest still run): bf16 and fp32 forwards of a
   small Wan vs CPU fp32 on the same weights; block-causal full clip == chunk-by-chunk KV-cached forward;
   rolling / sink caches == brute-force masks; relative RoPE rotated once per chunk == rotated at every
   forward; few-step samplers and stream_video vs CPU; a 3-update toy distillation (DMD and Salt) with bf16
   autocast and gradient checkpointing; the semigroup defect vs CPU.
2. Speed (Wan 2.1 T2V 1.3B config, random bf16 weights, 832×480 → latent 60×104, chunks of 3 latent frames,
   21 latent frames = 81 video frames): Self Forcing's full cache and LongLive's window 12 + sink 3 at 4 and
   2 NFE, eager and torch.compile'd: latent frames/s, video FPS, time to first chunk, peak memory, the SDPA
   kernel picked; VAE decode per chunk (diffusers AutoencoderKLWan, random weights) as its own column and
   end-to-end FPS; the bidirectional 4-step 81-frame sample.
Every section runs under a time guard: a slow section is cut, recorded as cut, and the next one runs.
The package is imported from this tree (as `comfyui_salt`, root not on sys.path), so no install is needed;
diffusers comes from a wheel in .whl/ when the interpreter lacks it. Exit status 1 if any check failed.
"""
import argparse
import contextlib
import glob
import importlib.util
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
WHEEL_DIR = ROOT / ".whl"
WHEELS = ["diffusers==0.42.1"]   # py3-none-any; its runtime needs are in the GPU image (docs/training.md "GPU check")
TOTAL_BUDGET_S = 450             # all sections together (--total-s): a lent machine's command limit is 10 minutes
VIDEO_FRAMES_PER_LATENT = 4      # Wan VAE: 1 + 4·(F - 1) video frames from F latent frames


# -- setup ------------------------------------------------------------------------------------------
def import_package():
    """Import this tree as the package `comfyui_salt` (as ComfyUI imports a pack), never the root on sys.path."""
    if "comfyui_salt" in sys.modules:
        return sys.modules["comfyui_salt"]
    spec = importlib.util.spec_from_file_location("comfyui_salt", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_salt"] = module
    spec.loader.exec_module(module)
    return module


def free_device_memory():
    """What a finished or failed section left: collected, and the CUDA cache returned (a no-op on the CPU)."""
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fetch_wheels():
    """Download the pinned wheels into .whl/ (run here, where pip reaches the index)."""
    WHEEL_DIR.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_17_x86_64", "-d", str(WHEEL_DIR), *WHEELS]
    subprocess.run(cmd, check=True)
    print("\n".join(sorted(os.listdir(WHEEL_DIR))))


def ensure_diffusers() -> tuple:
    """(ok, status): diffusers importable from the interpreter, else from the wheel in .whl/ (temp install)."""
    if importlib.util.find_spec("diffusers") is not None:
        import diffusers
        return True, f"diffusers {diffusers.__version__} (installed)"
    wheels = sorted(glob.glob(str(WHEEL_DIR / "diffusers-*.whl")))
    if not wheels:
        return False, f"diffusers unavailable: not installed and no wheel in {WHEEL_DIR} (--fetch-wheels, carry .whl)"
    target = tempfile.mkdtemp(prefix="salt_site_")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", target,
           *wheels]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return False, f"diffusers unavailable: pip install of {wheels} failed: {done.stderr.strip()[-300:]}"
    sys.path.insert(0, target)
    try:
        import diffusers
        from diffusers import AutoencoderKLWan  # noqa: F401  (lazy module: import what we use now)
    except Exception as e:   # a runtime dependency missing in this image
        return False, f"diffusers unavailable: import failed after installing the wheel: {e!r}"[:300]
    return True, f"diffusers {diffusers.__version__} (from {os.path.basename(wheels[0])})"


# -- bookkeeping ------------------------------------------------------------------------------------
class SectionTimeout(Exception):
    pass


class Report:
    """Checks, speed rows and section timings; written as markdown and JSON."""

    def __init__(self, out_dir, smoke, total_s=TOTAL_BUDGET_S):
        self.out_dir, self.smoke, self.total_s = pathlib.Path(out_dir), smoke, total_s
        self.checks, self.speed, self.sections, self.notes = [], [], [], []
        self.diffusers_ok, self.vae_status = False, "not tried"
        self.t0 = time.perf_counter()

    def check(self, name, passed, detail):
        self.checks.append({"check": name, "passed": bool(passed), "detail": detail})
        print(f"[{'PASS' if passed else 'FAIL'}] {name}: {detail}", flush=True)
        if not passed:
            print(f"!!!!!!!! CHECK FAILED: {name} !!!!!!!!", file=sys.stderr, flush=True)

    def close(self, name, actual, expected, rtol):
        """Relative max error max|a-e| / max|e| ≤ rtol, with max and mean errors in the detail."""
        a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
        diff = (a - e).abs()
        rel = (diff.max() / e.abs().max().clamp_min(1e-12)).item()
        ok = bool(torch.isfinite(a).all()) and rel <= rtol
        self.check(name, ok, f"relative max error {rel:.2e} (≤ {rtol:.0e}), mean abs {diff.mean():.2e}")

    @contextlib.contextmanager
    def section(self, name, budget_s):
        """Run a block with a time guard: past min(budget, what is left of the total) it is cut."""
        left = self.total_s - (time.perf_counter() - self.t0)
        budget = min(budget_s, left)
        start = time.perf_counter()
        if budget <= 1:
            self.sections.append({"section": name, "status": "skipped: total budget spent", "seconds": 0.0})
            print(f"-- {name}: skipped (total budget spent)", flush=True)
            yield False
            return
        print(f"-- {name} (budget {budget:.0f} s)", flush=True)

        def alarm(*_):
            raise SectionTimeout(f"{name}: cut after {budget:.0f} s")
        use_alarm = hasattr(signal, "SIGALRM")
        if use_alarm:
            old = signal.signal(signal.SIGALRM, alarm)
            signal.setitimer(signal.ITIMER_REAL, budget)
        status = "done"
        try:
            yield True
        except SectionTimeout as e:
            status = f"cut after {budget:.0f} s (time guard)"
            self.notes.append(str(e))
        except Exception as e:
            status = f"error: {e!r}"[:300]
            self.check(f"{name} ran", False, status)
            traceback.print_exc()
            e.__traceback__ = None         # its frames hold the section's tensors: free them for the next section
            del e
            free_device_memory()
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        self.sections.append({"section": name, "status": status, "seconds": round(time.perf_counter() - start, 1)})

    def write(self, header):
        lines = [f"# GPU check ({'smoke, CPU' if self.smoke else 'full'})", "", header, "",
                 "## Correctness", "", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c['check']} | {'pass' if c['passed'] else '**FAIL**'} | {c['detail']} |" for c in self.checks]
        if self.speed:
            cols = list(dict.fromkeys(k for row in self.speed for k in row))
            lines += ["", "## Speed", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(str(row.get(c, "")) for c in cols) + " |" for row in self.speed]
        lines += ["", "## Sections", "", "| section | status | seconds |", "|---|---|---|"]
        lines += [f"| {s['section']} | {s['status']} | {s['seconds']} |" for s in self.sections]
        lines += [f"\nTotal {time.perf_counter() - self.t0:.0f} s."] + [f"- {n}" for n in self.notes]
        text = "\n".join(lines) + "\n"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "gpu_check.md").write_text(text)
        (self.out_dir / "gpu_check.json").write_text(json.dumps(
            {"header": header, "checks": self.checks, "speed": self.speed, "sections": self.sections,
             "notes": self.notes, "all_passed": all(c["passed"] for c in self.checks)}, indent=1))
        print("\n" + text, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- 1. correctness ---------------------------------------------------------------------------------
def brute_force_token_mask(num_frames, chunk, tokens, window=-1, sink=0):
    """(F·T, F·T) bool: query frame q sees key frame k as the KV-cached stream would, written pair by pair."""
    allow = torch.zeros(num_frames, num_frames, dtype=torch.bool)
    for q in range(num_frames):
        end = (q // chunk + 1) * chunk
        for k in range(end):
            allow[q, k] = window == -1 or k < sink or k >= end - (window - sink)
    return allow.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)


def streamed(model, x, t, ctx, chunk, policy, steps=0):
    """x chunk by chunk through a cache; `steps` noisy re-runs of each chunk before its clean write."""
    cache = model.new_cache(x.shape[0], policy, x.shape[-2:])
    outs = []
    for f0 in range(0, x.shape[2], chunk):
        piece, tt = x[:, :, f0:f0 + chunk], t[:, f0:f0 + chunk]
        for k in range(steps):
            model(piece + torch.sin(piece) * (1 - k / steps), tt, ctx, cache=cache, start_frame=f0)
        outs.append(model(piece, tt, ctx, cache=cache, start_frame=f0))
    return torch.cat(outs, 2)


def correctness(rep, device, smoke):
    """Section 1: every check compares the device against CPU fp32 or an independent construction."""
    from comfyui_salt.salt_core import (CachePolicy, FlowDenoiser, build_model, get_sigmas_fewstep,
                                        sample_fewstep_deterministic, sample_fewstep_stochastic, stream_video)
    from comfyui_salt.salt_core.model import BlockCausal
    from comfyui_salt.salt_core.schedules import randn_like
    preset, hw, frames = ("tiny", (8, 8), 12) if smoke else ("small", (16, 16), 12)
    cpu = build_model(preset, seed=1).eval()
    cfg = cpu.cfg
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_dim, frames, *hw, generator=g)
    ctx = torch.randn(2, cfg.text_len, cfg.text_dim, generator=g)
    t = torch.rand(2, frames, generator=g) * 1000
    tokens = (hw[0] // cfg.patch_size[1]) * (hw[1] // cfg.patch_size[2])
    dev = build_model(preset, seed=1, device=device).eval()
    xd, ctxd, td = x.to(device), ctx.to(device), t.to(device)
    with torch.no_grad():
        ref = cpu(x, t, ctx)
        rep.close("fp32 forward vs CPU fp32", dev(xd, td, ctxd), ref, 1e-4)
        bf = build_model(preset, seed=1, device=device, dtype=torch.bfloat16).eval()
        rep.close("bf16 forward vs CPU fp32", bf(xd, td, ctxd).float(), ref, 5e-2)
        full = dev(xd, td, ctxd, block_causal=BlockCausal(3))
        rep.close("block-causal full clip == chunked KV cache (chunk 3)",
                  streamed(dev, xd, td, ctxd, 3, CachePolicy.full(frames)), full, 1e-4)
        for window, sink in ((6, 0), (9, 3)):
            mask = brute_force_token_mask(frames, 3, tokens, window, sink).to(device)
            policy = CachePolicy.sink(window, sink) if sink else CachePolicy.rolling(window)
            rep.close(f"{policy.kind} W={window} S={sink} cache == brute-force mask",
                      streamed(dev, xd, td, ctxd, 3, policy), dev(xd, td, ctxd, attn_mask=mask), 1e-4)
        rel = CachePolicy.sink(9, 3, relative_rope=True)
        kept = streamed(dev, xd, td, ctxd, 3, rel, steps=3)
    with torch.enable_grad():   # the gathered path rotates every attended key at every forward
        every = streamed(dev, xd, td, ctxd, 3, rel, steps=3).detach()
    rep.close("sink + relative RoPE: keys rotated once per chunk == at every forward", kept, every, 1e-4)

    sig = get_sigmas_fewstep(4)
    xs = x[:, :, :6]
    for name, fn in (("stochastic", sample_fewstep_stochastic), ("deterministic", sample_fewstep_deterministic)):
        outs = []
        for m, c in ((cpu, ctx), (dev, ctxd)):
            xn = xs.to(c.device)
            gen = torch.Generator().manual_seed(5)
            kw = {"noise_sampler": lambda *_: randn_like(xn, gen)} if name == "stochastic" else {}
            outs.append(fn(FlowDenoiser(m, c), xn, sig, disable=True, **kw))
        rep.close(f"4-step {name} sampler vs CPU", outs[1], outs[0], 1e-3)
    with torch.no_grad():
        outs = [stream_video(m, x.to(c.device), c, sig, chunk_frames=3, generator=torch.Generator().manual_seed(7),
                             policy=CachePolicy.sink(9, 3, relative_rope=True)) for m, c in ((cpu, ctx), (dev, ctxd))]
    rep.close("stream_video (sink 9+3, relative RoPE, 4 NFE) vs CPU", outs[1], outs[0], 1e-3)


def distillation(rep, device, smoke):
    """Three generator updates of the toy DMD and Salt presets with bf16 autocast and checkpointing."""
    from comfyui_salt.toy.jobs import distill_world
    from comfyui_salt.training.distill import run_distillation
    from comfyui_salt.training.distill_config import get_preset
    autocast = device.type == "cuda"
    for preset in ("toy-dmd", "toy-salt"):
        kw = dict(gen_steps=3, eval_every=0, checkpoint_every=3, autocast_bf16=True, grad_checkpointing=True,
                  ema_start_iter=1, align_start_iter=0, threads=0)
        if smoke:
            kw.update(batch_size=2, critic_ratio=1, threads=1, num_frames=6)
        cfg = get_preset(preset, **kw)
        with tempfile.TemporaryDirectory() as run:
            start = time.perf_counter()
            model = run_distillation(cfg, run, quiet=True, device=device, world=distill_world())
            rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
        losses = [v for r in rows for k, v in r.items() if k.endswith("loss") and isinstance(v, (int, float))]
        finite = all(torch.isfinite(p).all() for p in model.parameters()) and all(abs(v) < float("inf") for v in losses)
        on = model.patch_embedding.weight.device.type
        rep.check(f"{preset}: 3 generator updates, bf16 autocast {'on' if autocast else 'off (CPU)'}, "
                  f"grad checkpointing", finite and on == device.type and len(losses) > 0,
                  f"{len(rows)} log rows, {len(losses)} finite losses, weights on {on}, {time.perf_counter() - start:.1f} s")


def fsdp_one_gpu(rep, device, smoke):
    """A real-size Salt preset (Wan 1.3B student and critic; the teacher a random Wan 1.3B, not 14B, to fit the
    device budget) under torchrun's environment with one rank: FSDP2 shards everything to that rank and keeps the
    teacher's shards on the host between uses (teacher_offload), bf16 compute with fp32 reduction; two generator
    updates, a sharded (torch.distributed.checkpoint) checkpoint, and the peak memory reported."""
    import socket
    import torch.distributed as dist
    from comfyui_salt.salt_core.config import MODEL_PRESETS, WanConfig
    from comfyui_salt.salt_core.model import WanModel, build_model
    from comfyui_salt.training.distill import run_distillation
    from comfyui_salt.training.distill_config import get_preset
    from comfyui_salt.training.distill_models import fill_prompt_cache
    from comfyui_salt.training.validate import distill_memory_bytes
    from comfyui_salt.weights.files import save_model
    mcfg = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=64) if smoke else \
        MODEL_PRESETS["wan2.1-t2v-1.3b"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
               LOCAL_WORLD_SIZE="1")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory() as run:
            path = os.path.join(run, "random_wan.safetensors")
            save_model(build_model(mcfg, seed=0).to(torch.bfloat16), path,
                       extra_metadata={"teacher_mode": "bidirectional"})
            prompts = os.path.join(run, "prompts.txt")
            with open(prompts, "w") as f:
                f.write("a red fox running through snow\na city street at night in the rain\n")
            kw = dict(teacher=path, student_init=path, critic_init=path, gen_steps=2, critic_ratio=1,
                      checkpoint_every=2, eval_every=0, teacher_offload=True, align_start_iter=0, ema_start_iter=1,
                      prompts_file=prompts)
            if smoke:
                kw.update(num_frames=3, height=8, width=8, threads=1, autocast_bf16=False, align_block=1)
            else:   # one rank holds everything: 9 frames, estimated 59 GiB (21: 86 GiB; docs/training.md)
                kw.update(num_frames=9)
            cfg = get_preset("salt-self-forcing", **kw)
            with torch.device("meta"):
                meta = [WanModel(mcfg) for _ in range(3)]
            estimate = distill_memory_bytes(cfg, meta[0], meta[1], meta[2].to(torch.bfloat16), models_on_device=True,
                                            sharded=True, compute_dtype=torch.bfloat16 if not smoke else None) / 2 ** 30
            print(f"FSDP2 section: {cfg.num_frames} latent frames, the run's estimate {estimate:.1f} GiB", flush=True)
            gen = torch.Generator().manual_seed(0)           # stand-in umT5 rows: the prompt cache a run reads
            fill_prompt_cache(cfg, os.path.join(run, "out"),
                              lambda texts: [torch.randn(8, mcfg.text_dim, generator=gen) for _ in texts])
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            model = run_distillation(cfg, os.path.join(run, "out"), quiet=True)
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else 0.0
            rows = [json.loads(line) for line in open(os.path.join(run, "out", "metrics.jsonl"))]
            saved_ok = os.path.isdir(os.path.join(run, "out", "checkpoints", "step_00000002"))
        finite = all(torch.isfinite(p).all() for p in model.parameters())
        rep.check("FSDP2, one rank: 2 updates of salt-self-forcing (1.3B), teacher offloaded, bf16 / fp32 reduce",
                  finite and saved_ok and sum("K" in r for r in rows) == 2,
                  f"{cfg.num_frames} latent frames of {cfg.height}×{cfg.width}: {seconds:.1f} s, peak {peak:.1f} GiB "
                  f"allocated (the run's own estimate {estimate:.2f} GiB), checkpoint written: {saved_ok}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def semigroup(rep, device, smoke):
    """The semigroup-defect report of the shipped toy student on the device vs on CPU."""
    from comfyui_salt.toy.text import ToyTextEncoder
    from comfyui_salt.training.distill_config import get_preset
    from comfyui_salt.training.distill_eval import student_defect
    from comfyui_salt.toy.shipped import load_toy_student
    model, _ = load_toy_student()
    cfg = get_preset("toy-salt", num_frames=6 if smoke else 12)
    caps = ["a red disc moving left on a dark background", "a blue bar moving up on a light background"]
    ctx = ToyTextEncoder().encode(caps)
    on_cpu = student_defect(model, cfg, ctx)
    on_dev = student_defect(model.to(device), cfg, ctx.to(device))
    rel = abs(on_dev - on_cpu) / max(abs(on_cpu), 1e-12)
    rep.check("semigroup defect (toy student, 8-step grid) vs CPU", rel <= 1e-3 and on_dev == on_dev,
              f"{device.type} {on_dev:.6f}, cpu {on_cpu:.6f}, relative difference {rel:.1e} (≤ 1e-03)")


# -- 2. speed ---------------------------------------------------------------------------------------
def random_model(cfg, device, dtype):
    """A WanModel with random N(0, 0.02) weights made on the device (no CPU init of 1.3B parameters)."""
    from comfyui_salt.salt_core.model import WanModel
    from comfyui_salt.salt_core.rope import RotaryTable
    with torch.device("meta"):
        model = WanModel(cfg)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    model.rope = RotaryTable(cfg.head_dim, cfg.rope_max_len, cfg.rope_theta)   # host tables, not parameters
    return model.to(dtype).eval()


def sdpa_kernel_used(fn):
    """Names of the attention kernels a call ran (from the profiler): flash, efficient, cudnn or math."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    found = sorted({kind for n in names for kind in ("flash", "efficient", "cudnn", "math")
                    if kind in n.lower() and ("attention" in n.lower() or "fmha" in n.lower() or "sdpa" in n.lower())})
    return "+".join(found) or "not seen"


def stream_once(model, noise, ctx, sig, policy, device):
    """(seconds to the first chunk, total seconds, peak bytes) of one 3-frame-chunk stream."""
    from comfyui_salt.salt_core.streaming import rollout_stream
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    first = None
    for _ in rollout_stream(model, noise, ctx, sig, policy=policy, chunk_frames=3):
        if first is None:
            sync(device)
            first = time.perf_counter() - start
    sync(device)
    total = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return first, total, peak


class Speed:
    """Shared state of the speed sections (the 1.3B model, inputs, the VAE's per-chunk time)."""

    def __init__(self, device, smoke):
        from comfyui_salt.salt_core.config import WanConfig, get_config
        self.device, self.smoke = device, smoke
        self.cfg = (WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, freq_dim=32, text_len=8)
                    if smoke else get_config("wan2.1-t2v-1.3b"))
        self.hw = (8, 8) if smoke else (60, 104)           # 832×480 video → 104×60 latent
        self.frames = 21                                    # 81 video frames
        self.dtype = torch.bfloat16
        self.model = None
        self.vae_chunk_s = self.vae_frame_s = None

    def build(self):
        self.model = random_model(self.cfg, self.device, self.dtype)
        g = torch.Generator().manual_seed(0)
        self.noise = torch.randn(1, self.cfg.in_dim, self.frames, *self.hw, generator=g).to(self.device, self.dtype)
        self.ctx = torch.randn(1, self.cfg.text_len, self.cfg.text_dim, generator=g).to(self.device, self.dtype)

    def policies(self):
        from comfyui_salt.salt_core import CachePolicy
        return {"Self Forcing full cache": CachePolicy.full(self.frames),
                "LongLive window 12 + sink 3": CachePolicy.sink(12, 3, relative_rope=True)}

    def streaming(self, rep, compiled: bool):
        from comfyui_salt.salt_core import get_sigmas_fewstep
        model = self.model
        if compiled:
            for block in model.blocks:   # regional compilation: one graph for 30 identical blocks
                block.compile(dynamic=True)
        video = 1 + VIDEO_FRAMES_PER_LATENT * (self.frames - 1)
        try:
            for name, policy in self.policies().items():
                for nfe in (4, 2):
                    sig = get_sigmas_fewstep(nfe)
                    with torch.no_grad():
                        stream_once(model, self.noise, self.ctx, sig, policy, self.device)   # warm-up / compile
                        runs = [stream_once(model, self.noise, self.ctx, sig, policy, self.device) for _ in range(2)]
                        kernel = sdpa_kernel_used(lambda: stream_once(model, self.noise[:, :, :3], self.ctx, sig,
                                                                      policy, self.device))
                    first = statistics.median(r[0] for r in runs)
                    total = statistics.median(r[1] for r in runs)
                    row = {"cache": name, "NFE": nfe, "compile": "yes" if compiled else "no",
                           "latent frames/s": f"{self.frames / total:.1f}", "video FPS (DiT)": f"{video / total:.1f}",
                           "first chunk s": f"{first:.3f}", "21 frames s": f"{total:.2f}",
                           "peak GiB": f"{max(r[2] for r in runs) / 2**30:.1f}", "SDPA": kernel}
                    if self.vae_chunk_s is not None:
                        e2e = total + video * self.vae_frame_s   # decode time per video frame × 81
                        row["VAE s/chunk"] = f"{self.vae_chunk_s:.3f}"
                        row["video FPS (DiT + VAE)"] = f"{video / e2e:.1f}"
                    else:
                        row["VAE s/chunk"] = rep.vae_status
                    rep.speed.append(row)
                    print(row, flush=True)
        finally:
            if compiled:
                for block in model.blocks:
                    block._compiled_call_impl = None   # back to eager for the sections after this one

    def memory_vs_length(self, rep):
        """LongLive's window: peak memory at 21 and 42 latent frames (2 NFE) must be the same."""
        from comfyui_salt.salt_core import get_sigmas_fewstep
        sig = get_sigmas_fewstep(2)
        policy = self.policies()["LongLive window 12 + sink 3"]
        long = torch.cat([self.noise, self.noise], 2)
        with torch.no_grad():
            peaks = [stream_once(self.model, n, self.ctx, sig, policy, self.device)[2] for n in (self.noise, long)]
        if self.device.type == "cuda":
            rep.check("window 12 + sink 3: peak memory constant in video length (21 vs 42 latent frames)",
                      peaks[1] <= peaks[0] * 1.02 + 64 * 2**20,
                      f"{peaks[0] / 2**30:.2f} vs {peaks[1] / 2**30:.2f} GiB")

    def vae(self, rep):
        """Decode one 3-latent-frame chunk with diffusers' AutoencoderKLWan (Wan 2.1 VAE config, random weights)."""
        if not rep.diffusers_ok:
            return
        from diffusers import AutoencoderKLWan
        kw = dict(base_dim=8, z_dim=self.cfg.in_dim) if self.smoke else {}
        with torch.device(self.device):
            vae = AutoencoderKLWan(**kw).to(self.dtype).eval()
        z = self.noise[:, :, :3]
        times = []
        with torch.no_grad():
            for _ in range(3):
                sync(self.device)
                start = time.perf_counter()
                out = vae.decode(z, return_dict=False)[0]
                sync(self.device)
                times.append(time.perf_counter() - start)
        self.vae_chunk_s = statistics.median(times[1:])
        self.vae_frame_s = self.vae_chunk_s / out.shape[2]
        rep.speed.append({"cache": "VAE decode only", "NFE": "—", "compile": "no",
                          "VAE s/chunk": f"{self.vae_chunk_s:.3f}",
                          "detail": f"3 latent → {out.shape[2]} video frames {out.shape[3]}×{out.shape[4]}, decoded "
                                    f"alone, bf16; end-to-end FPS adds {self.vae_frame_s * 1e3:.1f} ms per video frame"})
        del vae

    def bidirectional(self, rep):
        """The bidirectional 4-step sample of all 21 latent frames (81 video frames) at once."""
        from comfyui_salt.salt_core import FlowDenoiser, get_sigmas_fewstep, sample_fewstep_stochastic
        den = FlowDenoiser(self.model, self.ctx)
        sig = get_sigmas_fewstep(4)
        times = []
        with torch.no_grad():
            for _ in range(2):
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                sync(self.device)
                start = time.perf_counter()
                sample_fewstep_stochastic(den, self.noise, sig, extra_args={"seed": 0}, disable=True)
                sync(self.device)
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else 0
        rep.speed.append({"cache": "bidirectional (no cache)", "NFE": 4, "compile": "no",
                          "21 frames s": f"{times[-1]:.2f}", "peak GiB": f"{peak:.1f}",
                          "video FPS (DiT)": f"{(1 + VIDEO_FRAMES_PER_LATENT * (self.frames - 1)) / times[-1]:.1f}",
                          "detail": "first run (warm-up) " f"{times[0]:.2f} s"})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", help="output folder for gpu_check.md and gpu_check.json")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (CI)")
    ap.add_argument("--fetch-wheels", action="store_true", help="download the diffusers wheel into .whl/ and exit")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--comfyui", help="a ComfyUI tree with its packages: adds the ComfyUI section (gpu_comfy.py)")
    ap.add_argument("--total-s", type=float, default=TOTAL_BUDGET_S,
                    help=f"seconds for all sections together (default {TOTAL_BUDGET_S}); later sections are cut first")
    args = ap.parse_args()
    if not 10 <= args.total_s <= 3600:
        ap.error(f"--total-s {args.total_s}: expected 10 to 3600 seconds (a lent machine runs a command 600 s at most)")
    if args.fetch_wheels:
        return fetch_wheels()
    if not args.out:
        ap.error("give an output folder (or --fetch-wheels)")
    package = import_package()
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --smoke on a CPU")
    torch.manual_seed(0)
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    rep = Report(args.out, args.smoke, args.total_s)
    rep.diffusers_ok, rep.vae_status = ensure_diffusers()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (f"{name}; package {pathlib.Path(package.__file__).parent}; torch {torch.__version__}, Python {sys.version.split()[0]}; {rep.vae_status}; "
              f"SDPA backends enabled: flash {torch.backends.cuda.flash_sdp_enabled()}, "
              f"efficient {torch.backends.cuda.mem_efficient_sdp_enabled()}, "
              f"cudnn {torch.backends.cuda.cudnn_sdp_enabled()}")
    print(header, flush=True)
    scale = 1 if not args.smoke else 0.25
    with rep.section("correctness: forwards, caches, samplers, stream_video", 90 * scale + 30) as go:
        if go:
            correctness(rep, device, args.smoke)
    with rep.section("correctness: 3-update toy distillation (DMD, Salt)", 60 * scale + 30) as go:
        if go:
            distillation(rep, device, args.smoke)
    with rep.section("correctness: semigroup defect", 30) as go:
        if go:
            semigroup(rep, device, args.smoke)
    with rep.section("FSDP2: one-rank sharded distillation, teacher offloaded", 60 * scale + 180) as go:
        if go:
            fsdp_one_gpu(rep, device, args.smoke)
    if args.comfyui:
        import gpu_comfy                          # the sibling script (sys.path[0] is this folder)
        gpu_comfy.import_comfy(pathlib.Path(args.comfyui).resolve(), cpu=args.smoke)
        with rep.section("ComfyUI: native MODEL + LoRA under default flags", 150) as go:
            if go:
                gpu_comfy.comfy_dynamic_vram(rep, args.smoke, pathlib.Path(args.comfyui))
        with rep.section("ComfyUI: live stream decoded chunk by chunk", 90) as go:
            if go:
                gpu_comfy.comfy_live(rep, args.smoke, pathlib.Path(args.comfyui))
    speed = Speed(device, args.smoke)
    with rep.section("speed: build Wan 1.3B (random bf16)", 60) as go:
        if go:
            speed.build()
    if speed.model is not None:
        with rep.section("speed: VAE decode per chunk", 45) as go:
            if go:
                speed.vae(rep)
        with rep.section("speed: streaming, eager", 100) as go:
            if go:
                speed.streaming(rep, compiled=False)
        with rep.section("speed: peak memory vs video length", 20) as go:
            if go:
                speed.memory_vs_length(rep)
        with rep.section("speed: bidirectional 4-step sample", 45) as go:
            if go:
                speed.bidirectional(rep)
        if args.smoke or args.no_compile:
            rep.sections.append({"section": "speed: streaming, torch.compile", "status": "skipped "
                                 + ("(smoke: no C++ toolchain promised on CI)" if args.smoke else "(--no-compile)"),
                                 "seconds": 0.0})
        else:
            with rep.section("speed: streaming, torch.compile", 150) as go:
                if go:
                    speed.streaming(rep, compiled=True)
    rep.write(header)
    return 0 if all(c["passed"] for c in rep.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
