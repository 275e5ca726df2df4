"""Validation of training configs: every field within the valid values its declaration states, and the rules
that tie fields together.

`validate_distill_config` / `validate_teacher_config` are each config's one validation entry, called from its
__post_init__, so the CLI, the ComfyUI node, overrides, stored config.json files and Python callers all meet
the same rules. Per-field rules (choices, counts, ranges) are read from the field metadata (config_fields);
salt_core.validate holds the checks themselves. Errors name the field, the value, what was expected and the
fix. Knows nothing of files or the loops.
"""
import dataclasses
import math
import os

import torch

from ..salt_core.losses.semigroup import sc_triplet_distribution
from ..salt_core.schedules import get_sigmas_fewstep
from ..salt_core.validate import check_count, quote
from .config_fields import check_fields
from .student_config import EXACT, StudentJobConfig


def validate_distill_config(cfg) -> None:
    """Refuse a DistillConfig with a field outside its declared values, or inconsistent fields: a cache window
    that is neither -1 nor a count, an empty or unnormalised step mixture, clips not made of whole chunks."""
    where = "DistillConfig"
    check_fields(cfg, where)
    unread = unread_fields(cfg)   # fields nothing in this run reads: their values are not tied to the others
    if cfg.local_attn_frames == -1 and cfg.sink_frames and "sink_frames" not in unread:
        raise ValueError(f"{where}: sink_frames={cfg.sink_frames} with local_attn_frames=-1 (a global cache, which "
                         f"keeps every frame); a sink needs a window: set local_attn_frames (e.g. "
                         f"local_attn_frames={cfg.sink_frames + cfg.chunk_frames}) or sink_frames=0")
    if cfg.local_attn_frames != -1:
        check_count("local_attn_frames", cfg.local_attn_frames, where=where, fix="-1 means a global cache")
        if cfg.local_attn_frames < cfg.sink_frames + cfg.chunk_frames and "local_attn_frames" not in unread:
            raise ValueError(f"{where}: local_attn_frames={cfg.local_attn_frames} is less than sink_frames="
                             f"{cfg.sink_frames} + chunk_frames={cfg.chunk_frames}; expected a window that holds the "
                             f"sink and a whole chunk, e.g. local_attn_frames={cfg.sink_frames + cfg.chunk_frames} "
                             f"or more (-1: a global cache)")
    if not cfg.step_choices:
        raise ValueError(f"{where}: step_choices=(); expected at least one K, e.g. (4,) or (8, 4, 2)")
    if len(cfg.step_choices) != len(cfg.step_probs):
        raise ValueError(f"{where}: step_choices={tuple(cfg.step_choices)} and step_probs={tuple(cfg.step_probs)} "
                         f"differ in length; expected one probability per K, e.g. 8,4,2 with 0.4,0.4,0.2")
    total = sum(float(p) for p in cfg.step_probs)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"{where}: step_probs={tuple(cfg.step_probs)} sum to {total:g}; expected probabilities "
                         f"summing to 1, one per step_choices entry (Salt: 0.4,0.4,0.2)")
    check_whole_chunks(cfg, where)
    check_evaluation(cfg, where, bool(cfg.world) and cfg.eval_every > 0, cfg.eval_nfe)   # real scale: none
    if cfg.sc_weight > 0:
        check_sc_can_act(cfg, where)
    if cfg.align_weight > 0:
        check_alignment_can_act(cfg, where)


def whole_lengths(frames: int, chunk: int) -> str:
    """The whole-chunk frame counts nearest `frames` (positive), as a fix names them: "6 or 9" for 7 and 3."""
    below = frames // chunk * chunk
    return " or ".join(str(m) for m in (below, below + chunk) if m > 0)


def check_whole_chunks(cfg, where: str, score_kind: str = None) -> None:
    """Refuse clips that are not whole chunks where chunks are read: a causal student's rollouts, a teacher that
    scores chunk by chunk. A bidirectional student scored whole takes any frame count. score_kind: how the teacher
    scores, "auto" resolved (training.distill_models.resolve_teacher_kind, at the run's start); None:
    cfg.teacher_kind, whose "auto" (the teacher file's metadata decides) waits for the run's start."""
    frames, n = cfg.num_frames, cfg.chunk_frames
    if not frames % n:
        return
    kind = score_kind or cfg.teacher_kind
    if cfg.student_kind == "causal":
        why = "the causal student rolls out chunk by chunk"
    elif kind == "teacher_forcing":
        why = ("teacher_kind=teacher_forcing scores chunk by chunk" if cfg.teacher_kind == kind else
               f"the teacher ({quote(cfg.teacher)}) scores chunk by chunk (its file records "
               f"teacher_mode=teacher_forcing)")
    else:
        return
    raise ValueError(f"{where}: num_frames={frames} is not a multiple of chunk_frames={n}, and {why}; expected "
                     f"whole chunks: num_frames={whole_lengths(frames, n)}, or a chunk_frames that divides "
                     f"{frames}")


def drawn_steps(cfg) -> list:
    """The rollout step counts K the generator draws: step_choices with a probability above 0."""
    return [k for k, p in zip(cfg.step_choices, cfg.step_probs) if float(p) > 0]


# What a setting needs to be read at all: (the need, as the fix a warning names; its test on the config and on
# whether this process is one of a torchrun launch, None where unknown, e.g. on resume). A field whose need fails
# keeps whatever value it is sent and changes nothing the run trains (tests/test_distill.py trains with each one
# changed and compares the weights bit for bit).
_CAUSAL = ("student_kind=causal (a bidirectional student denoises the whole clip at once: no KV cache, and its "
           "alignment reference draws fresh noise at every step)", lambda cfg, launched: cfg.student_kind == "causal")
_CHUNKED = ("student_kind=causal or a teacher that scores chunk by chunk (teacher_kind=teacher_forcing, or auto "
            "with a teacher file other than the exact one: its metadata may say so)",
            lambda cfg, launched: cfg.student_kind == "causal" or cfg.teacher_kind == "teacher_forcing"
            or (cfg.teacher_kind == "auto" and cfg.teacher != EXACT))
_CUDA = ("a CUDA device (on the CPU every model computes in its own dtype)",
         lambda cfg, launched: launched is None or torch.cuda.is_available())   # None: the machine may change
_SC = ("sc_weight > 0", lambda cfg, launched: cfg.sc_weight > 0)
_ALIGN = ("align_weight > 0", lambda cfg, launched: cfg.align_weight > 0)
_K4 = ("4 among the drawn K (step_choices with a probability above 0)",
       lambda cfg, launched: 4 in drawn_steps(cfg))
_TORCHRUN = ("a torchrun launch (one process without a launcher trains unsharded)",
             lambda cfg, launched: launched is not False)
_REAL = ("a real-scale run (world empty: a toy or lab world brings its own captions)",
         lambda cfg, launched: not cfg.world)
_EVAL = ("evaluations (eval_every > 0 on a toy or lab world; a real-scale run has none)",
         lambda cfg, launched: bool(cfg.world) and cfg.eval_every > 0)
_FILE = ("a model file among teacher, student_init and critic_init (the shipped toy teacher, the exact one and "
         "copies of the teacher are read whole)",
         lambda cfg, launched: cfg.teacher not in ("toy", "exact") or cfg.student_init != "teacher"
         or getattr(cfg, "critic_init", "teacher") != "teacher")
# field -> what it needs (every one). align_block is not here: presets set it as their backbone's (the 14B's 20),
# whether or not they align.
READ_ONLY_WITH = {
    "local_attn_frames": (_CAUSAL,), "sink_frames": (_CAUSAL,), "context_noise": (_CAUSAL,),
    "chunk_frames": (_CHUNKED,), "autocast_bf16": (_CUDA,),
    "sc_steps": (_SC,), "sc_symmetric": (_SC,), "sc_exit_sigma_max": (_SC,),
    "align_delta": (_ALIGN,), "align_start_iter": (_ALIGN,), "align_coupling": (_CAUSAL, _ALIGN),
    "align_k4": (_ALIGN, _K4),
    "sharding": (_TORCHRUN,), "teacher_offload": (_TORCHRUN,),
    "prompts_file": (_REAL,), "text_encoder": (_REAL,), "negative_prompt": (_REAL,),
    "eval_nfe": (_EVAL,), "eval_clips": (_EVAL,),   # what is measured, not what is trained
    "use_ema_weights": (_FILE,),
}


def unread_fields(cfg, launched: bool = None) -> dict:
    """{field: the needs it lacks} for the fields of READ_ONLY_WITH that `cfg` has (a distillation's, an ODE
    initialisation's) and that nothing in its run reads, whatever their value. `launched`: whether this process is
    one of a torchrun launch (training.distributed.process_info), None where unknown, e.g. comparing a stored run's
    settings, which may resume on another machine (the fields needing a launch or a CUDA device then count as read)."""
    if not isinstance(cfg, StudentJobConfig):   # the teacher's job reads all it has
        return {}
    names = {f.name for f in dataclasses.fields(cfg)}
    out = {}
    for name, needs in READ_ONLY_WITH.items():
        if name in names:
            lacking = [need for need, holds in needs if not holds(cfg, launched)]
            if lacking:
                out[name] = lacking
    return out


def _shown(value) -> str:
    """A setting's value as a flag takes it (an empty string as "")."""
    return '""' if value == "" else str(value)


def inactive_terms(cfg, launched: bool = False) -> list:
    """What a valid config sets but its run will not do, as sentences for a warning at the start. Not refused (a
    later run may reach them, or the config is shared between runs):
    - a distillation's term or EMA whose start iteration comes after the run's last generator update (iteration
      critic_ratio × (gen_steps − 1): generator updates fall on every critic_ratio-th trainer iteration from 0);
    - a field changed from its default that nothing reads (unread_fields), e.g. a cache window on a bidirectional
      student or sc_symmetric with sc_weight=0; `launched`: whether this process is one of a torchrun launch."""
    out = []
    if hasattr(cfg, "align_weight"):   # a distillation (an ODE initialisation has no critic, terms or EMA start)
        last = cfg.critic_ratio * (cfg.gen_steps - 1)
        if cfg.align_weight > 0 and cfg.align_start_iter > last:
            out.append(f"align_start_iter={cfg.align_start_iter} comes after this run's last generator update "
                       f"(trainer iteration {last} = critic_ratio × (gen_steps − 1)): the feature alignment will not "
                       f"act; lower align_start_iter (e.g. {last // 2}) or raise gen_steps")
        if cfg.ema_start_iter > last:
            out.append(f"ema_start_iter={cfg.ema_start_iter} comes after this run's last iteration ({last}): no EMA "
                       f"is made, and the student is exported as trained; lower ema_start_iter or raise gen_steps")
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    groups = {}   # the needs lacking -> the changed fields that lack them, in READ_ONLY_WITH's order
    for name, lacking in unread_fields(cfg, launched).items():
        if getattr(cfg, name) != defaults[name]:
            groups.setdefault(tuple(lacking), []).append(name)
    for lacking, names in groups.items():
        sent, default = (", ".join(f"{n}={_shown(v[n])}" for n in names) for v in (vars(cfg), defaults))
        out.append(f"{sent}: no effect in this run, read only with {' and '.join(lacking)}; leave the default "
                   f"({default}) or run with {'that' if len(lacking) == 1 else 'those'}")
    return out


def check_alignment_can_act(cfg, where: str) -> None:
    """Refuse align_weight > 0 when no drawn K carries the alignment (K = 2, or K = 4 with align_k4; training/
    distill.py alignment_acts): the run would train without it while its config says Salt."""
    acts_on = (2, 4) if cfg.align_k4 else (2,)
    if not set(acts_on) & set(drawn_steps(cfg)):
        raise ValueError(f"{where}: align_weight={cfg.align_weight:g} but the feature alignment acts only on K = "
                         f"{' or '.join(map(str, acts_on))} rollouts (align_k4={cfg.align_k4}), and the rollouts "
                         f"draw step_choices={tuple(cfg.step_choices)} with step_probs={tuple(cfg.step_probs)}, so "
                         f"it would never act. Expected 2 among the drawn K (Salt: step_choices=8,4,2 with "
                         f"step_probs=0.4,0.4,0.2), align_k4=true with 4 drawn, or align_weight=0")


def sc_exit_sigmas(cfg, sigma_max: float = None) -> list:
    """σ_s of the exit steps of the cfg.sc_steps grid (at cfg.shift) where L_SC acts: those with a triplet (sc_triplet:
    every exit but the last) that L_SC weighs above 0 (σ_s < 1: its weight is 1 − σ_s), at or below sigma_max (default
    cfg.sc_exit_sigma_max). Descending."""
    top = cfg.sc_exit_sigma_max if sigma_max is None else sigma_max
    steps = int(cfg.sc_steps)   # a count, possibly sent as 8.0 (check_fields accepts whole floats)
    grid = get_sigmas_fewstep(steps, cfg.shift)
    return [float(grid[i]) for i in range(steps)
            if sc_triplet_distribution(i, grid) and float(grid[i]) < 1 and float(grid[i]) <= top]


def check_sc_can_act(cfg, where: str) -> None:
    """Refuse sc_weight > 0 with settings under which L_SC never acts (a run that would train plain DMD while its
    config says SC-DMD): sc_steps not a K the rollouts draw, a grid without a triplet L_SC weighs, or no exit of its
    grid at or below sc_exit_sigma_max."""
    if cfg.sc_steps not in drawn_steps(cfg):
        raise ValueError(f"{where}: sc_weight={cfg.sc_weight:g} but sc_steps={cfg.sc_steps} is not a K the rollouts "
                         f"draw (step_choices={tuple(cfg.step_choices)}, step_probs={tuple(cfg.step_probs)}); L_SC "
                         f"acts only on K = sc_steps rollouts, so it would never act. Expected sc_steps among the "
                         f"drawn K (Salt: sc_steps=8 with step_choices=8,4,2), or sc_weight=0 for plain DMD")
    if sc_exit_sigmas(cfg):
        return
    every = sc_exit_sigmas(cfg, 1.0)
    if not every:
        raise ValueError(f"{where}: sc_weight={cfg.sc_weight:g} with sc_steps={cfg.sc_steps}: that grid has no triplet "
                         f"L_SC weighs above 0 (a 1-step grid has none; a 2-step grid's one starts at σ 1, where the "
                         f"weight 1 − σ_s is 0), so it would never act; expected sc_steps >= 3 (Salt: 8, with 8 in "
                         f"step_choices), or sc_weight=0 for plain DMD")
    raise ValueError(f"{where}: sc_exit_sigma_max={cfg.sc_exit_sigma_max:g} is below every exit where L_SC acts "
                     f"(σ_s {', '.join(f'{s:.3f}' for s in every)} on the {cfg.sc_steps}-step grid at shift="
                     f"{cfg.shift:g}), so it would never act; expected sc_exit_sigma_max >= "
                     f"{math.ceil(min(every) * 1000) / 1000:.3f} "   # rounded up: the bound as printed is accepted
                     f"(1 = every exit), or sc_weight=0 for plain DMD")


def validate_ode_init_config(cfg) -> None:
    """Refuse an OdeInitConfig with a field outside its declared values, clips not made of whole chunks, or a
    teacher whose Euler grid misses the student's grid levels."""
    where = "OdeInitConfig"
    check_fields(cfg, where)
    check_whole_chunks(cfg, where)
    if cfg.ode_teacher_steps % cfg.grid_steps:
        raise ValueError(f"{where}: ode_teacher_steps={cfg.ode_teacher_steps} is not a multiple of grid_steps="
                         f"{cfg.grid_steps}, so the teacher's Euler grid misses levels of the student's grid; use a "
                         f"multiple, e.g. ode_teacher_steps={cfg.grid_steps * 10}")


def validate_teacher_config(cfg) -> None:
    """Refuse a TeacherConfig with a field outside its declared values, or evaluations of fewer than two clips."""
    check_fields(cfg, "TeacherConfig")
    check_evaluation(cfg, "TeacherConfig", cfg.eval_every > 0)
    if cfg.init_step and not cfg.init_from:
        raise ValueError(f"TeacherConfig: init_step={cfg.init_step} without init_from; the step a warm start continues "
                         f"from needs the weights it continues: pass init_from=<teacher .safetensors>, or init_step=0")
    if cfg.init_from and cfg.init_step >= cfg.total_steps:
        raise ValueError(f"TeacherConfig: init_step={cfg.init_step} with total_steps={cfg.total_steps}; a warm start "
                         f"at or past the last step trains nothing: expected init_step < total_steps (raise "
                         f"total_steps to train on from there)")


def check_evaluation(cfg, where: str, evaluates: bool, nfe: tuple = None) -> None:
    """Where evaluations run: at least two clips (the Fréchet distance and the lab's pairwise errors compare clips
    with one another) and, for a distillation (`nfe`: its eval_nfe), at least one NFE to evaluate."""
    if not evaluates:
        return
    if cfg.eval_clips < 2:
        raise ValueError(f"{where}: eval_clips={cfg.eval_clips} with eval_every={cfg.eval_every}; an evaluation "
                         f"compares clips with one another (Fréchet distance, pairwise errors), so expected "
                         f"eval_clips >= 2 (e.g. 32), or eval_every=0 for no evaluation")
    if nfe is not None and not nfe:
        raise ValueError(f"{where}: eval_nfe is empty with eval_every={cfg.eval_every}; expected the NFEs to "
                         f"evaluate, e.g. eval_nfe=4,2, or eval_every=0 for no evaluation")


def shard_count(sharding: str, world_size: int, local_world_size: int) -> int:
    """Ranks a model's parameters, gradients and optimizer state are split over (training/distributed.py)."""
    if world_size <= 1 or sharding == "replicate":
        return 1
    return local_world_size if sharding == "hybrid" else world_size


def _numel(model) -> int:
    return 0 if model is None else sum(p.numel() for p in model.parameters())


def distill_memory_breakdown(cfg, student, critic=None, teacher=None, *, shards: int = 1,
                             models_on_device: bool = False, sharded: bool = None, rollouts: bool = True,
                             compute_dtype: torch.dtype = None, score_kind: str = None) -> dict:
    """Bytes one rank of a distillation run holds, by part. `shards`: ranks the models are split over
    (`shard_count`). models_on_device: count the models' own parameters too (a GPU run: they are not there yet
    when this is checked; on the CPU they already are). compute_dtype: what K, V and the blocks' outputs are
    computed in (bf16 under the GPU's autocast; default the student's dtype). score_kind: how the teacher scores a
    clip, "auto" resolved (default cfg.teacher_kind). The parts:
    - params / grads / optimizer / ema: student and critic in fp32, AdamW's two moments, the EMA shadow, ÷ shards;
    - teacher: its parameters ÷ shards (0 with teacher_offload: its shards wait on the host);
    - gathered: the blocks FSDP2 gathers at once (the one in use and the next, prefetched), with shards > 1;
    - activations: kept for the backward of one micro-batch (every block's, counted in float32 whatever the
      autocast, as mixed-precision blocks keep float32 intermediates; with gradient checkpointing one block's,
      recomputed, plus every block's input, in compute_dtype, kept for the recompute);
    - caches: two KV caches (causal students' rollouts; none with rollouts=False, as in the ODE initialisation,
      which regresses without a cache);
    - rollout_kv: the past K/V each grad-carrying exit forward of a causal rollout gathers (a copy of every
      layer's, salt_core/kv_cache.py CacheStep) and keeps until the backward, summed over the clip's chunks;
      twice with the symmetric SC (its composed branch carries grad too);
    - align: the alignment's feature forward with grad (training/distill.py align_term) through the features
      network (the teacher, or the frozen critic copy under the exact teacher): activations as above, at its
      width, through its blocks up to align_block, over the clip (clean context and noisy clip under teacher
      forcing);
    - features: the frozen critic copy the alignment reads under the exact teacher.
    Attention kernels and allocator slack are not counted. rollout_kv equals what a real rollout gathers
    (tests/test_bad_input_sizes.py); the terms were added after a 1.3B run on one H100 ran out of memory at
    74.4 GiB where the estimate without them was 58.5 GiB (bench/results/gpu_check_h100.md)."""
    from ..salt_core.kv_cache import CachePolicy
    from ..salt_core.validate import kv_cache_bytes
    item = student.patch_embedding.weight.element_size()
    kv_dtype = compute_dtype or student.patch_embedding.weight.dtype
    kv_item = torch.empty((), dtype=kv_dtype).element_size()
    mcfg = student.cfg
    trained = _numel(student) + _numel(critic)
    out = {"params": (trained * 4 if models_on_device else 0) // shards, "grads": trained * 4 // shards,
           "optimizer": 2 * trained * 4 // shards, "ema": _numel(student) * 4 // shards}
    teacher_bytes = 0 if teacher is None else sum(p.numel() * p.element_size() for p in teacher.parameters())
    sharded = shards > 1 if sharded is None else sharded          # one rank under torchrun is sharded too
    offloaded = sharded and cfg.teacher_offload
    out["teacher"] = 0 if (not models_on_device or offloaded) else teacher_bytes // shards
    blocks = [m.blocks[0] for m in (student, critic, teacher) if m is not None and len(getattr(m, "blocks", ()))]
    out["gathered"] = 2 * max((sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks),
                              default=0) if shards > 1 else 0
    p = mcfg.patch_size
    frame_tokens = (cfg.height // p[1]) * (cfg.width // p[2])
    tokens = (cfg.num_frames // p[0]) * frame_tokens

    def activations(net_cfg, n_tokens, depth=None):
        """Bytes a forward with grad through `depth` blocks (default all) of a net shaped `net_cfg` over `n_tokens`
        tokens keeps for its backward."""
        depth = net_cfg.num_layers if depth is None else depth
        per_block = cfg.batch_size * n_tokens * (net_cfg.ffn_dim + 10 * net_cfg.dim) * item
        if not cfg.grad_checkpointing:
            return per_block * depth
        return per_block + cfg.batch_size * n_tokens * net_cfg.dim * kv_item * depth

    out["activations"] = activations(mcfg, tokens)
    out["caches"] = out["rollout_kv"] = 0
    if rollouts and cfg.student_kind == "causal":
        policy = CachePolicy(window_frames=cfg.local_attn_frames, sink_frames=cfg.sink_frames,
                             max_frames=cfg.num_frames)
        out["caches"] = 2 * kv_cache_bytes(mcfg.num_layers, cfg.batch_size, mcfg.num_heads, mcfg.head_dim,
                                           frame_tokens, policy.capacity_frames, kv_dtype)
        past = rollout_past_frames(policy, cfg.num_frames, cfg.chunk_frames)
        grad_branches = 2 if (cfg.sc_weight > 0 and cfg.sc_symmetric) else 1
        out["rollout_kv"] = grad_branches * kv_cache_bytes(mcfg.num_layers, cfg.batch_size, mcfg.num_heads,
                                                           mcfg.head_dim, frame_tokens, past, kv_dtype)
    out["align"] = 0
    if rollouts and cfg.align_weight > 0:
        shaped = [m for m in ((critic,) if cfg.aligns_to_frozen_critic else (teacher,)) + (critic, student)
                  if m is not None and hasattr(m, "cfg")]
        frames = cfg.num_frames
        if (score_kind or cfg.teacher_kind) == "teacher_forcing":   # [clean context | noisy clip], last clean dropped
            frames = 2 * cfg.num_frames - cfg.chunk_frames
        fcfg = shaped[0].cfg                              # the forward stops after align_block (features_only)
        out["align"] = activations(fcfg, frames // p[0] * frame_tokens, min(cfg.align_block + 1, fcfg.num_layers))
    out["features"] = 0
    if critic is not None and cfg.aligns_to_frozen_critic and not offloaded:
        out["features"] = sum(p.numel() * p.element_size() for p in critic.parameters()) // shards
    return out


def rollout_past_frames(policy, num_frames: int, chunk_frames: int) -> int:
    """Past frames the chunks of a `num_frames` rollout attend to, summed over its chunks (what their gathered K/V
    copies hold), in closed form: a chunk of n frames at f0 sees min(f0, W − n) earlier frames under a window of W
    frames (salt_core.kv_cache.attended_frames), all f0 under a global cache. Sizes may be hostile: no loop."""
    full, last = divmod(num_frames, chunk_frames)
    window = None if policy.window_frames == -1 else policy.capacity_frames

    def chunks(count: int, size: int) -> int:      # Σ_{k<count} min(k·c, W − size)
        cap = None if window is None else max(0, window - size)
        linear = count if cap is None else max(0, min(count, cap // chunk_frames + 1))
        return chunk_frames * linear * (linear - 1) // 2 + (count - linear) * (cap or 0)

    if last == 0:
        return chunks(full, chunk_frames)
    return chunks(full, chunk_frames) + (full * chunk_frames if window is None else
                                         min(full * chunk_frames, max(0, window - last)))


def distill_memory_bytes(cfg, student, critic=None, teacher=None, *, shards: int = 1,
                         models_on_device: bool = False, sharded: bool = None, rollouts: bool = True,
                         compute_dtype: torch.dtype = None, score_kind: str = None) -> int:
    """The total of `distill_memory_breakdown`: bytes one rank still allocates."""
    return sum(distill_memory_breakdown(cfg, student, critic, teacher, shards=shards, models_on_device=models_on_device,
                                        sharded=sharded, rollouts=rollouts, compute_dtype=compute_dtype,
                                        score_kind=score_kind).values())


def window_fix(cfg) -> str:
    """The first fix of a memory refusal when the cache window is longer than the clip (its slots are allocated but
    never filled: a global cache holds the same), else "" (also for a bidirectional student, which has no cache)."""
    if cfg.student_kind == "causal" and cfg.local_attn_frames > cfg.num_frames:
        return (f"set local_attn_frames to at most num_frames={cfg.num_frames} or to -1 (local_attn_frames="
                f"{cfg.local_attn_frames} allocates a window the {cfg.num_frames}-frame clip never fills); ")
    return ""


def check_distill_memory(cfg, student, critic, device, *, teacher=None, shards: int = 1,
                         sharded: bool = False, score_kind: str = None) -> None:
    """MemoryError before training when one rank's share cannot fit in the free memory of `device`, with the fix."""
    from ..salt_core.validate import available_memory, check_memory
    explicit = cfg.memory_limit_gib > 0
    limit = int(cfg.memory_limit_gib * (1 << 30)) if explicit else available_memory(device)
    on_device = str(device).startswith("cuda")
    check_memory(f"distillation at batch_size={cfg.batch_size}, num_frames={cfg.num_frames}, "
                 f"{cfg.height}×{cfg.width} latents" + (f", sharded over {shards} ranks" if shards > 1 else ""),
                 distill_memory_bytes(cfg, student, critic, teacher, shards=shards, models_on_device=on_device,
                                      sharded=sharded, score_kind=score_kind,
                                      compute_dtype=torch.bfloat16 if on_device and cfg.autocast_bf16 else None),
                 limit, where="DistillConfig",
                 limit_what=f"memory_limit_gib={cfg.memory_limit_gib:g}" if explicit else f"free memory on {device}",
                 fix=window_fix(cfg) + "lower num_frames, height / width or batch_size (use grad_accum for a larger "
                     "effective batch), set grad_checkpointing=true, or shard over more GPUs (torchrun, "
                     "sharding=full) with teacher_offload; if the estimate is too cautious for your setup, set "
                     "memory_limit_gib (--memory-limit-gib) to the GiB you allow")


def ode_pairs_bytes(cfg, student) -> int:
    """Host bytes of the ODE-init pairs: every trajectory's states at the K grid levels, its end point and its
    text context, in float32 (K = cfg.grid_steps; one clip of slack)."""
    mcfg = student.cfg
    clip = mcfg.in_dim * cfg.num_frames * cfg.height * cfg.width
    return cfg.ode_pairs * ((cfg.grid_steps + 2) * clip + mcfg.text_len * mcfg.text_dim) * 4


def check_ode_init_memory(cfg, student, device, teacher=None) -> None:
    """MemoryError before an ODE initialisation when its training state (the student's weights, gradients, AdamW
    moments, EMA and activations, and the teacher, on `device`) or its cached teacher trajectories (host memory)
    cannot fit, with the estimate, the limit and the fix."""
    from ..salt_core.validate import available_memory, check_memory
    explicit = cfg.memory_limit_gib > 0
    limit_what = f"memory_limit_gib={cfg.memory_limit_gib:g}"
    on_device = str(device).startswith("cuda")
    check_memory(f"ODE initialisation at batch_size={cfg.batch_size}, num_frames={cfg.num_frames}, "
                 f"{cfg.height}×{cfg.width} latents",
                 distill_memory_bytes(cfg, student, None, teacher, models_on_device=on_device, rollouts=False),
                 int(cfg.memory_limit_gib * (1 << 30)) if explicit else available_memory(device),
                 where="OdeInitConfig", limit_what=limit_what if explicit else f"free memory on {device}",
                 fix="lower num_frames, height / width or batch_size, or set grad_checkpointing=true; if the "
                     "estimate is too cautious for your setup, set memory_limit_gib (--memory-limit-gib)")
    check_memory(f"{cfg.ode_pairs} ODE pairs of {cfg.num_frames} frames at {cfg.height}×{cfg.width}",
                 ode_pairs_bytes(cfg, student),
                 int(cfg.memory_limit_gib * (1 << 30)) if explicit else available_memory("cpu"),
                 where="OdeInitConfig", limit_what=limit_what if explicit else "free host memory",
                 fix="lower ode_pairs, num_frames or height / width, or set memory_limit_gib (--memory-limit-gib)")


MODEL_SOURCES = ("teacher", "student_init", "critic_init")
NAMED_SOURCES = ("toy", EXACT, "teacher")    # a world's teacher, the closed form, a copy of the teacher


FILE_EXAMPLES = {   # what a folder given as a model source should have been (a sharded release is not read)
    "teacher": "ComfyUI's single-file wan2.1_t2v_14B_bf16.safetensors (a release split into shards is not read)",
    "student_init": "<an ode-init run>/export/student.safetensors",
    "critic_init": "wan2.1_t2v_1.3B_bf16.safetensors"}


def check_model_sources(cfg, where: str) -> None:
    """Refuse a model source that names no file, before a run folder is entered (a refused start left config.json,
    .lock and checkpoints/ behind): a missing path, or a folder (a model is read from one file: a folder of shards
    failed only once the models were built); the named sources (`toy`, `exact`, `teacher`) pass."""
    for name in MODEL_SOURCES:
        value = getattr(cfg, name, None)
        if not value or value in NAMED_SOURCES or os.path.isfile(value):
            continue
        named = "'toy' or 'exact'" if name == "teacher" else "'teacher' (a trainable copy of the teacher)"
        if os.path.isdir(value):
            exported = os.path.join(value, "export", "student.safetensors")
            example = ("<that folder>/export/student.safetensors (the run's student)" if os.path.isfile(exported) else
                       FILE_EXAMPLES[name])
            raise IsADirectoryError(
                f"{where}.{name}={quote(value)} is a folder; a model is read from one checkpoint file (any supported "
                f"layout): pass the file, e.g. {example}, or {named}")
        raise FileNotFoundError(f"{where}.{name}={quote(value)}: no such file; pass a checkpoint file (any "
                                f"supported layout) or {named}")
