"""Validation of training configs: every field within the valid values its declaration states, and the rules
that tie fields together.

`validate_distill_config` / `validate_teacher_config` are each config's one validation entry, called from its
__post_init__, so the CLI, the ComfyUI node, overrides, stored config.json files and Python callers all meet
the same rules. Per-field rules (choices, counts, ranges) are read from the field metadata (config_fields);
salt_core.validate holds the checks themselves. Errors name the field, the value, what was expected and the
fix. Knows nothing of files or the loops.
"""
from ..salt_core.validate import check_count
from .config_fields import check_fields


def validate_distill_config(cfg) -> None:
    """Refuse a DistillConfig with a field outside its declared values, or inconsistent fields: a cache window
    that is neither -1 nor a count, an empty or unnormalised step mixture, clips not made of whole chunks."""
    where = "DistillConfig"
    check_fields(cfg, where)
    if cfg.local_attn_frames != -1:
        check_count("local_attn_frames", cfg.local_attn_frames, where=where, fix="-1 means a global cache")
    if not cfg.step_choices:
        raise ValueError(f"{where}: step_choices=(); expected at least one K, e.g. (4,) or (8, 4, 2)")
    if len(cfg.step_choices) != len(cfg.step_probs):
        raise ValueError(f"{where}: step_choices={tuple(cfg.step_choices)} and step_probs={tuple(cfg.step_probs)} "
                         f"differ in length; expected one probability per K, e.g. 8,4,2 with 0.4,0.4,0.2")
    total = sum(float(p) for p in cfg.step_probs)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"{where}: step_probs={tuple(cfg.step_probs)} sum to {total:g}; expected probabilities "
                         f"summing to 1, one per step_choices entry (Salt: 0.4,0.4,0.2)")
    if cfg.num_frames % cfg.chunk_frames:
        raise ValueError(f"{where}: num_frames={cfg.num_frames} is not a multiple of chunk_frames="
                         f"{cfg.chunk_frames}; expected whole chunks, e.g. num_frames=12 with chunk_frames=3")


def validate_teacher_config(cfg) -> None:
    """Refuse a TeacherConfig with a field outside its declared values."""
    check_fields(cfg, "TeacherConfig")


def distill_memory_bytes(cfg, student, critic=None) -> int:
    """Bytes a distillation run will still allocate once its models are built: gradients and AdamW moments of
    student and critic, the EMA shadow, two KV caches (causal students) and the activations kept for the
    backward pass of one micro-batch (every block's tokens over the whole clip; one block's with
    gradient checkpointing), and, under the exact teacher with alignment, the frozen copy of the critic's
    initial weights whose features the alignment reads. Attention kernels and allocator slack are not counted."""
    from ..salt_core.validate import kv_cache_bytes
    item = student.patch_embedding.weight.element_size()
    mcfg = student.cfg
    params = sum(p.numel() for p in student.parameters()) + (0 if critic is None else
                                                              sum(p.numel() for p in critic.parameters()))
    training_state = (3 * params + sum(p.numel() for p in student.parameters())) * 4
    tokens = (cfg.num_frames // mcfg.patch_size[0]) * (cfg.height // mcfg.patch_size[1]) * (cfg.width // mcfg.patch_size[2])
    per_block = cfg.batch_size * tokens * (mcfg.ffn_dim + 10 * mcfg.dim) * item
    activations = per_block * (1 if cfg.grad_checkpointing else mcfg.num_layers)
    caches = 0
    if cfg.student_kind == "causal":
        capacity = cfg.num_frames if cfg.local_attn_frames == -1 else cfg.local_attn_frames
        caches = 2 * kv_cache_bytes(mcfg.num_layers, cfg.batch_size, mcfg.num_heads, mcfg.head_dim,
                                    tokens // max(1, cfg.num_frames // mcfg.patch_size[0]), capacity,
                                    student.patch_embedding.weight.dtype)
    frozen_features = 0
    if critic is not None and cfg.aligns_to_frozen_critic:
        frozen_features = sum(p.numel() * p.element_size() for p in critic.parameters())
    return training_state + activations + caches + frozen_features


def check_distill_memory(cfg, student, critic, device) -> None:
    """MemoryError before training when the run cannot fit in the free memory of `device`, with the fix."""
    from ..salt_core.validate import available_memory, check_memory
    explicit = cfg.memory_limit_gib > 0
    limit = int(cfg.memory_limit_gib * (1 << 30)) if explicit else available_memory(device)
    check_memory(f"distillation at batch_size={cfg.batch_size}, num_frames={cfg.num_frames}, "
                 f"{cfg.height}×{cfg.width} latents", distill_memory_bytes(cfg, student, critic), limit,
                 where="DistillConfig",
                 limit_what=f"memory_limit_gib={cfg.memory_limit_gib:g}" if explicit else f"free memory on {device}",
                 fix="lower num_frames, height / width or batch_size (use grad_accum for a larger effective batch), "
                     "or set grad_checkpointing=true; if the estimate is too cautious for your setup, set "
                     "memory_limit_gib (--memory-limit-gib) to the GiB you allow")


def ode_pairs_bytes(cfg, student) -> int:
    """Host bytes of the ODE-init pairs: every trajectory's states at the K + 1 grid levels of the largest K,
    its end point and its text context, in float32."""
    mcfg = student.cfg
    clip = mcfg.in_dim * cfg.num_frames * cfg.height * cfg.width
    return cfg.ode_pairs * ((max(cfg.step_choices) + 2) * clip + mcfg.text_len * mcfg.text_dim) * 4


def check_ode_init_memory(cfg, student, device) -> None:
    """MemoryError before an ODE initialisation when its training state (on `device`) or its cached teacher
    trajectories (host memory) cannot fit, with the estimate, the limit and the fix."""
    from ..salt_core.validate import available_memory, check_memory
    check_distill_memory(cfg, student, None, device)
    explicit = cfg.memory_limit_gib > 0
    check_memory(f"{cfg.ode_pairs} ODE pairs of {cfg.num_frames} frames at {cfg.height}×{cfg.width}",
                 ode_pairs_bytes(cfg, student),
                 int(cfg.memory_limit_gib * (1 << 30)) if explicit else available_memory("cpu"), where="DistillConfig",
                 limit_what=f"memory_limit_gib={cfg.memory_limit_gib:g}" if explicit else "free host memory",
                 fix="lower ode_pairs, num_frames or height / width, or set memory_limit_gib (--memory-limit-gib)")
