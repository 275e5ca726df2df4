"""A distilled student as a LoRA on its base: the weight difference, low-rank per linear layer (truncated SVD).

Output keys are those ComfyUI's native LoRA loader (`comfy/lora.py`, `model_lora_keys_unet` + `load_lora`)
applies to a native Wan MODEL, whose parameters carry the original Wan names under `diffusion_model.`:

    diffusion_model.<module>.lora_up.weight    (out, r)   ΔW ≈ (alpha / r) · up @ down
    diffusion_model.<module>.lora_down.weight  (r, in)
    diffusion_model.<module>.alpha             ()         = r, so the scale is 1
    diffusion_model.<module>.diff_b            (out,)     full bias difference
    diffusion_model.<name>.diff                (any)      full difference of any other tensor (norm gains,
                                                          modulation tables, the patch-embedding conv)

`<module>` is a weight name without `.weight` (`blocks.0.self_attn.q`), `<name>` a parameter name without
`.weight` (`blocks.0.norm3`, `blocks.0.modulation`). kijai's WanVideoWrapper reads the same keys: its
`standardize_lora_key_format` keeps `diffusion_model.` keys (and maps LightX2V's `.diff_m` to
`.modulation.diff`), then applies them with ComfyUI's `load_lora_for_models` (nodes_model_loading.py).
Loaders that only take factor pairs ignore `.diff` / `.diff_b`: extract with `diffs=False` for them and read
what is left out in the report.

ComfyUI 0.3.75 accepts `.diff` keys for the modulation tables (`blocks.N.modulation`, `head.modulation`) but
never applies them: its ModelPatcher patches only parameters of leaf modules, and those tables belong to
modules with children (comfy/model_patcher.py `_load_list`, "skip random weights in non leaf modules").
They are still written (exact for loaders that apply them); `comfy_applied` gives what 0.3.75 applies.

Knows nothing of files or ComfyUI: state dicts in, state dicts out.
"""
import dataclasses
from collections.abc import Mapping

import torch

PREFIX = "diffusion_model."
COMFY_SKIPPED = (".modulation.diff",)   # keys ComfyUI 0.3.75 loads but does not apply (see the module docstring)
KINDS = ("lora", "diff", "diff_b", "dropped")

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)   # refused: their rounding would swamp the difference


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """What the LoRA holds for one changed tensor of the student."""
    name: str             # original Wan parameter name, e.g. blocks.0.self_attn.q.weight
    kind: str             # "lora" (factors), "diff" / "diff_b" (full difference), "dropped" (left out)
    shape: tuple          # shape of the parameter
    rank: int             # rank of the factors (0 unless kind == "lora")
    energy_kept: float    # ‖ΔW_r‖² / ‖ΔW‖² (Frobenius); 1.0 for full diffs, 0.0 for dropped tensors
    delta_norm: float     # ‖ΔW‖ (Frobenius), so layers can be compared

    @property
    def relative_error(self) -> float:
        """‖ΔW − ΔW_r‖ / ‖ΔW‖ = sqrt(1 − energy kept) (Eckart–Young for the truncated SVD)."""
        return max(0.0, 1.0 - self.energy_kept) ** 0.5


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple:
    """(up (out, r), down (r, in), energy kept) of the best rank-r approximation of delta (out, in).

    Truncated SVD in delta's dtype on its device, Δ = U·diag(s)·Vᴴ: up = U_r·diag(√s_r), down =
    diag(√s_r)·Vᴴ_r (balanced, so neither factor is tiny in half precision); r = min(rank, out, in). Energy
    kept Σ_{i<r} s_i² / Σ s_i² (1.0 for Δ = 0).
    """
    assert delta.ndim == 2, delta.shape
    U, s, Vh = torch.linalg.svd(delta, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    power = s.double() ** 2
    total = float(power.sum())
    energy = float(power[:r].sum()) / total if total > 0 else 1.0
    return U[:, :r] * root, root[:, None] * Vh[:r], energy


def _module(name: str) -> str:
    """Parameter name → the name ComfyUI maps to it: 'x.weight' → 'x', other names unchanged."""
    return name[:-len(".weight")] if name.endswith(".weight") else name


def _check_pair(base: Mapping, student: Mapping):
    """Same names and shapes in both state dicts, full precision and finite, or a ValueError naming the differences.
    Reads each tensor once (a lazy mapping may cast or patch it on every read)."""
    missing, extra = sorted(set(student) - set(base)), sorted(set(base) - set(student))
    if missing or extra:
        raise ValueError(f"extract_lora: base and student hold different tensors: only in the student "
                         f"{missing[:5]}, only in the base {extra[:5]}; pass the student's own base (the model "
                         f"it was distilled from, same architecture)")
    low = {"student": [], "base": []}
    broken = {"student": [], "base": []}
    shapes = {}
    for k in student:
        for which, sd in (("student", student), ("base", base)):
            v = sd[k]
            shapes.setdefault(k, []).append(tuple(v.shape))
            if v.dtype in FP8_DTYPES:
                low[which].append((k, v.dtype))
            elif v.is_floating_point() and not bool(torch.isfinite(v).all()):
                broken[which].append(k)
    for which in ("student", "base"):
        if low[which]:
            (k, dtype), n = low[which][0], len(low[which])
            raise ValueError(f"extract_lora: the {which} stores {n} tensors in fp8 (e.g. {k!r}: {dtype}); fp8 keeps "
                             f"about two significant digits, so a LoRA of the difference would mostly hold rounding "
                             f"noise. Load both models from full-precision (bf16 / fp16 / fp32) files with weight_dtype 'default'")
        if broken[which]:
            raise ValueError(f"extract_lora: the {which} holds NaN/Inf in {len(broken[which])} tensor(s), e.g. "
                             f"{broken[which][:3]}; a LoRA of it would carry them into every model it is applied "
                             f"to. Use a checkpoint from before the run diverged, or check the {which} file")
    differ = [k for k, (s, b) in shapes.items() if s != b]
    if differ:
        k = differ[0]
        raise ValueError(f"extract_lora: {k!r} is {shapes[k][0]} in the student but {shapes[k][1]} in the base; a "
                         f"LoRA needs the same architecture")


def extract_lora(base: Mapping, student: Mapping, rank: int, diffs: bool = True, dtype: torch.dtype = None,
                 compute_dtype: torch.dtype = torch.float32) -> tuple:
    """(LoRA state dict in ComfyUI's keys, [LayerReport] per changed tensor) of student − base.

    base, student: original-name Wan state dicts of one architecture. Every changed 2-D `.weight` (a
    linear layer) becomes rank-`rank` factors (full rank where the layer is smaller); with `diffs`, changed
    biases become `.diff_b` and every other changed tensor `.diff` (exact), else they are left out and
    reported as "dropped". Unchanged tensors are skipped. One tensor at a time, in `compute_dtype` on the
    student's device (an exact SVD of a Wan 1.3B FFN matrix takes seconds on a GPU, tens of seconds on a
    CPU); stored on the CPU in `dtype` (default: the student's dtype per tensor); the alpha is float32.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"extract_lora: rank={rank!r}; expected an integer >= 1 (Wan 1.3B layers are 1536 "
                         f"wide: 32-256 is usual, 1536 keeps every linear layer exactly)")
    _check_pair(base, student)
    lora, reports = {}, []
    for name in sorted(student):
        s = student[name].detach()
        b = base[name].detach().to(s.device)
        if torch.equal(s, b.to(s.dtype)):
            continue
        delta = s.to(compute_dtype) - b.to(compute_dtype)
        out = dtype or s.dtype
        norm = float(delta.double().norm())
        key = PREFIX + _module(name)
        if delta.ndim == 2 and name.endswith(".weight"):
            up, down, energy = low_rank_factors(delta, rank)
            lora[f"{key}.lora_up.weight"] = up.to("cpu", out).contiguous()
            lora[f"{key}.lora_down.weight"] = down.to("cpu", out).contiguous()
            lora[f"{key}.alpha"] = torch.tensor(float(up.shape[1]))
            reports.append(LayerReport(name, "lora", tuple(s.shape), up.shape[1], energy, norm))
        elif not diffs:
            reports.append(LayerReport(name, "dropped", tuple(s.shape), 0, 0.0, norm))
        elif name.endswith(".bias"):
            lora[f"{PREFIX}{name[:-len('.bias')]}.diff_b"] = delta.to("cpu", out)
            reports.append(LayerReport(name, "diff_b", tuple(s.shape), 0, 1.0, norm))
        else:
            lora[f"{key}.diff"] = delta.to("cpu", out)
            reports.append(LayerReport(name, "diff", tuple(s.shape), 0, 1.0, norm))
    return lora, reports


def summarize(reports: list) -> dict:
    """Totals of a report list: layers by kind, mean / min energy kept over the factored layers, and the
    energy kept over all changed tensors together (Σ kept ‖ΔW‖² / Σ ‖ΔW‖²)."""
    factored = [r for r in reports if r.kind == "lora"]
    total = sum(r.delta_norm ** 2 for r in reports)
    kept = sum(r.energy_kept * r.delta_norm ** 2 for r in reports)
    skipped = [r for r in reports if r.kind == "diff" and f"{r.name}.diff".endswith(COMFY_SKIPPED)]
    lost = sum(r.energy_kept * r.delta_norm ** 2 for r in skipped)
    return {
        "changed": len(reports),
        **{kind: sum(r.kind == kind for r in reports) for kind in KINDS},
        "mean_energy_kept": sum(r.energy_kept for r in factored) / len(factored) if factored else 1.0,
        "min_energy_kept": min((r.energy_kept for r in factored), default=1.0),
        "total_energy_kept": kept / total if total > 0 else 1.0,
        # what ComfyUI 0.3.75's loader applies of it: the diffs it leaves out (comfy_applied) count as dropped
        "comfy_skipped": len(skipped),
        "comfy_energy_kept": (kept - lost) / total if total > 0 else 1.0,
    }


def format_report(reports: list, limit: int = None) -> str:
    """A plain-text table: one line per changed tensor (worst energy first, `limit` lines), then the totals."""
    rows = sorted(reports, key=lambda r: r.energy_kept)[:limit]
    lines = [f"{'tensor':<40} {'kind':<7} {'rank':>5} {'energy kept':>11} {'rel. error':>10}"]
    lines += [f"{r.name:<40} {r.kind:<7} {r.rank:>5} {r.energy_kept:>11.4f} {r.relative_error:>10.4f}" for r in rows]
    if limit is not None and len(reports) > limit:
        lines.append(f"... {len(reports) - limit} more tensors")
    s = summarize(reports)
    lines.append(f"{s['changed']} changed tensors: {s['lora']} as LoRA factors, {s['diff']} .diff, {s['diff_b']} "
                 f".diff_b, {s['dropped']} left out; energy kept: mean {s['mean_energy_kept']:.4f}, min "
                 f"{s['min_energy_kept']:.4f} over factored layers, {s['total_energy_kept']:.4f} over everything")
    if s["comfy_skipped"]:
        lines.append(f"ComfyUI 0.3.75's LoraLoaderModelOnly leaves out the {s['comfy_skipped']} modulation .diff "
                     f"tensors: it applies {s['comfy_energy_kept']:.4f} of the energy (loaders that read them: all)")
    return "\n".join(lines)


def apply_lora(sd: Mapping, lora: Mapping, strength: float = 1.0) -> dict:
    """The state dict with a LoRA of `extract_lora`'s keys added (W + strength·(alpha/r)·up@down, + diffs).

    Computed in float32 and cast back to each tensor's dtype; a new dict, unchanged tensors shared. Unknown
    keys raise a ValueError naming them (a LoRA for another model, or keys this function does not read).
    """
    out, used = dict(sd), set()

    def add(name: str, delta: torch.Tensor):
        if name not in sd:
            raise ValueError(f"apply_lora: the LoRA changes {name!r}, which the model does not have")
        w = sd[name]
        out[name] = (w.float() + strength * delta.float().reshape(w.shape)).to(w.dtype)

    for key, value in lora.items():
        if not key.startswith(PREFIX):
            continue
        module = key[len(PREFIX):]
        if module.endswith(".lora_up.weight"):
            module = module[:-len(".lora_up.weight")]
            down = lora[f"{PREFIX}{module}.lora_down.weight"]
            alpha = float(lora.get(f"{PREFIX}{module}.alpha", torch.tensor(float(down.shape[0]))))
            add(module + ".weight", (alpha / down.shape[0]) * (value.float() @ down.float()))
            used.update({key, f"{PREFIX}{module}.lora_down.weight", f"{PREFIX}{module}.alpha"})
        elif module.endswith(".diff_b"):
            add(module[:-len(".diff_b")] + ".bias", value)
            used.add(key)
        elif module.endswith(".diff"):
            name = module[:-len(".diff")]
            add(name + ".weight" if name + ".weight" in sd else name, value)
            used.add(key)
    unknown = sorted(set(lora) - used)
    if unknown:
        raise ValueError(f"apply_lora: {len(unknown)} keys not understood, e.g. {unknown[:4]}; expected "
                         f"'{PREFIX}<module>.lora_up.weight' / '.lora_down.weight' / '.alpha', '.diff', '.diff_b'")
    return out


def comfy_applied(lora: Mapping) -> dict:
    """The part of a LoRA that ComfyUI 0.3.75's loader applies (modulation-table diffs left out)."""
    return {k: v for k, v in lora.items() if not k.endswith(COMFY_SKIPPED)}
