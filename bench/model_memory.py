"""What a SALT_MODEL file costs in ComfyUI's model management, per dtype, on the shipped Salt toy student.

    .venv/bin/python bench/model_memory.py [--clips 8] [--threads 2]

Loads the toy student through SaltLoadCausalModel (ComfyUI's modules in-process, --cpu) with each dtype /
weight_dtype, streams clips with SaltStreamingSampler and prints a markdown table: parameter bytes by dtype
(counted from the tensors), the ModelPatcher's loaded size after sampling and whether ComfyUI lists the model
as loaded, the relative velocity error of one forward vs fp32 (‖v − v₃₂‖ / ‖v₃₂‖ over clips and
σ ∈ {1, .75, .5, .25}) and the relative difference of 2-step streamed clips from the same seeds (4 chunks of 3
frames, 16×16). Then the parameter bytes the same options give Wan 2.1 1.3B / 14B, computed from the shapes
(a meta-device model: nothing allocated). Not a test.
"""
import argparse
import os
import shutil
import tempfile

import torch

from comfyui_salt.dev.comfy_import import import_nodes

ROWS = [("fp32", "default"), ("bf16", "default"), ("fp32", "fp8_e4m3fn"), ("fp32", "fp8_e5m2"),
        ("bf16", "fp8_e4m3fn"), ("bf16", "fp8_e5m2")]
SIGMAS = (1.0, 0.75, 0.5, 0.25)
CAPTIONS = ["a red disc moving left on a dark background", "a blue square moving right", "a green disc moving up",
            "a yellow square moving down"]


def run(node, **inputs):
    with torch.inference_mode():
        return node.execute(**inputs).args


def mib(n: int) -> str:
    return f"{n / 2 ** 20:.2f}"


def dtype_bytes(module) -> dict:
    out = {}
    for p in module.parameters():
        key = str(p.dtype).replace("torch.", "").replace("float", "fp").replace("bfp16", "bf16")
        out[key] = out.get(key, 0) + p.numel() * p.element_size()
    return out


def projected(preset: str, dtype: torch.dtype, fp8: bool) -> int:
    """Parameter bytes of a Wan preset stored as the loader stores it (linear weights in 1 byte when fp8)."""
    from comfyui_salt.salt_core.config import get_config
    from comfyui_salt.salt_core.model import WanModel
    with torch.device("meta"):
        model = WanModel(get_config(preset))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    size = torch.empty(0, dtype=dtype).element_size()
    return linear + size * (total - linear) if fp8 else size * total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nodes = import_nodes()
    import comfy.model_management as mm
    import folder_paths
    from comfyui_salt.toy.shipped import TOY_STUDENT

    folder = tempfile.mkdtemp(prefix="salt_memory_")
    shutil.copy(TOY_STUDENT, os.path.join(folder, "toy_student.safetensors"))
    folder_paths.folder_names_and_paths["diffusion_models"] = (
        [folder], folder_paths.folder_names_and_paths["diffusion_models"][1])
    folder_paths.filename_list_cache.clear()
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.clips)]
    conds = [run(nodes.SaltToyTextEncode, text=c)[0] for c in captions]
    options = run(nodes.SaltCacheOptions, chunk_frames=3, attention="full", window_frames=12, sink_frames=3,
                  relative_rope=False, context_noise=0.0, max_frames=12)[0]
    sigmas = run(nodes.SaltFewStepSigmas, preset="2step", nfe=2, shift=1.0)[0]
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(args.clips, 3, 6, 16, 16, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    ctx = torch.cat([c[0][0] for c in conds])

    ref_v = ref_clips = None
    print(f"Toy student ({os.path.basename(TOY_STUDENT)}), {args.clips} clips, ComfyUI --cpu, "
          f"{args.threads} threads\n")
    print("| dtype | weight_dtype | parameter MiB by dtype | loaded MiB (ComfyUI) | listed as loaded | "
          "velocity rel. error vs fp32 | 2-step clip rel. diff vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for dtype, weight_dtype in ROWS:
        mm.unload_all_models()
        salt = run(nodes.SaltLoadCausalModel, ckpt_name="toy_student.safetensors", use_ema=True, dtype=dtype,
                   weight_dtype=weight_dtype)[0]
        with torch.inference_mode():
            compute = salt.model.patch_embedding.weight.dtype
            v = torch.cat([salt.model((s * eps + (1 - s) * x0).to(compute), torch.full((args.clips,), 1000 * s),
                                      ctx.to(compute)).float() for s in SIGMAS])
        clips = torch.cat([
            run(nodes.SaltStreamingSampler, model=salt, positive=c, cache_options=options, sigmas=sigmas, seed=i,
                num_chunks=4, width=16, height=16, batch_size=1, sampling="stochastic", cfg=1.0)[0]["samples"]
            for i, c in enumerate(conds)])
        if ref_v is None:
            ref_v, ref_clips = v, clips
        listed = salt.model in [m.model for m in mm.loaded_models()]
        by_dtype = ", ".join(f"{k} {mib(b)}" for k, b in dtype_bytes(salt.model).items())
        print(f"| {dtype} | {weight_dtype} | {by_dtype} | {mib(salt.patcher.loaded_size())} | "
              f"{'yes' if listed else 'no'} | {((v - ref_v).norm() / ref_v.norm()).item():.4f} | "
              f"{((clips - ref_clips).norm() / ref_clips.norm()).item():.4f} |")
        del salt

    print("\nParameter GiB of Wan 2.1 from the shapes (not measured):\n")
    print("| preset | fp32 | bf16 | fp8 + bf16 (weight_dtype fp8, dtype bf16) |")
    print("|---|---|---|---|")
    for preset in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b"):
        cells = [projected(preset, torch.float32, False), projected(preset, torch.bfloat16, False),
                 projected(preset, torch.bfloat16, True)]
        print(f"| {preset} | " + " | ".join(f"{c / 2 ** 30:.2f}" for c in cells) + " |")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
