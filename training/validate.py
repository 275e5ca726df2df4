"""Validation of training configs: every number finite and in range, every size a usable count.

Called once from each config's __post_init__, so the CLI, the ComfyUI node, overrides and Python
callers all meet the same rules (salt_core.validate holds the rules themselves). Errors name the
field, the value, what was expected and the fix. Knows nothing of files or the loops.
"""
from ..salt_core.schedules import MAX_NFE
from ..salt_core.validate import check_count, check_number, parse_bool  # noqa: F401  (parse_bool: CLI, node)

# (field, low, high, low_open, high_open) of DistillConfig floats
_DISTILL_FLOATS = (
    ("context_noise", 0, 1, False, True), ("shift", 0, None, True, False), ("guidance_scale", 0, None, True, False),
    ("sc_weight", 0, None, False, False), ("align_weight", 0, None, False, False),
    ("align_delta", 0, None, False, False), ("lr_gen", 0, None, True, False), ("lr_critic", 0, None, True, False),
    ("beta1", 0, 1, False, True), ("beta2", 0, 1, False, True), ("beta1_critic", 0, 1, False, True),
    ("beta2_critic", 0, 1, False, True), ("weight_decay", 0, None, False, False),
    ("grad_clip", 0, None, True, False), ("ema_decay", 0, 1, False, True), ("memory_limit_gib", 0, None, False, False),
)
# DistillConfig counts and their minimum (0 where 0 means "off" / "from the start")
_DISTILL_COUNTS = (
    ("num_frames", 1), ("height", 1), ("width", 1), ("chunk_frames", 1), ("sink_frames", 0), ("sc_steps", 1),
    ("align_start_iter", 0), ("align_block", 0), ("batch_size", 1), ("grad_accum", 1), ("gen_steps", 1),
    ("critic_ratio", 1), ("ema_start_iter", 0), ("ode_pairs", 1), ("ode_teacher_steps", 1), ("seed", 0),
    ("threads", 0), ("checkpoint_every", 1), ("eval_every", 0), ("eval_clips", 1), ("log_every", 1),
)


def validate_distill_config(cfg) -> None:
    """Refuse a DistillConfig with a non-finite number, a degenerate size or an inconsistent step mixture."""
    where = "DistillConfig"
    for name, low, high, low_open, high_open in _DISTILL_FLOATS:
        check_number(name, getattr(cfg, name), where=where, low=low, high=high, low_open=low_open,
                     high_open=high_open)
    for name, minimum in _DISTILL_COUNTS:
        check_count(name, getattr(cfg, name), where=where, minimum=minimum,
                    fix="gen_steps counts generator updates (toy presets: 200)" if name == "gen_steps" else "")
    if cfg.local_attn_frames != -1:
        check_count("local_attn_frames", cfg.local_attn_frames, where=where, fix="-1 means a global cache")
    if not cfg.step_choices:
        raise ValueError(f"{where}: step_choices=(); expected at least one K, e.g. (4,) or (8, 4, 2)")
    for k in cfg.step_choices:
        check_count("step_choices", k, where=where, maximum=MAX_NFE)
    for p in cfg.step_probs:
        check_number("step_probs", p, where=where, low=0)
    total = sum(float(p) for p in cfg.step_probs)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"{where}: step_probs={tuple(cfg.step_probs)} sum to {total:g}; expected probabilities "
                         f"summing to 1, one per step_choices entry (Salt: 0.4,0.4,0.2)")
    for k in cfg.eval_nfe:
        check_count("eval_nfe", k, where=where, maximum=MAX_NFE)


_TEACHER_FLOATS = (("lr", 0, None, True, False), ("min_lr_ratio", 0, 1, False, False), ("beta1", 0, 1, False, True),
                   ("beta2", 0, 1, False, True), ("weight_decay", 0, None, False, False),
                   ("grad_clip", 0, None, True, False), ("ema_decay", 0, 1, False, True),
                   ("caption_dropout", 0, 1, False, True), ("logit_mean", None, None, False, False),
                   ("logit_std", 0, None, True, False), ("shift", 0, None, True, False),
                   ("eval_cfg", 0, None, True, False))
_TEACHER_COUNTS = (("chunk_frames", 1), ("batch_size", 1), ("total_steps", 1), ("warmup_steps", 0), ("seed", 0),
                   ("threads", 1), ("checkpoint_every", 1), ("eval_every", 0), ("eval_clips", 1),
                   ("eval_steps", 1), ("log_every", 1), ("init_step", 0))


def validate_teacher_config(cfg) -> None:
    """Refuse a TeacherConfig with a non-finite number or a degenerate size."""
    for name, low, high, low_open, high_open in _TEACHER_FLOATS:
        check_number(name, getattr(cfg, name), where="TeacherConfig", low=low, high=high, low_open=low_open,
                     high_open=high_open)
    for name, minimum in _TEACHER_COUNTS:
        check_count(name, getattr(cfg, name), where="TeacherConfig", minimum=minimum)


def distill_memory_bytes(cfg, student, critic=None) -> int:
    """Bytes a distillation run will still allocate once its models are built: gradients and AdamW moments of
    student and critic, the EMA shadow, two KV caches (causal students) and the activations kept for the
    backward pass of one micro-batch (every block's tokens over the whole clip; one block's with
    gradient checkpointing). Attention kernels and allocator slack are not counted."""
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
    return training_state + activations + caches


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
