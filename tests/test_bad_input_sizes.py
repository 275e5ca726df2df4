"""Bad input, class 2: sizes are checked before memory is taken; metadata is validated like user input.

Each case asks for more memory than the limit (or feeds broken metadata) and checks the refusal
comes before the allocation — the process does not grow — with the estimate, the limit and the fix.
"""
import json
import resource

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_salt.salt_core.config import WanConfig, get_config
from comfyui_salt.salt_core.kv_cache import CachePolicy
from comfyui_salt.salt_core.model import build_model
from comfyui_salt.salt_core.schedules import get_sigmas_fewstep
from comfyui_salt.salt_core.streaming import stream_memory_bytes, stream_video
from comfyui_salt.salt_core.validate import kv_cache_bytes
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.weights.files import load_model, read_checkpoint, save_model


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def toy():
    return build_model("toy", seed=0).eval()


def rewrite_metadata(path, **metadata):
    """Rewrite a safetensors file with the same tensors and the given metadata (a hostile or damaged header)."""
    save_file(load_file(str(path)), str(path), metadata={"salt_layout": "wan", **metadata})


@pytest.fixture
def toy_file(tmp_path):
    path = tmp_path / "toy.safetensors"
    save_model(build_model("toy", seed=0), path)
    return path


# -- RoPE tables from metadata ----------------------------------------------------------------------------
@pytest.mark.parametrize("max_len", [2 * 10**7, 10**9, 10**12])
def test_a_huge_rope_max_len_in_a_files_metadata_is_refused_before_any_table_is_built(toy_file, max_len):
    cfg = json.loads(get_config("toy").to_json())
    cfg["rope_max_len"] = max_len
    rewrite_metadata(toy_file, salt_config=json.dumps(cfg))
    before = peak_rss_mib()
    with pytest.raises(MemoryError, match=r"toy\.safetensors.*salt_config.*rope_max_len=\d+ needs about .*GiB.*"
                                          r"0\.25 GiB.*1024"):
        load_model(toy_file)
    assert peak_rss_mib() - before < 200, "the RoPE table was allocated before the refusal"


@pytest.mark.parametrize("max_len", [2 * 10**7, 10**9])
def test_a_huge_rope_max_len_is_refused_for_a_config_built_in_python(max_len):
    with pytest.raises(MemoryError, match="rope_max_len"):
        WanConfig(rope_max_len=max_len)


@pytest.mark.parametrize("field, value", [("num_layers", 8000), ("text_len", 10**7)])
def test_a_huge_layer_count_or_text_length_in_a_files_metadata_is_refused_before_a_model_is_built(toy_file, field,
                                                                                                    value):
    """A checker builds the model on the meta device before it compares a weight: 8,000 layers took 23 s and
    +519 MiB before the refusal (about 125 KiB a layer: a million would end the server)."""
    cfg = json.loads(get_config("toy").to_json())
    cfg[field] = value
    rewrite_metadata(toy_file, salt_config=json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"toy\.safetensors.*{field}={value}; expected an integer in \[1, \d+\]"):
        load_model(toy_file)


def test_weights_past_fp16s_range_are_refused_when_loaded_in_fp16_and_load_in_bf16(tmp_path):
    """NaN/Inf were checked before the cast to the asked dtype: a bf16 weight of 1e5 loaded in fp16 became Inf."""
    model = build_model("toy", seed=0).to(torch.bfloat16)
    with torch.no_grad():
        model.head.head.weight[0, 0] = 1e5
    path = tmp_path / "big.safetensors"
    save_model(model, path)
    with pytest.raises(ValueError, match=r"1 tensor\(s\) hold values past float16's range \(±65504\), e.g. "
                                         r"\['head\.head\.weight'\].*load in bf16 or fp32"):
        load_model(path, dtype=torch.float16)
    loaded, _ = load_model(path, dtype=torch.bfloat16)
    assert torch.isfinite(loaded.head.head.weight).all()


@pytest.mark.parametrize("scale_shape", [(), (-1, 1)], ids=["scalar", "per-row"])
def test_scaled_fp8_weights_past_fp16s_range_name_the_range_not_a_broken_file(tmp_path, scale_shape):
    """Scaled fp8 was dequantized straight into fp16: a weight·scale past 65,504 became Inf there and was reported
    as a broken file to download again. Now the range and the dtypes that hold it are named; bf16 loads it."""
    from safetensors.torch import save_file
    from comfyui_salt.salt_core.layouts import scaled_weight
    sd = build_model("toy", seed=0).state_dict()
    out = {}
    for k, v in sd.items():
        key = "model.diffusion_model." + k
        if v.ndim == 2 and k.endswith(".weight") and "blocks" in k:
            scale = v.abs().amax(dim=1, keepdim=True) / 200.0 if scale_shape else v.abs().max() / 200.0
            out[key] = (v / scale).to(torch.float8_e4m3fn)
            out[key[:-len(".weight")] + ".scale_weight"] = scale * (1e7 if k == "blocks.0.ffn.0.weight" else 1)
        else:
            out[key] = v
    out["model.diffusion_model.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "scaled.safetensors"
    save_file(out, str(path))
    with pytest.raises(ValueError, match=r"'model\.diffusion_model\.blocks\.0\.ffn\.0\.weight': w·scale reaches .*, "
                                         r"past float16's range \(±65504\): cast, it would be Inf; load in bf16 or "
                                         r"fp32"):
        load_model(path, dtype=torch.float16)
    loaded, _ = load_model(path, dtype=torch.bfloat16)
    assert torch.isfinite(loaded.blocks[0].ffn[0].weight).all()
    w, s = out["model.diffusion_model.blocks.1.ffn.0.weight"], out["model.diffusion_model.blocks.1.ffn.0.scale_weight"]
    assert torch.equal(scaled_weight(w, s, torch.float16), (w.float() * s.float()).to(torch.float16))   # in range
    one = torch.ones(2, 2, dtype=torch.float8_e4m3fn)   # fp16 rounds below 65,520 to its largest value: no overflow
    assert scaled_weight(one, torch.tensor(65510.0), torch.float16).eq(65504).all()
    with pytest.raises(OverflowError, match=r"reaches 65520, past float16's range"):
        scaled_weight(one, torch.tensor(65520.0), torch.float16)


@pytest.mark.parametrize("field", ["salt_config", "salt_aliases"])
def test_metadata_json_nested_past_the_parsers_depth_is_refused_naming_the_field(toy_file, field):
    """`[[[[…` 100,000 deep raised RecursionError, which is not a ValueError: it escaped the loader node's wrapping
    that names the file and the fix."""
    rewrite_metadata(toy_file, **{field: "[" * 100_000})
    with pytest.raises(ValueError, match=rf"{field}.*not valid JSON \(RecursionError"):
        load_model(toy_file)


def test_an_alias_in_the_metadata_never_replaces_a_tensor_the_file_stores(toy_file):
    """salt_aliases maps names save_model did not store to ones it did; one naming a stored tensor silently made q
    a copy of k."""
    rewrite_metadata(toy_file, salt_aliases=json.dumps({"blocks.0.self_attn.q.weight": "blocks.0.self_attn.k.weight"}))
    with pytest.raises(ValueError, match=r"would replace tensors the file stores: "
                                         r"\['blocks\.0\.self_attn\.q\.weight'\]"):
        load_model(toy_file)


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_at_a_model_path_is_refused_without_being_opened(tmp_path):
    """safe_open on a FIFO waits for a writer for good: the metadata readers behind SaltDistill's publish check,
    `export --out` and the loader node's mode check now refuse it first (run in a subprocess with a timeout)."""
    import os
    import subprocess
    import sys
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    code = ("import sys; from comfyui_salt.weights.files import check_output, file_metadata, read_metadata, "
            "salt_wrote, safetensors_header\n"
            "p = sys.argv[1]\n"
            "assert not salt_wrote(p) and file_metadata(p) == {} and safetensors_header(p) is None\n"
            "try:\n    read_metadata(p)\nexcept ValueError as e:\n    assert 'not a regular file' in str(e)\n"
            "try:\n    check_output(p, '--out')\nexcept ValueError as e:\n    print('refused:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "refused:" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("index", [4000, 10**12])
def test_one_stray_block_key_in_a_foreign_file_is_refused_before_a_model_of_that_depth_is_built(tmp_path, index):
    """A file without our metadata is sized from its keys: one 16-byte `blocks.4000.*` tensor made a 4,001-block
    model on the meta device (12 s, +499 MiB) before the stray key was reported. Blocks must be numbered 0..N-1."""
    from comfyui_salt.salt_core.layouts import LayoutError, infer_config
    sd = build_model("tiny-hd128", seed=0).state_dict()
    sd[f"blocks.{index}.norm3.weight"] = torch.zeros(4)
    with pytest.raises(LayoutError, match=rf"blocks are numbered 0\.\.{index} with {index - 2} missing \(first "
                                          r"\[2, 3\]\); expected blocks 0\.\.N-1"):
        infer_config(sd)
    path = tmp_path / "stray.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError, match="blocks are numbered"):
        load_model(path)


# -- a model file's host memory, before it is read ------------------------------------------------------------
LOAD_PEAK = r"""
import json, sys, torch
from comfyui_salt.weights.files import load_model
def rss(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
load_model(sys.argv[1])          # the first load's one-off costs (imports, allocator pools) before the measurement
before = rss("VmRSS")
model, _ = load_model(sys.argv[2], dtype=getattr(torch, sys.argv[3]), keep_fp8=sys.argv[4] == "1")
print(json.dumps(rss("VmHWM") - before))
"""


def big_file(tmp_path, stored: str):
    """A 3-block Wan of about 30 M parameters whose block linear weights are stored as `stored`: a dtype name, "fp8"
    (e4m3fn), "scaled-fp8" (ComfyUI layout: fp8 weight / scale, its scale_weight and scale_input, the marker) or
    "release-<dtype>" (a Self Forcing release of that dtype: generator_ema, generator an alias of it); "pt-…": the
    same as a torch file; "pt-longlive-<dtype>": a LongLive release (its block linear weights of that dtype, the rest
    float32, and a rank-32 LoRA of every block linear layer in `generator_lora`)."""
    from safetensors.torch import save_file
    cfg = WanConfig(dim=768, ffn_dim=3072, num_heads=6, num_layers=3, text_dim=64, freq_dim=64)
    torch_file = stored.startswith("pt-")
    stored = stored.removeprefix("pt-")
    path = tmp_path / f"big-{stored}.{'pt' if torch_file else 'safetensors'}"
    linear = lambda k, v: v.ndim == 2 and k.endswith(".weight") and "blocks" in k
    sd = build_model(cfg, seed=0).state_dict()
    if stored == "scaled-fp8":
        out = {}
        for k, v in sd.items():
            key = "model.diffusion_model." + k
            if linear(k, v):
                scale = torch.tensor(v.abs().max().item() / 200.0)
                out[key] = (v / scale).to(torch.float8_e4m3fn)
                out[key[:-len(".weight")] + ".scale_weight"] = scale
                out[key[:-len(".weight")] + ".scale_input"] = torch.tensor(1.0)
            else:
                out[key] = v
        out["model.diffusion_model.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
        torch.save(out, path) if torch_file else save_file(out, str(path))
        return path
    if stored.startswith("longlive-"):
        dtype = getattr(torch, stored.removeprefix("longlive-"))
        sd = {k: v.to(dtype) if linear(k, v) else v for k, v in sd.items()}
        lora = {}
        for k, v in sd.items():
            if linear(k, v):
                lora[f"base_model.model.{k[:-len('.weight')]}.lora_A.weight"] = torch.randn(32, v.shape[1]).to(dtype)
                lora[f"base_model.model.{k[:-len('.weight')]}.lora_B.weight"] = torch.randn(v.shape[0], 32).to(dtype)
        from comfyui_salt.salt_core import layouts
        torch.save({**layouts.from_wan_state_dict(sd, "self_forcing"), layouts.LORA_KEY: lora}, path)
        return path
    dtype = getattr(torch, "float8_e4m3fn" if stored == "fp8" else stored.removeprefix("release-"))
    save_model({k: v.to(dtype) if linear(k, v) else v for k, v in sd.items()}, path, config=cfg,
               layout="self_forcing" if stored.startswith("release-") else "wan")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("stored, dtype, keep_fp8", [
    ("float32", "float32", False), ("bfloat16", "float32", False), ("fp8", "bfloat16", True), ("fp8", "float32", False),
    ("scaled-fp8", "bfloat16", True), ("release-bfloat16", "float32", False), ("release-float32", "bfloat16", False),
    ("pt-float32", "bfloat16", False), ("pt-bfloat16", "float32", False), ("pt-release-float32", "bfloat16", False),
    ("pt-release-float32", "float32", False), ("pt-scaled-fp8", "bfloat16", True), ("pt-scaled-fp8", "float32", False),
    ("pt-longlive-bfloat16", "bfloat16", False), ("pt-longlive-bfloat16", "float32", False)])
def test_the_host_bytes_a_load_takes_are_those_measured_in_a_fresh_process(tmp_path, toy_file, stored, dtype,
                                                                           keep_fp8):
    """The estimate checked before a file is read (load_host_bytes) against the peak resident memory a fresh process
    actually gains loading it: what was measured (to a few MiB), and not more than a quarter above it (an estimate
    too cautious would refuse loads that fit). Resident memory counts the mapped file's pages too: those of the
    tensors not kept as stored (cast, dequantized, dropped) are left out (the kernel drops them under pressure; the
    kept ones are the weights). Scaled fp8 is dequantized whatever keep_fp8; a release loads one head."""
    import subprocess
    import sys
    from comfyui_salt.weights.files import load_host_bytes
    path = big_file(tmp_path, stored)
    estimate = load_host_bytes(path, getattr(torch, dtype), keep_fp8)
    out = subprocess.run([sys.executable, "-c", LOAD_PEAK, str(toy_file), str(path), dtype, "1" if keep_fp8 else "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    kept = {getattr(torch, dtype)} | ({torch.float8_e4m3fn} if keep_fp8 and stored == "fp8" else set())
    if path.suffix == ".safetensors":   # a torch file is read into the process's own memory, not mapped
        measured -= sum(t.numel() * t.element_size() for t in load_file(str(path)).values() if t.dtype not in kept)
    assert measured > 24 << 20, f"the load measured {measured} bytes: the model is too small to measure"
    # beside the weights: the modules' own objects, the RoPE table and the allocator's pools, a few MiB whatever the
    # model's size (fp8 kept, bfloat16 compute: 44.5–45.3 MiB measured over runs on a busy 2-core machine against an
    # estimate of 36.5, so 8 MiB was a coin toss; 10 holds it)
    assert measured - (10 << 20) <= estimate <= 1.25 * measured, (estimate / 2**20, measured / 2**20)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_torch_file_of_expanded_tensors_is_refused_before_it_is_cast(tmp_path, zipped):
    """A torch file was estimated at its size on disk: a 37 KB .pt of stride-0 `expand`ed tensors with 1.3B-wide
    shapes cast to 406 MiB (a 14B-shaped one: about 28 GB) past the host check. Its pickle, read memory-mapped,
    shows the shapes: such views are refused. Torch's old (non-zip) format cannot be mapped: such a file passed the
    estimate at its size and loaded, cast to full size; it is refused once read, before anything is computed."""
    from comfyui_salt.weights.files import load_host_bytes
    sd = build_model("toy", seed=0).state_dict()
    fake = tmp_path / "expand.pt"
    torch.save({k: torch.zeros((1,) * v.ndim).expand(v.shape) for k, v in sd.items()}, fake,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(ValueError, match=r"expand\.pt.*tensor\(s\) are views holding fewer values than their "
                                         r"shapes"):                      # (it loaded, cast to full size, before)
        load_model(fake, dtype=torch.bfloat16)
    release = tmp_path / "release.pt"
    torch.save({"generator": {k: v.expand(2, *v.shape) for k, v in sd.items()}}, release,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(ValueError, match=r"views holding fewer values"):   # in a release's head too
        load_model(release, dtype=torch.bfloat16)
    # entries giving the head's dotted names again (ignored by the loader) hid the head's views from the check
    collide = tmp_path / "collide.pt"
    torch.save({"generator": {f"model.{k}": v.expand(2, *v.shape) for k, v in sd.items()},
                **{f"generator.model.{k}": torch.zeros(1) for k in sd}}, collide, _use_new_zipfile_serialization=zipped)
    with pytest.raises(ValueError, match=r"views holding fewer values"):
        load_model(collide, dtype=torch.bfloat16)
    sparse = tmp_path / "sparse.pt"        # no storage to measure: refused by name, not a NotImplementedError
    torch.save({k: v.to_sparse() if k == "head.head.weight" else v for k, v in sd.items()}, sparse,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(ValueError, match=r"sparse\.pt.*1 tensor\(s\) are not dense \(e\.g\. \['head\.head\.weight'\]"):
        load_model(sparse)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_torch_files_estimate_is_its_peak_not_its_size_plus_every_cast(tmp_path, device):
    """The torch-file estimate added the loaded head's cast to the file size (1.26-1.46× the measured peak, past the
    quarter allowed: real .pt releases refused). load_model reads the file whole, drops the other heads, then casts
    one tensor at a time, each original freed as its cast replaces it: max(file, head as stored or as cast + one
    cast tensor) on the host; off the host (`device`: the casts go there) the file alone. The measured rows are in
    test_the_host_bytes_a_load_takes_are_those_measured_in_a_fresh_process."""
    from comfyui_salt.weights.files import load_host_bytes
    sd = build_model("toy", seed=0).state_dict()
    head = sum(t.numel() for t in sd.values())
    largest = max(t.numel() for t in sd.values())
    real = tmp_path / "release.pt"
    save_model(build_model("toy", seed=0), real, layout="self_forcing")     # two heads of float32 weights
    size = real.stat().st_size
    on_host = device == "cpu"
    expected = max(size, 4 * head + 2 * largest) if on_host else size
    assert load_host_bytes(real, torch.bfloat16, device=device) == expected
    assert load_host_bytes(real, torch.float32, device=device) == size                    # kept as read: the file
    flat = tmp_path / "flat.pt"
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, flat)
    expected = max(flat.stat().st_size, 4 * head + 4 * largest) if on_host else flat.stat().st_size
    assert load_host_bytes(flat, torch.float32, device=device) == expected              # widened: the cast head


def test_the_header_counts_each_tensor_at_the_bytes_its_file_stores_for_every_dtype(tmp_path):
    """safetensors_header's bytes per tensor (shape × item size by dtype code) against the span the file's own
    header gives it (data_offsets, read here from the raw JSON), for every dtype torch writes: the unsigned and
    complex ones counted 1 byte per element (8× low for U64) until their codes were listed."""
    import struct
    from comfyui_salt.weights.files import safetensors_header
    dtypes = [d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                          torch.float8_e5m2, getattr(torch, "float8_e8m0fnu", None), torch.complex64, torch.int64,
                          torch.int32, torch.int16, torch.int8, torch.uint64, torch.uint32, torch.uint16, torch.uint8,
                          torch.bool) if d is not None]
    path = tmp_path / "every.safetensors"
    save_file({str(d): torch.zeros(3, 5, dtype=d) for d in dtypes}, str(path))
    raw = path.read_bytes()
    spans = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    entries, _ = safetensors_header(str(path))
    assert len(entries) == len(dtypes)
    for name, (code, shape, stored) in entries.items():
        start, end = spans[name]["data_offsets"]
        assert stored == end - start, (name, code, stored, end - start)


def test_off_the_host_a_load_holds_only_what_it_dequantizes_there(tmp_path):
    """With a GPU offload device (ComfyUI's --gpu-only / --highvram) each tensor goes from the mapped file to the GPU;
    scaled-fp8 weights are dequantized on the host first, into the compute dtype through one float32 chunk of
    rows (1 MiB here: a row of this model is 3 KiB to 12 KiB)."""
    from comfyui_salt.weights.files import load_host_bytes
    plain, scaled = big_file(tmp_path, "bfloat16"), big_file(tmp_path, "scaled-fp8")
    assert load_host_bytes(plain, torch.bfloat16, device="cuda:0") == 0
    weights = [t for k, t in load_file(str(scaled)).items() if k.endswith(".weight") and t.dtype == torch.float8_e4m3fn]
    assert max(t.numel() for t in weights) > 2 * (1 << 18)                       # each larger than a chunk
    want = sum(2 * t.numel() for t in weights) + (1 << 20)
    assert load_host_bytes(scaled, torch.bfloat16, keep_fp8=True, device="cuda:0") == want


@pytest.mark.parametrize("header", [
    b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,Infinity]}}',          # OverflowError in int()
    b"[" * 100000 + b"]" * 100000,                                              # RecursionError in json
    b'{"a":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}',  # past the file's end
    b'{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}',
    b'{"__metadata__":[1],"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    b'{"a":{"dtype":7,"shape":[2],"data_offsets":[8,0]}}',
])
def test_a_hostile_header_is_reported_as_a_damaged_file_not_as_memory_or_a_crash(tmp_path, header):
    """The size check reads the header before safetensors does: a header that is not one leaves the file to
    read_checkpoint, which names it damaged (never an OverflowError, a RecursionError or a huge 'needs about')."""
    from comfyui_salt.weights.files import load_host_bytes
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    assert load_host_bytes(path) == path.stat().st_size
    with pytest.raises(ValueError, match="not a readable safetensors file.*truncated or corrupt"):
        load_model(path)


def test_a_file_the_host_cannot_hold_is_refused_before_it_is_read(toy_file, monkeypatch):
    import comfyui_salt.weights.files as files
    need = files.load_host_bytes(toy_file)
    monkeypatch.setattr(files, "available_memory", lambda device, swap=False: need if swap else 0)
    assert load_model(toy_file)[0] is not None   # exactly enough, counted with the host's free swap
    monkeypatch.setattr(files, "available_memory", lambda device, swap=False: need - 1)
    monkeypatch.setattr(files, "read_checkpoint", lambda *a: pytest.fail("the file was read before the refusal"))
    with pytest.raises(files.HostMemoryError, match=r"load_model: reading '.*toy\.safetensors' in float32 needs "
                                                    r"about .*MiB.*host's free memory and swap.*bf16 or an unscaled fp8"):
        load_model(toy_file)


@pytest.mark.parametrize("swap", [False, True])
def test_the_hosts_free_memory_is_mem_available_and_with_swap_swap_free_too(tmp_path, monkeypatch, swap):
    import comfyui_salt.salt_core.validate as rules
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   5000000 kB\n"
                       "SwapTotal:       8000000 kB\nSwapFree:        3000000 kB\n")
    monkeypatch.setattr(rules, "MEMINFO", str(meminfo))
    monkeypatch.setattr(rules, "SELF_CGROUP", str(tmp_path / "no_cgroup"))   # this machine's limits left out
    assert rules.available_memory("cpu", swap=swap) == (5000000 + 3000000 * swap) * 1024


GIB = 1 << 30


def fake_host(tmp_path, monkeypatch, self_cgroup: str, files: dict):
    """A host of 20 GiB MemAvailable and 10 GiB SwapFree whose /proc/self/cgroup says `self_cgroup` and whose cgroup
    mount holds `files` ({relative path: text})."""
    import comfyui_salt.salt_core.validate as rules
    (tmp_path / "meminfo").write_text(f"MemAvailable: {20 * GIB // 1024} kB\nSwapFree: {10 * GIB // 1024} kB\n")
    (tmp_path / "self_cgroup").write_text(self_cgroup)
    for name, text in files.items():
        (tmp_path / "cg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cg" / name).write_text(text)
    (tmp_path / "cg").mkdir(exist_ok=True)
    monkeypatch.setattr(rules, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(rules, "SELF_CGROUP", str(tmp_path / "self_cgroup"))
    monkeypatch.setattr(rules, "CGROUP_ROOT", str(tmp_path / "cg"))
    return rules


@pytest.mark.parametrize("self_cgroup, files, memory, swap", [
    # a container on cgroup v2: 8 GiB limit, 5 GiB charged of which 2 GiB page cache; 2 GiB of swap, 0.5 used
    ("0::/\n", {"memory.max": str(8 * GIB), "memory.current": str(5 * GIB),
                "memory.stat": f"anon {3 * GIB}\nactive_file {GIB}\ninactive_file {GIB}\n",
                "memory.swap.max": str(2 * GIB), "memory.swap.current": str(GIB // 2)}, 5 * GIB, 1.5 * GIB),
    # a limit on a parent folder binds the child (systemd slices); "max" is none
    ("0::/a/b\n", {"a/memory.max": str(4 * GIB), "a/memory.current": str(GIB), "a/b/memory.max": "max",
                   "a/b/memory.current": str(GIB)}, 3 * GIB, 10 * GIB),
    # cgroup v1 (Docker on older hosts): memory 6 GiB, 4 charged, 1 of it cache; memory + swap 7 GiB, 4.5 charged
    ("4:memory:/docker/x\n0::/\n", {"memory/memory.limit_in_bytes": str(6 * GIB),
                                     "memory/memory.usage_in_bytes": str(4 * GIB),
                                     "memory/memory.stat": f"cache {GIB}\ntotal_inactive_file {GIB}\n",
                                     "memory/memory.memsw.limit_in_bytes": str(7 * GIB),
                                     "memory/memory.memsw.usage_in_bytes": str(9 * GIB // 2)}, 3 * GIB, GIB // 2),
    # v1 without a limit writes 2^63 rounded down to a page
    ("4:memory:/\n", {"memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": "5"},
     20 * GIB, 10 * GIB),
    ("", {}, 20 * GIB, 10 * GIB),                                          # no cgroup file at all: the host's
])
def test_a_containers_memory_limit_bounds_the_free_memory_page_cache_left_out(tmp_path, monkeypatch, self_cgroup,
                                                                              files, memory, swap):
    """MemAvailable is the whole host's; inside a container the cgroup kills at its own limit. What the cgroups
    leave (limit less charged, less the page cache the kernel reclaims first), the tightest of them, bounds it."""
    rules = fake_host(tmp_path, monkeypatch, self_cgroup, files)
    assert rules.available_memory("cpu") == memory
    assert rules.available_memory("cpu", swap=True) == memory + swap
    limited = files.get("memory.max") or files.get("a/memory.max") or files.get("memory/memory.limit_in_bytes", "")
    assert (rules.cgroup_room()[0] is None) == (memory == 20 * GIB)   # the host's figure: no cgroup limits it
    assert rules.cgroup_room()[0] in (None, memory) and (limited != "") >= (rules.cgroup_room()[0] is not None)


# -- metadata validated like user input --------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    (dict(num_heads=0), "num_heads=0"),
    (dict(num_heads=-4), "num_heads=-4"),
    (dict(num_heads=3), "not divisible by num_heads=3"),
    (dict(dim=0), "dim=0"),
    (dict(num_layers=-1), "num_layers=-1"),
    (dict(patch_size=[1, 0, 4]), "patch_size=0"),
    (dict(patch_size=[1, 4]), "patch_size=[1, 4]"),
    (dict(text_len=0), "text_len=0"),
    (dict(bogus_field=1), "unknown keys ['bogus_field']"),
    (dict(dim="wide"), "dim='wide'"),
])
def test_bad_numbers_in_a_files_config_metadata_name_the_field_and_the_file(toy_file, change, words):
    cfg = {**json.loads(get_config("toy").to_json()), **change}
    rewrite_metadata(toy_file, salt_config=json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        load_model(toy_file)
    assert "toy.safetensors" in str(e.value) and "salt_config" in str(e.value) and words in str(e.value), e.value


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "null", "\"dim\""])
def test_a_config_metadata_that_is_not_a_json_object_names_the_field_and_the_file(toy_file, text):
    rewrite_metadata(toy_file, salt_config=text)
    with pytest.raises(ValueError, match=r"toy\.safetensors.*salt_config"):
        load_model(toy_file)


@pytest.mark.parametrize("aliases, words", [
    ("{broken", "not valid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"alias.weight": "no.such.tensor"}', "no.such.tensor"),
    ('{"alias.weight": 3}', "expected a JSON object"),
])
def test_a_broken_alias_table_names_the_field_and_the_file(toy_file, aliases, words):
    rewrite_metadata(toy_file, salt_aliases=aliases, salt_config=get_config("toy").to_json())
    with pytest.raises(ValueError) as e:
        read_checkpoint(toy_file)
    assert "toy.safetensors" in str(e.value) and "salt_aliases" in str(e.value) and words in str(e.value), e.value


def test_num_heads_zero_passed_by_the_caller_is_an_error_not_a_division(toy_file):
    with pytest.raises(ValueError, match="num_heads=0"):
        load_model(toy_file, num_heads=0)


# -- KV caches and streaming requests ------------------------------------------------------------------------
def test_the_cache_estimate_matches_what_a_cache_allocates(toy):
    cache = toy.new_cache(2, CachePolicy.rolling(6), (16, 16))
    actual = cache.k.numel() * cache.k.element_size() * 2
    assert kv_cache_bytes(4, 2, 4, 32, 16, 6) == actual


@pytest.mark.parametrize("limit", [0, 1, 10_000, 190_000])
def test_a_cache_over_an_explicit_memory_limit_is_refused_with_the_estimate_and_the_fix(toy, limit):
    # the rolling 6-frame cache of batch 2 on 16 tokens/frame takes 196,608 bytes
    with pytest.raises(MemoryError, match=r"needs about .* \(memory_limit\); use fewer frames"):
        toy.new_cache(2, CachePolicy.rolling(6), (16, 16), memory_limit=limit)


@pytest.mark.parametrize("hw, batch", [((4096, 4096), 64), ((8192, 8192), 8), ((2048, 2048), 1024)])
def test_a_cache_larger_than_free_memory_is_refused_before_allocating(toy, hw, batch):
    before = peak_rss_mib()
    with pytest.raises(MemoryError, match=r"free memory on cpu"):
        toy.new_cache(batch, CachePolicy.full(21), hw)
    assert peak_rss_mib() - before < 200


def test_stream_video_passes_its_memory_limit_to_the_cache(toy):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 3, 3, 16, 16, generator=g)
    ctx = torch.randn(1, 8, 32, generator=g)
    with pytest.raises(MemoryError, match="memory_limit"):
        stream_video(toy, noise, ctx, get_sigmas_fewstep(2, 3.0), chunk_frames=3, policy=CachePolicy.full(3),
                     memory_limit=1000)


def test_the_streaming_estimate_grows_with_size_batch_and_guidance():
    cfg = get_config("wan2.1-t2v-1.3b")
    small = stream_memory_bytes(cfg, 1, 21, (60, 104), CachePolicy.full(21), 3)
    assert stream_memory_bytes(cfg, 1, 21, (512, 512), CachePolicy.full(21), 3) > 13 * small
    assert stream_memory_bytes(cfg, 2, 21, (60, 104), CachePolicy.full(21), 3) > 1.9 * small
    assert stream_memory_bytes(cfg, 1, 21, (60, 104), CachePolicy.full(21), 3, cfg_scale=3.0) > 1.5 * small
    # a 4096² Wan stream (512² latent): the KV cache alone is ~tens of GiB
    assert stream_memory_bytes(cfg, 1, 21, (512, 512), CachePolicy.full(21), 3) > 13 * 2**30


def test_the_streaming_estimate_without_a_policy_leaves_out_exactly_the_cache_a_policy_allocates(toy):
    """policy None (a bidirectional forward of the whole clip): the estimate less the bytes of the KV cache the
    model really allocates for that policy."""
    policy = CachePolicy.full(12)
    cache = toy.new_cache(1, policy, (16, 16))
    held = sum(t.numel() * t.element_size() for t in (cache.k, cache.v))
    with_cache = stream_memory_bytes(toy.cfg, 1, 12, (16, 16), policy, 12)
    assert with_cache - stream_memory_bytes(toy.cfg, 1, 12, (16, 16), None, 12) == held > 0


# -- distillation size overrides --------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["toy-dmd", "toy-bidir-dmd"])
@pytest.mark.parametrize("num_frames", [3 * 10**5, 3 * 10**7])
def test_a_distillation_num_frames_override_too_large_for_memory_is_refused_before_training(tmp_path, preset,
                                                                                           num_frames):
    teacher = tmp_path / "teacher.safetensors"
    save_model(build_model("toy", seed=0), teacher)
    cfg = get_preset(preset, teacher=str(teacher), num_frames=num_frames, batch_size=8, gen_steps=1, threads=1,
                     eval_every=0)
    before = peak_rss_mib()
    with pytest.raises(MemoryError, match=rf"distillation at batch_size=8, num_frames={num_frames}.*needs about "
                                          rf".*GiB.*free memory on cpu.*lower num_frames"):
        from comfyui_salt.toy.jobs import distill_world
        from comfyui_salt.training.distill import run_distillation
        run_distillation(cfg, str(tmp_path / "run"), quiet=True, world=distill_world())
    assert peak_rss_mib() - before < 300
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_the_distillation_estimate_of_a_toy_run_is_tens_of_mib_and_grows_with_frames():
    import dataclasses
    from comfyui_salt.training.validate import distill_memory_bytes
    student = build_model("toy", seed=0)
    cfg = get_preset("toy-dmd")
    small = distill_memory_bytes(cfg, student, student)
    assert 10 * 2**20 < small < 500 * 2**20
    assert distill_memory_bytes(dataclasses.replace(cfg, num_frames=120), student, student) > 5 * small
    assert distill_memory_bytes(dataclasses.replace(cfg, num_frames=120, grad_checkpointing=True), student,
                                student) < distill_memory_bytes(dataclasses.replace(cfg, num_frames=120), student,
                                                                student)


def test_the_estimate_counts_the_frozen_critic_copy_the_exact_teachers_alignment_keeps():
    from comfyui_salt.training.validate import distill_memory_bytes
    student, critic = build_model("toy", seed=0), build_model("toy", seed=1).to(torch.bfloat16)
    copy_bytes = 2 * sum(p.numel() for p in critic.parameters())               # the frozen copy, bf16
    learned = distill_memory_bytes(get_preset("lab-salt", teacher="t.safetensors"), student, critic)
    exact = distill_memory_bytes(get_preset("lab-salt", teacher="exact"), student, critic)
    assert exact - learned == copy_bytes
    no_align = get_preset("lab-salt", teacher="exact", align_weight=0.0)
    from comfyui_salt.training.validate import distill_memory_breakdown
    aligned = distill_memory_breakdown(get_preset("lab-salt", teacher="t.safetensors"), student, critic)
    assert distill_memory_bytes(no_align, student, critic) == learned - aligned["align"] and aligned["align"] > 0


def test_the_estimate_counts_what_a_salt_generator_step_keeps_beyond_the_models():
    """The terms a 1.3B run on one H100 showed missing (it ran out at 74.4 GiB where the estimate said 58.5):
    the past K/V each grad-carrying chunk forward gathers, and the alignment's forward with grad through the
    features network. Closed forms on the toy model's shapes (fp32)."""
    import dataclasses
    from comfyui_salt.training.validate import distill_memory_breakdown
    student = build_model("toy", seed=0)
    m = student.cfg
    cfg = dataclasses.replace(get_preset("toy-salt"), num_frames=12, chunk_frames=3, batch_size=2,
                              local_attn_frames=-1, sink_frames=0, height=16, width=16)
    part = distill_memory_breakdown(cfg, student, student)
    T = (cfg.height // m.patch_size[1]) * (cfg.width // m.patch_size[2])   # tokens per latent frame
    kv_frame = 2 * m.num_layers * cfg.batch_size * m.dim * T * 4           # K and V of one frame, every layer
    assert part["rollout_kv"] == (0 + 3 + 6 + 9) * kv_frame                # global cache: chunk k sees 3k frames
    sym = distill_memory_breakdown(dataclasses.replace(cfg, sc_symmetric=True), student, student)
    assert sym["rollout_kv"] == 2 * part["rollout_kv"]                     # the composed branch carries grad too
    window = distill_memory_breakdown(dataclasses.replace(cfg, local_attn_frames=6), student, student)
    assert window["rollout_kv"] == (0 + 3 + 3 + 3) * kv_frame              # min(f0, W − chunk) with W = 6
    tokens, per_block = 12 * T, (m.ffn_dim + 10 * m.dim) * 4
    depth = cfg.align_block + 1                                            # the features forward stops there
    assert 0 < depth < m.num_layers
    assert part["align"] == cfg.batch_size * tokens * per_block * depth            # each block run, no checkpointing
    ckpt = distill_memory_breakdown(dataclasses.replace(cfg, grad_checkpointing=True), student, student)
    assert ckpt["align"] == cfg.batch_size * tokens * (per_block + m.dim * 4 * depth)
    assert distill_memory_breakdown(dataclasses.replace(cfg, align_weight=0.0), student, student)["align"] == 0
    half = distill_memory_breakdown(cfg, student, student, compute_dtype=torch.bfloat16)
    assert 2 * half["caches"] == part["caches"] and 2 * half["rollout_kv"] == part["rollout_kv"]


@pytest.mark.parametrize("num_frames, chunk", [(1, 1), (7, 3), (12, 3), (40, 4), (41, 2)])
def test_the_rollouts_past_frames_in_closed_form_equal_the_caches_own_rule(num_frames, chunk):
    from comfyui_salt.salt_core.kv_cache import attended_frames
    from comfyui_salt.training.validate import rollout_past_frames
    policies = [CachePolicy(max_frames=num_frames)] + [
        CachePolicy(window_frames=w, sink_frames=s, max_frames=num_frames)
        for w in range(chunk, 13) for s in range(0, w - chunk + 1)]
    for policy in policies:
        brute = sum(sum(f < f0 for f in attended_frames(policy, 0, min(f0 + chunk, num_frames)))
                    for f0 in range(0, num_frames, chunk))
        assert rollout_past_frames(policy, num_frames, chunk) == brute, policy
    assert rollout_past_frames(CachePolicy(window_frames=12, sink_frames=3), 3 * 10**12, 3) > 0   # no loop


def test_a_cache_too_large_for_memory_is_refused_by_the_distillers_cache_too(toy):
    from comfyui_salt.salt_core.kv_cache import CachePolicy
    with pytest.raises(MemoryError, match=r"KV cache of 300000 frames"):
        toy.new_cache(8, CachePolicy(-1, 0, 300000), (16, 16))


@pytest.mark.parametrize("limit_gib, refused", [(1e-4, True), (64.0, False)])
def test_an_explicit_distillation_memory_limit_overrides_free_memory(tmp_path, limit_gib, refused, monkeypatch):
    # the estimate of a toy run (tens of MiB) against an explicit limit, whatever the machine has free
    import comfyui_salt.salt_core.validate as rules
    from comfyui_salt.training.validate import check_distill_memory
    monkeypatch.setattr(rules, "available_memory", lambda device: 1)   # the machine "has" 1 byte free
    student = build_model("toy", seed=0)
    cfg = get_preset("toy-dmd", memory_limit_gib=limit_gib)
    if refused:
        with pytest.raises(MemoryError, match=r"memory_limit_gib=0.0001.*memory_limit_gib \(--memory-limit-gib\)"):
            check_distill_memory(cfg, student, student, "cpu")
    else:
        check_distill_memory(cfg, student, student, "cpu")
    with pytest.raises(MemoryError, match="free memory on cpu"):
        check_distill_memory(get_preset("toy-dmd"), student, student, "cpu")


def test_an_ode_initialisation_whose_pairs_cannot_fit_in_host_memory_is_refused_before_generating(tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    save_model(build_model("toy", seed=0), teacher, extra_metadata={"teacher_mode": "teacher_forcing"})
    from comfyui_salt.training.ode_init_config import get_ode_init_preset
    cfg = get_ode_init_preset("toy-ode-init", teacher=str(teacher), ode_pairs=10**9, gen_steps=1, threads=1)
    from comfyui_salt.toy.jobs import distill_world
    from comfyui_salt.training.ode_init import run_ode_init
    with pytest.raises(MemoryError, match=r"1000000000 ODE pairs.*free host memory.*lower ode_pairs"):
        run_ode_init(cfg, str(tmp_path / "run"), quiet=True, world=distill_world())
    assert not (tmp_path / "run" / "ode_pairs.safetensors").exists()


def test_free_cuda_memory_counts_what_the_caching_allocator_holds_unused(monkeypatch):
    """A process that freed tensors keeps their blocks reserved: the driver calls them used, PyTorch reuses them.
    Found on an H100: after a section that ran out of memory, a 3.2 GiB KV cache was refused with 1.9 GiB 'free'."""
    import comfyui_salt.salt_core.validate as rules
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 75 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 5 * gib)
    assert rules.available_memory("cuda:0") == 72 * gib
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 75 * gib)
    assert rules.available_memory("cuda:0") == 2 * gib


@pytest.mark.parametrize("window, sink", [(-1, 0), (6, 0), (6, 3)])
def test_the_estimates_rollout_kv_is_what_a_grad_rollout_gathers(window, sink):
    """The K/V copies the exit forwards with grad of a real causal rollout gather (counted as each CacheStep makes
    them), against the estimator's rollout_kv for the same clip, batch and window."""
    import dataclasses
    from comfyui_salt.salt_core import kv_cache
    from comfyui_salt.salt_core.rollout import rollout_self_forcing
    from comfyui_salt.training.validate import distill_memory_breakdown
    student = build_model("toy", seed=0)
    cfg = dataclasses.replace(get_preset("toy-dmd"), num_frames=12, chunk_frames=3, batch_size=2,
                              local_attn_frames=window, sink_frames=sink, height=16, width=16)
    gathered = []
    init = kv_cache.CacheStep.__init__

    def counting(self, *args):
        init(self, *args)
        if self.prev_k is not None:
            gathered.append(self.prev_k.numel() * self.prev_k.element_size() * 2)   # K and V
    policy = CachePolicy(window_frames=window, sink_frames=sink, max_frames=12)
    noise = torch.randn(2, student.cfg.in_dim, 12, 16, 16, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 8, student.cfg.text_dim)
    kv_cache.CacheStep.__init__ = counting
    try:
        rollout_self_forcing(student, noise, ctx, get_sigmas_fewstep(4), 3, policy=policy, chunk_frames=3,
                             generator=torch.Generator().manual_seed(1), grad=True)
    finally:
        kv_cache.CacheStep.__init__ = init
    assert sum(gathered) == distill_memory_breakdown(cfg, student, student)["rollout_kv"] > 0
