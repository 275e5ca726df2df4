"""Write a distilled student as a LoRA file on its base (the file side of `salt_core.lora`).

The file is a flat safetensors of ComfyUI LoRA keys (`diffusion_model.<module>.lora_up.weight` / `lora_down` /
`alpha`, `.diff`, `.diff_b`) for `LoraLoaderModelOnly` on a native Wan MODEL; its metadata records the rank,
what was diffed and the energy kept. Knows nothing of ComfyUI's modules or of training loops.
"""
import json
import os
from collections.abc import Mapping

import torch
from safetensors.torch import save_file

from ..salt_core.lora import extract_lora, summarize
from ..salt_core.validate import check_choice
from ..weights.files import atomic_write, check_output, load_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def student_file(path: str) -> str:
    """A checkpoint path, or a distillation run folder → its `export/student.safetensors`."""
    if os.path.isdir(path):
        exported = os.path.join(path, "export", "student.safetensors")
        if not os.path.isfile(exported):
            raise FileNotFoundError(f"student={path!r} is a folder without export/student.safetensors; pass the "
                                    f"student checkpoint file, or a finished distillation run folder")
        return exported
    return path


def state_dict_of(model_or_path, device="cpu") -> dict:
    """Original-name state dict of a WanModel or a state dict / name → tensor Mapping (as they are), or of a
    checkpoint file in any layout (float32, loaded onto `device`; fp8-stored linear weights stay fp8, which
    extraction refuses: their rounding noise would be the LoRA)."""
    if isinstance(model_or_path, torch.nn.Module):
        return model_or_path.state_dict()
    if isinstance(model_or_path, Mapping):
        return model_or_path
    model, _ = load_model(student_file(os.fspath(model_or_path)), device=device, keep_fp8=True)
    return model.state_dict()


def check_lora_path(path, inputs: Mapping = None) -> str:
    """A LoRA destination (.safetensors, `files.check_output`), checked before any SVD."""
    path = os.fspath(path)
    if not path.lower().endswith(".safetensors"):
        raise ValueError(f"export_lora: out={path!r}; a LoRA is written as .safetensors (ComfyUI's models/loras)")
    return check_output(path, "out", inputs)


def save_lora(lora: dict, reports: list, path: str, metadata: dict = None) -> str:
    """Write a LoRA state dict (ComfyUI keys) with its summary as safetensors metadata; returns the path."""
    path = check_lora_path(path)
    meta = {"salt_lora_summary": json.dumps(summarize(reports), sort_keys=True), **(metadata or {})}
    tensors = {k: v.contiguous() for k, v in lora.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={k: str(v) for k, v in meta.items()}))
    return path


def export_lora(base, student, path: str, rank: int, diffs: bool = True, dtype: str = "fp32",
                device="cpu") -> tuple:
    """(path, [LayerReport]) of student − base written as a rank-`rank` LoRA to `path`.

    base, student: WanModels, state dicts or checkpoint files (any layout; a run folder for the student;
    files are loaded onto `device`, where the SVDs then run: use a GPU for Wan 1.3B).
    """
    check_choice("dtype", dtype, DTYPES, where="export_lora")
    files = {"base": base, "student": student}            # the files actually read (a run folder's export)
    check_lora_path(path, {k: student_file(os.fspath(v)) if k == "student" else v for k, v in files.items()
                           if isinstance(v, (str, os.PathLike))})
    lora, reports = extract_lora(state_dict_of(base, device), state_dict_of(student, device), rank, diffs=diffs,
                                 dtype=DTYPES[dtype])
    if not reports:
        raise ValueError("export_lora: the student equals its base (no tensor changed); nothing to export. "
                         "Pass the distilled student and the model it started from")
    if not lora:
        raise ValueError(f"export_lora: the student differs from its base only in {len(reports)} tensor(s) that are "
                         f"no linear weight (biases, norms: no low-rank factors), and diffs=False leaves those out, "
                         f"so the LoRA would be empty; export with the diffs (SaltExtractLoRA include_diffs on; the "
                         f"CLI without --no-diffs)")
    names = {k: os.path.basename(os.fspath(v)) for k, v in (("salt_base", base), ("salt_student", student))
             if isinstance(v, (str, os.PathLike))}
    return save_lora(lora, reports, path, {"salt_rank": rank, "salt_diffs": diffs, **names}), reports
