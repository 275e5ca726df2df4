"""Per-GPU memory of the real-scale distillation presets on 1, 8, 16 and 64 GPUs, from the estimator the run checks
before its first step (training.validate.distill_memory_breakdown): a Wan 2.1 1.3B student and critic (fp32 master
weights, AdamW, EMA) and the 14B teacher (bf16), sharded with FSDP2 (`sharding=full`: over every GPU; the teacher
optionally offloaded to the host), at each preset's clip size with activation checkpointing, K/V in bf16 (the GPU's
autocast). Prints a markdown table.

    .venv/bin/python bench/fsdp_memory.py
"""
import dataclasses

import torch

from comfyui_salt.salt_core.config import MODEL_PRESETS
from comfyui_salt.salt_core.model import WanModel
from comfyui_salt.training.distill_config import get_preset
from comfyui_salt.training.validate import distill_memory_breakdown

PRESETS = ("self-forcing-dmd", "salt-self-forcing", "salt-causal-forcing", "salt-longlive", "salt-wan-bidirectional")
GPUS = (1, 8, 16, 64)
GIB = 1 << 30
CARDS = {"H100 80 GB": 79 * GIB, "H200 141 GB": 139 * GIB}   # what the driver leaves usable, about


def main():
    with torch.device("meta"):
        student = WanModel(MODEL_PRESETS["wan2.1-t2v-1.3b"])
        critic = WanModel(MODEL_PRESETS["wan2.1-t2v-1.3b"])
        teacher = WanModel(MODEL_PRESETS["wan2.1-t2v-14b"]).to(torch.bfloat16)
    print("| preset | GPUs | teacher | params + grads + AdamW + EMA | teacher | gathered blocks | activations + "
          "caches | rollout K/V + alignment | per GPU | fits H100 80 GB (79 GiB) | fits H200 141 GB (139 GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in PRESETS:
        for gpus in GPUS:
            for offload in ((False, True) if gpus > 1 else (False,)):
                cfg = dataclasses.replace(get_preset(name), teacher_offload=offload)
                part = distill_memory_breakdown(cfg, student, critic, teacher, shards=gpus, models_on_device=True,
                                                compute_dtype=torch.bfloat16)
                total = sum(part.values())
                state = part["params"] + part["grads"] + part["optimizer"] + part["ema"]
                print(f"| {name} | {gpus} | {'host' if offload else 'GPU'} | {state / GIB:.1f} GiB | "
                      f"{part['teacher'] / GIB:.1f} GiB | {part['gathered'] / GIB:.2f} GiB | "
                      f"{(part['activations'] + part['caches'] + part['features']) / GIB:.1f} GiB | "
                      f"{(part['rollout_kv'] + part['align']) / GIB:.1f} GiB | "
                      f"**{total / GIB:.1f} GiB** | " + " | ".join("yes" if total <= cap else "no"
                                                                    for cap in CARDS.values()) + " |")


if __name__ == "__main__":
    main()
