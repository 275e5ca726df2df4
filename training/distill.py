"""The distillation job: DMD, SC-DMD and Salt's cache-aware training (one function, two front doors).

`run_distillation(cfg, out_dir, ...)` is called by the CLI (`python -m comfyui_salt distill`)
and by the ComfyUI node. Per iteration (docs/method.md §1–3, the released trainer's loop; `it` counts iterations):
- every `critic_ratio`-th iteration first one generator update — rollout with grad at the exit step,
  DMD against teacher (standard CFG) and critic scoring the whole clip (or chunk by chunk, an option),
  + λ_SC·L_SC on K = sc_steps rollouts, + the feature alignment to a denser reference rollout when K = 2
  and exit = 1 from iteration `align_start_iter` on; then the EMA update once the EMA exists;
- every iteration: one critic update on a fresh no-grad student rollout (flow loss);
- the EMA is created at the end of iteration `ema_start_iter` (released `ema_start_step`).
The generator step and each critic step draw their own K, exit index and SC triplet (as released),
identical on every rank: seeded from (seed, iteration, role).
`Distiller` is the job; the loop around it (automatic resume, atomic checkpoints, JSONL log, progress bar,
stops, NaN stop) is training/loop.py, the run folder training/runs.py, seeds, EMA and schedules training/optim.py.
"""
import copy
import json
import logging
import os
from dataclasses import asdict

import torch

from ..salt_core.kv_cache import CachePolicy
from ..salt_core.model import WanModel
from ..salt_core.losses import (DMDLoss, FeatureAlignmentLoss, SemigroupLoss, critic_flow_loss,
                                sample_alignment_timesteps, sample_dmd_timesteps, sample_exit_index,
                                sample_rollout_steps, sc_triplet)
from ..salt_core.rollout import rollout_bidirectional, rollout_reference, rollout_self_forcing
from ..salt_core.schedules import add_noise, get_sigmas_fewstep, randn_like
from ..salt_core.scorenet import ScoreNet
from ..salt_core.validate import check_count
from .diagnostics import GradProbes
from .distill_config import CONFIGS_TOTAL_BATCH, RELEASED_CLIPS_PER_UPDATE, DistillConfig
from .ode_init_config import OdeInitConfig
from .distill_models import DistillWorld, build_models, build_prompts, check_world, resolve_teacher_kind
from .distributed import (any_rank, device_mesh, end_process_group, full_optimizer_state, full_state_dict, in_turns,
                          is_sharded, load_full_optimizer_state, load_full_state_dict, peers_lost_message,
                          process_info, shard_model)
from .loop import TrainingLoop, check_loss_terms, mark_at_boundary, stop_step, torch_threads
from .optim import EMA, step_generators, step_seed
from .runs import OVERRIDE_HINT, open_run
from .validate import check_distill_memory, check_model_sources, check_whole_chunks, inactive_terms, shard_count

log = logging.getLogger("salt.distill")
ROLES = ("critic", "gen")   # the step roles of an iteration, in the seed of their draws
COUNT_KEYS = ("gen_updates", "sc_updates", "align_updates", "sc_ratio_sum", "sc_ratio_n", "align_ratio_sum",
              "align_ratio_n")


def alignment_acts(cfg: DistillConfig, it: int, K: int, exit_index: int, ref8: bool = True) -> bool:
    """Whether a generator step at iteration `it` with K steps and this exit index carries the feature alignment
    (docs/method.md §3): it ≥ align_start_iter (mmd_start_step), an exit past the first (the release's gate,
    exit index ≠ 0), and K = 2, or with align_k4 K = 4 on the steps whose coin `ref8` came up (the release's
    commented-out K = 4 branch takes an 8-step reference on half of them)."""
    return (cfg.align_weight > 0 and it >= cfg.align_start_iter and exit_index >= 1
            and (K == 2 or (cfg.align_k4 and K == 4 and ref8)))


def ema_due(cfg: DistillConfig, it: int) -> bool:
    """Whether the EMA exists after iteration `it` (created at the end of iteration ema_start_iter, as released)."""
    return it >= cfg.ema_start_iter


def run_summary(counts: dict, score_kind: str) -> dict:
    """A run's summary.json from its counts (`Distiller.tally`'s, also stored in every checkpoint's state): generator
    updates, SC and alignment update counts, their mean grad ratios (None where the term never acted)."""
    out = {"gen_updates": int(counts["gen_updates"]), "score_kind": score_kind}
    for term in ("sc", "align"):
        out[f"{term}_updates"] = int(counts[f"{term}_updates"])
        n = counts[f"{term}_ratio_n"]
        out[f"{term}_dmd_grad_ratio_mean"] = counts[f"{term}_ratio_sum"] / n if n else None
    return out


class Distiller:
    """Models, optimisers and losses of one run; `iteration(it)` performs one loop iteration."""

    def __init__(self, cfg: DistillConfig, teacher, student, critic, prompts, rank: int = 0, world_size: int = 1,
                 score_kind: str = None, features=None):
        """score_kind: how teacher and critic score a clip (a ScoreNet kind); default `cfg.teacher_kind`, which
        must then not be "auto" (run_distillation resolves it from the teacher file). features: the frozen network
        whose block features the alignment compares (default the teacher; an exact teacher has none)."""
        self.cfg, self.rank, self.world_size, self.prompts = cfg, rank, world_size, prompts
        self.clips_per_update = cfg.batch_size * cfg.grad_accum * world_size   # what one generator update averages
        self.resumed_clips = None   # the clips per update of the checkpoint resumed from (None: fresh, or older)
        self.teacher, self.student, self.critic = teacher, student, critic
        self.score_kind = score_kind or cfg.teacher_kind
        self.real = ScoreNet(teacher, self.score_kind, cfg.chunk_frames)
        self.fake = ScoreNet(critic, self.score_kind, cfg.chunk_frames)
        self.features = self.real if features is None else ScoreNet(features, self.score_kind, cfg.chunk_frames)
        teacher.requires_grad_(False).eval()
        student.gradient_checkpointing = critic.gradient_checkpointing = cfg.grad_checkpointing
        # the alignment's forward through the features network carries grad (align_term): checkpointed too, or it
        # keeps every block's activations of the clip (~30 GiB of a 1.3B teacher at 9 latent frames of 60×104, scaled
        # from a CPU measurement; docs/training.md "GPU check")
        self.features.model.gradient_checkpointing = cfg.grad_checkpointing
        self.opt_gen = torch.optim.AdamW(student.parameters(), lr=cfg.lr_gen, betas=(cfg.beta1, cfg.beta2),
                                         weight_decay=cfg.weight_decay)
        self.opt_critic = torch.optim.AdamW(critic.parameters(), lr=cfg.lr_critic,
                                            betas=(cfg.beta1_critic, cfg.beta2_critic), weight_decay=cfg.weight_decay)
        self.ema = None
        self.dmd = DMDLoss(cfg.guidance_scale)
        self.sc = SemigroupLoss(cfg.sc_weight, cfg.sc_symmetric)
        self.align = FeatureAlignmentLoss(cfg.align_delta, cfg.align_weight)
        self.policy = CachePolicy(window_frames=cfg.local_attn_frames, sink_frames=cfg.sink_frames,
                                  max_frames=cfg.num_frames)
        self.cache = None
        if cfg.student_kind == "causal":   # preallocated once, reused by every rollout, in the dtype K/V come in
            with self._autocast():
                self.cache = student.new_cache(cfg.batch_size, self.policy, (cfg.height, cfg.width))
                self.ref_cache = student.new_cache(cfg.batch_size, self.policy, (cfg.height, cfg.width))
        self.gen_step = 0                                # generator updates: the loop's progress counter
        self.it = 0                                      # trainer iterations done (one critic update each)
        self.counts = dict.fromkeys(COUNT_KEYS, 0.0)   # per-run tallies of what acted (saved with the state)
        self.probes = GradProbes(cfg.grad_probes)       # gradient ratios and cosines (training/diagnostics.py)

    # -- pieces ---------------------------------------------------------------------------------
    def draws(self, it: int, role: str) -> dict:
        """K, exit index and SC triplet of the `role` ("gen" or "critic") step of iteration `it`.

        Each step draws its own (the released trainer samples them inside every generator and critic
        loss); seeded from (seed, it, role) with rank 0, so every rank draws the same.
        """
        shared = torch.Generator().manual_seed(step_seed(self.cfg.seed, 0, it, ROLES.index(role)))
        K = sample_rollout_steps(shared, self.cfg.step_choices, self.cfg.step_probs)
        exit_index = sample_exit_index(K, shared)
        grid = get_sigmas_fewstep(K, self.cfg.shift)
        triplet = None
        if role == "gen" and self.cfg.sc_weight > 0 and K == self.cfg.sc_steps:
            triplet = sc_triplet(exit_index, shared, grid)
            if triplet is not None and triplet.sigma_s > self.cfg.sc_exit_sigma_max:   # drawn all the same
                triplet = None
        out = {"K": K, "exit": exit_index, "grid": grid, "triplet": triplet, "it": it}
        if role == "gen" and self.cfg.align_k4 and K == 4:     # drawn last: the other draws stay as without it
            out["ref8"] = bool(torch.rand((), generator=shared) < 0.5)
        return out

    def aligns(self, d: dict) -> bool:
        """Whether the generator step with draws `d` carries the feature alignment."""
        return alignment_acts(self.cfg, d["it"], d["K"], d["exit"], d.get("ref8", True))

    def rollout(self, noise, context, d, grad, gen, on_exit=None, cache=None):
        """Student rollout x0 (B, C, F, H, W) for draws `d`."""
        if self.cfg.student_kind == "bidirectional":
            return rollout_bidirectional(self.student, noise, context, d["grid"], d["exit"], generator=gen,
                                         grad=grad, on_exit=on_exit)
        return rollout_self_forcing(self.student, noise, context, d["grid"], d["exit"], policy=self.policy,
                                    chunk_frames=self.cfg.chunk_frames, context_noise=self.cfg.context_noise,
                                    generator=gen, grad=grad, on_exit=on_exit, cache=cache or self.cache)

    def batch(self, rng, gen):
        """Prompts and initial noise for one micro-batch."""
        cfg = self.cfg
        _, ctx, unc = self.prompts.sample(rng, cfg.batch_size)
        c = self.student.cfg.in_dim
        noise = torch.randn(cfg.batch_size, c, cfg.num_frames, cfg.height, cfg.width, generator=gen)
        dev = self.student.patch_embedding.weight.device
        return ctx.to(dev), unc.to(dev), noise.to(dev)

    def _autocast(self):
        enabled = self.cfg.autocast_bf16 and torch.cuda.is_available()
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)

    # -- updates --------------------------------------------------------------------------------
    def dmd_term(self, x, ctx, unc, gen):
        """(L_DMD, stats) of student clips x (B, C, F, H, W) WITH grad: noise x at one shifted level per clip and
        let teacher (cond, uncond; standard CFG) and critic score the noised clip as `score_kind` says."""
        sigma = (sample_dmd_timesteps(x.shape[0], gen, self.cfg.shift) / 1000.0).to(x.device)
        eps = randn_like(x, gen)
        x_t = add_noise(x.detach(), eps, sigma.view(-1, 1, 1, 1, 1))
        with torch.no_grad():
            clean = x.detach()
            real_c = self.real.x0(x_t, sigma, ctx, clean)
            real_u = self.real.x0(x_t, sigma, unc, clean)
            fake = self.fake.x0(x_t, sigma, ctx, clean)
        return self.dmd(x, real_c, real_u, fake)

    def generator_loss(self, d, rng, gen):
        """(L_DMD + λ·L_SC + w·L_align, stats) of one generator micro-batch (docs/method.md §1–3): SC on the exit
        step of the chunks its triplet covers (K = sc_steps), the alignment on the steps `aligns` picks. Stats say
        which terms acted (`sc_acted`, `aligned`); `self.probes` (training/diagnostics.py) adds how strongly."""
        ctx, unc, noise = self.batch(rng, gen)
        exits = []                                       # (chunk, L_SC of the chunk, v1) at the exit step

        def on_exit(chunk, x_s, v1, velocity_fn):
            if d["triplet"] is not None:
                loss, st = self.sc(x_s, v1, velocity_fn, d["triplet"])
                exits.append((chunk, loss, v1))
                stats.update(st)
        stats = {}
        roll = self.rollout(noise, ctx, d, True, gen, on_exit)
        x = roll.x0
        total, st = self.dmd_term(x, ctx, unc, gen)
        stats.update(st)
        self.probes.dmd(total, x)
        if exits:
            l_sc = torch.stack([loss for _, loss, _ in exits]).mean()
            total = total + self.sc.weight * l_sc
            stats["sc_loss"] = l_sc.item()
            self.probes.sc(exits, self.sc.weight, roll.exit_sigma, stats)
        stats["sc_acted"] = float(bool(exits))
        aligned = self.aligns(d)
        if aligned:
            l_al, st = self.align_term(self.probes.watch_align(x), noise, ctx, d, roll, gen)
            total = total + self.align.weight * l_al
            stats.update(st)
        stats["aligned"] = float(aligned)
        return total, stats

    def align_term(self, x, noise, ctx, d, roll, gen):
        """(L_align, stats): block features of the student's clips x against those of a denser reference rollout
        from the same noise (2K steps, the same re-noise up to the exit: docs/method.md §3), both noised alike."""
        cfg = self.cfg
        dense = get_sigmas_fewstep(2 * d["K"], cfg.shift)
        if cfg.student_kind == "causal":
            ref = rollout_reference(self.student, noise, ctx, d["grid"], d["exit"], dense, roll.renoise,
                                    policy=self.policy, chunk_frames=cfg.chunk_frames, coupling=cfg.align_coupling,
                                    context_noise=cfg.context_noise, generator=gen, cache=self.ref_cache)
        else:
            with torch.no_grad():
                ref = rollout_bidirectional(self.student, noise, ctx, dense, 2 * d["exit"], generator=gen,
                                            grad=False).x0
        sigma_f = (sample_alignment_timesteps(cfg.batch_size, gen, cfg.shift) / 1000.0).to(x.device)
        eps_f = randn_like(x, gen)
        s5 = sigma_f.view(-1, 1, 1, 1, 1)
        _, f_stu = self.features.velocity(add_noise(x, eps_f, s5), sigma_f, ctx, x.detach(), cfg.align_block,
                                          features_only=True)   # the blocks after align_block and the head: not run
        with torch.no_grad():
            _, f_ref = self.features.velocity(add_noise(ref, eps_f, s5), sigma_f, ctx, ref, cfg.align_block,
                                              features_only=True)
        return self.align(f_stu, f_ref, frames=cfg.num_frames)

    def critic_loss(self, d, rng, gen):
        """(critic flow loss, stats) of one critic micro-batch on a no-grad student rollout."""
        ctx, _, noise = self.batch(rng, gen)
        with torch.no_grad():
            x = self.rollout(noise, ctx, d, False, gen).x0
        sigma = (sample_dmd_timesteps(self.cfg.batch_size, gen, self.cfg.shift) / 1000.0).to(x.device)
        eps = randn_like(x, gen)
        x_t = add_noise(x, eps, sigma.view(-1, 1, 1, 1, 1))
        fake = self.fake.x0(x_t, sigma, ctx, x)
        loss = critic_flow_loss(fake, x_t, x, eps, sigma)
        return loss, {"critic_loss": loss.item()}

    def _check_finite(self, loss, stats, tag, it):
        """check_loss_terms; sharded, every rank raises when any rank's terms are not finite (the next collective
        would otherwise wait for the rank that stopped)."""
        if not self.sharded:
            check_loss_terms(loss, stats, tag, it)
            return
        error = None
        try:
            check_loss_terms(loss, stats, tag, it)
        except FloatingPointError as e:
            error = e
        if any_rank(error is not None):
            raise error or FloatingPointError(f"{tag} step at iteration {it}: a non-finite loss on another rank")

    def _step(self, loss_fn, model, opt, it, tag, d, interrupt=None):
        """Accumulate `grad_accum` micro-batches of loss_fn, clip, step; returns stats.

        interrupt (None: not called): called before every micro-batch after the first, where the iteration has
        changed nothing yet (the caller passes none once an optimizer of this iteration has stepped); what it
        raises leaves the gradients cleared, marked for the loop as raised at the iteration's boundary.
        """
        opt.zero_grad(set_to_none=True)
        self.probes.start_step()   # probes of a step that failed before its backward must not leak into this one
        stats = {}
        for micro in range(self.cfg.grad_accum):
            if micro > 0 and interrupt is not None:
                try:
                    interrupt()
                except KeyboardInterrupt as reason:
                    opt.zero_grad(set_to_none=True)
                    raise mark_at_boundary(reason)
            # the global micro-batch: N ranks see the clips one process sees with N × grad_accum micro-batches
            gen, rng = step_generators(self.cfg.seed, 0, it, self.rank * self.cfg.grad_accum + micro,
                                       int(tag == "gen"))
            with self._autocast():
                loss, st = loss_fn(d, rng, gen)
            self._check_finite(loss, st, tag, it)
            (loss / self.cfg.grad_accum).backward()
            stats.update({k: stats.get(k, 0.0) + v / self.cfg.grad_accum for k, v in st.items()})
        self.probes.after_backward(self.cfg.grad_accum, stats)
        # sharded models: FSDP2 has reduced the gradients (mean over ranks) during backward; the norm is global
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        stats[f"{tag}_grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        opt.step()
        opt.zero_grad(set_to_none=True)   # not held through the other model's step (5.3 GiB for a 1.3B critic)
        return stats

    def iteration(self, it: int, interrupt=None) -> dict:
        """One loop iteration, in the released order: a generator update every critic_ratio-th iteration (then
        the EMA update, once the EMA exists), a critic update, and the EMA's creation at `ema_start_iter`.
        interrupt: called between the micro-batches of the first update (`_step`); a Cancel in the critic's
        update of a generator iteration waits for the iteration's end (half a unit cannot be saved)."""
        stats = {}
        generator = it % self.cfg.critic_ratio == 0
        if generator:
            d = self.draws(it, "gen")
            stats.update(K=d["K"], exit=d["exit"])
            self.student.train()
            stats.update(self._step(self.generator_loss, self.student, self.opt_gen, it, "gen", d, interrupt))
            self.gen_step += 1
            self.tally(stats)
            if self.ema is not None:
                self.ema.update(self.student)
        d = self.draws(it, "critic")
        stats.update(critic_K=d["K"], critic_exit=d["exit"])
        stats.update(self._step(self.critic_loss, self.critic, self.opt_critic, it, "critic", d,
                                None if generator else interrupt))
        if self.ema is None and ema_due(self.cfg, it):
            self.ema = EMA(self.student, self.cfg.ema_decay)
        return stats

    # -- the training loop's job protocol (training/loop.py) -----------------------------------
    @property
    def step(self) -> int:
        """The loop's progress counter: generator updates."""
        return self.gen_step

    def advance(self, interrupt=None):
        """Iteration `it`; its stats (with the iteration count) if it made a generator update, else None.
        interrupt: see `iteration`."""
        before = self.gen_step
        stats = self.iteration(self.it, interrupt)
        self.it += 1
        return {"iteration": self.it, **stats} if self.gen_step != before else None

    def tally(self, stats: dict) -> None:
        """Add one generator update's stats to the run's counts of SC / alignment updates and their grad ratios."""
        c = self.counts
        c["gen_updates"] += 1
        for term in ("sc", "align"):
            acted = stats.get("sc_acted" if term == "sc" else "aligned", 0.0) > 0
            c[f"{term}_updates"] += acted
            ratio = stats.get(f"{term}_dmd_grad_ratio")
            if acted and ratio is not None:
                c[f"{term}_ratio_sum"] += ratio
                c[f"{term}_ratio_n"] += 1

    def summary(self) -> dict:
        """What acted over the run: generator updates, SC and alignment update counts, their mean grad ratios."""
        return run_summary(self.counts, self.score_kind)

    # -- state ----------------------------------------------------------------------------------
    def state(self):
        """({student, critic[, ema]: state_dict}, {optimizer states, counters}) for a checkpoint: full tensors, the
        same for any number of ranks (sharded models: a collective on every rank, rank 0 gets the tensors)."""
        tensors = {"student": full_state_dict(self.student), "critic": full_state_dict(self.critic)}
        if self.ema is not None:
            tensors["ema"] = self.ema.state_dict()
        return tensors, {"opt_gen": full_optimizer_state(self.student, self.opt_gen),
                         "opt_critic": full_optimizer_state(self.critic, self.opt_critic),
                         "gen_step": self.gen_step, "counts": dict(self.counts), "iteration": self.it,
                         "clips_per_update": self.clips_per_update}

    @property
    def sharded(self) -> bool:
        """Whether the models are FSDP2 shards (checkpoints then go through torch.distributed.checkpoint)."""
        return is_sharded(self.student)

    def sharded_state(self):
        """(nested state dicts of this rank's shards: student, critic, their optimizers[, ema]; counters) for
        torch.distributed.checkpoint: the same keys on every rank, each rank holding its own shards."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
        tensors = {"student": get_model_state_dict(self.student), "critic": get_model_state_dict(self.critic)}
        for key, model, opt in (("opt_gen", self.student, self.opt_gen), ("opt_critic", self.critic, self.opt_critic)):
            if opt.state:   # before its first update an optimizer has nothing to save (and no dummy step is taken)
                tensors[key] = get_optimizer_state_dict(model, opt)
        if self.ema is not None:
            tensors["ema"] = dict(zip(self.ema.names, self.ema.params))
        return tensors, {"gen_step": self.gen_step, "counts": dict(self.counts), "iteration": self.it,
                         "clips_per_update": self.clips_per_update, "ema": self.ema is not None,
                         "optimizers": [k for k in tensors if k.startswith("opt_")]}

    def load_sharded(self, path: str, state: dict):
        """Restore a torch.distributed.checkpoint folder written by `sharded_state` on any number of ranks, into
        this job's layout (sharded or plain: DCP reshards on read)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_optimizer_state_dict, set_model_state_dict,
                                                             set_optimizer_state_dict)
        if state.get("ema") and self.ema is None:
            self.ema = EMA(self.student, self.cfg.ema_decay)
        tensors, _ = self.sharded_state()
        pairs = {"opt_gen": (self.student, self.opt_gen), "opt_critic": (self.critic, self.opt_critic)}
        for key in state.get("optimizers", list(pairs)):     # a fresh optimizer's template (its state is replaced)
            tensors[key] = get_optimizer_state_dict(*pairs[key])
        dcp.load(tensors, checkpoint_id=path)
        set_model_state_dict(self.student, tensors["student"])
        set_model_state_dict(self.critic, tensors["critic"])
        for key in state.get("optimizers", list(pairs)):
            set_optimizer_state_dict(*pairs[key], tensors[key])
        self.gen_step, self.it = int(state["gen_step"]), int(state["iteration"])
        self.counts.update(state.get("counts", {}))
        self.resumed_clips = state.get("clips_per_update")

    def load(self, tensors, state):
        """Restore `state()`'s output (read on every rank), into plain or sharded models."""
        load_full_state_dict(self.student, tensors["student"])
        load_full_state_dict(self.critic, tensors["critic"])
        if "ema" in tensors:
            self.ema = EMA(self.student, self.cfg.ema_decay)
            self.ema.load_state_dict(tensors["ema"])
        load_full_optimizer_state(self.student, self.opt_gen, state["opt_gen"])
        load_full_optimizer_state(self.critic, self.opt_critic, state["opt_critic"])
        self.gen_step = int(state["gen_step"])
        self.it = int(state["iteration"])
        self.counts.update(state.get("counts", {}))
        self.resumed_clips = state.get("clips_per_update")

    def student_for_inference(self):
        """The EMA student if EMA has started, else a copy of the student, in eval mode: a plain (unsharded) model
        on every rank (sharded: gathered, a collective)."""
        if is_sharded(self.student):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            full = get_model_state_dict(self.student, options=StateDictOptions(full_state_dict=True))
            ref = self.student.patch_embedding.weight
            model = WanModel(self.student.cfg).to(device=ref.device, dtype=ref.dtype)
            model.load_state_dict({k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in full.items()})
        else:
            model = copy.deepcopy(self.student)
        if self.ema is not None:
            self.ema.copy_to(model)
        return model.eval()


def run_distillation(cfg: DistillConfig, out_dir: str, *, max_gen_steps: int = None, callback=None,
                     quiet: bool = False, device=None, allow_changed_settings: bool = False,
                     world: DistillWorld = None, interrupt=None):
    """Run (or resume) a distillation job in `out_dir`; returns the student for inference (EMA if any).

    `device` overrides the process's own pick (the local rank's GPU when CUDA is present, else the CPU;
    `training.distributed.process_info`) for a single process, e.g. the ComfyUI node passes ComfyUI's device so
    `--cpu` is honoured.

    callback(dict) receives progress after every generator step (gen_step, total, stats) and the
    preview samples at evaluation time; it may raise (e.g. KeyboardInterrupt) to stop — the job
    then saves a resumable checkpoint first. interrupt() is called before every trainer iteration (the critic's
    too: critic_ratio of them a generator step) and between the micro-batches of an iteration's first update, and
    may raise KeyboardInterrupt the same way (a UI's Cancel): the iteration it stops is thrown away whole.

    `world` lends a toy-world run its teacher ("toy"), prompts and evaluation (`toy.jobs.distill_world()`);
    real-scale runs need none.

    A folder holding checkpoints of a run with other settings is refused unless `allow_changed_settings`;
    one process at a time may use a folder (training.runs.open_run). Under torchrun, a process group this call
    started ends when the job has finished on every rank (training.distributed.end_process_group).
    """
    if not isinstance(cfg, DistillConfig):
        raise TypeError(f"run_distillation takes a DistillConfig, not {type(cfg).__name__}"
                        + ("; an ODE initialisation runs with training.ode_init.run_ode_init"
                           if isinstance(cfg, OdeInitConfig) else ""))
    if max_gen_steps is not None:
        check_count("max_gen_steps", max_gen_steps, where="run_distillation")
    check_world(cfg, world, "run_distillation")
    check_model_sources(cfg, type(cfg).__name__)
    rank = process_info().rank
    with open_run(cfg, out_dir, allow_changes=allow_changed_settings, rank=rank) as run, torch_threads(cfg.threads):
        model = _run_distillation(cfg, run, max_gen_steps, callback, quiet, device, world, allow_changed_settings,
                                  interrupt)
    end_process_group()   # a finished job on every rank: the group this process started ends with it
    return model


def check_clips_per_update(job, allow_changes: bool, distributed: bool) -> None:
    """A resume whose generator updates would average another number of clips than the checkpoint's did (another
    process count, batch_size or grad_accum): refused, naming the `--grad-accum` that keeps the old number where one
    does, unless settings may change (then said). Every rank decides alike (a refusal ends the process group first)."""
    before, now = job.resumed_clips, job.clips_per_update
    if before is None or before == now:
        return
    cfg, procs = job.cfg, job.world_size
    said = (f"the checkpoint's generator updates averaged {before} clips; these settings give {now} "
            f"(batch_size {cfg.batch_size} × grad_accum {cfg.grad_accum} × {procs} process{'es' * (procs != 1)})")
    if allow_changes:
        log.warning("%s: going on with %d (allowed to change settings)", said, now)
        return
    keep, rem = divmod(before, cfg.batch_size * procs)
    fix = (f"set --grad-accum {keep} to keep {before}" if keep >= 1 and not rem else
           f"no grad_accum keeps {before} on {procs} process{'es' * (procs != 1)} at batch_size {cfg.batch_size}")
    if distributed:
        end_process_group()      # every rank refuses here: the group process_info started ends first
    raise ValueError(f"{said}. To go on, allow changed settings ({OVERRIDE_HINT}) and {fix}, or leave it to train on "
                     f"{now}")


def _models_on_rank(cfg, world, info, device, mesh):
    """(teacher, student, critic, features, score_kind) of this rank: built whole on the host, checked against
    `device`'s memory, then (under a launcher) sharded over `mesh` with FSDP2 (training/distributed.py) before the
    optimisers see the parameters, so no GPU holds a whole model and the host keeps only the shards; features: the
    critic's frozen initial copy the alignment reads (an exact teacher has none), else None."""
    # Sharded with bf16 compute, FSDP2 gathers every parameter in bf16 for its forward (shard_model's mp_policy): a
    # frozen teacher stored in bf16 computes the same numbers in half the host and GPU memory (14B: 28 GB, not 56)
    bf16_teacher = info.distributed and cfg.autocast_bf16 and device.type == "cuda"
    teacher, student, critic = build_models(cfg, world, torch.bfloat16 if bf16_teacher else torch.float32)
    score_kind = resolve_teacher_kind(cfg, world)
    check_whole_chunks(cfg, "DistillConfig", score_kind)   # "auto" known now
    check_distill_memory(cfg, student, critic, device, teacher=teacher,
                         shards=shard_count(cfg.sharding, info.world_size, info.local_world_size),
                         sharded=info.distributed, score_kind=score_kind)
    features = copy.deepcopy(critic).requires_grad_(False).eval() if cfg.aligns_to_frozen_critic else None
    if info.distributed:   # each rank's shards alone move to its device (or stay on the host: teacher_offload)
        bf16 = cfg.autocast_bf16 and device.type == "cuda"
        for model in (student, critic):
            shard_model(model, mesh, bf16=bf16)
        for frozen in (teacher, features):
            if frozen is not None and list(frozen.parameters()):
                shard_model(frozen.requires_grad_(False), mesh, bf16=bf16, cpu_offload=cfg.teacher_offload)
    teacher, student, critic = (m if is_sharded(m) else m.to(device) for m in (teacher, student, critic))
    features = None if features is None or is_sharded(features) else features.to(device)
    return teacher, student, critic, features, score_kind


def _run_distillation(cfg, run, max_gen_steps, callback, quiet, device, world, allow_changes=False, interrupt=None):
    """`run_distillation` inside the run folder: the job, run by training.loop."""
    out_dir = run.path
    info = process_info()
    rank, world_size = info.rank, info.world_size
    if device is not None and info.distributed:
        raise ValueError(f"run_distillation(device={device}) with {world_size} processes: each rank takes its local "
                         f"rank's device; leave device unset under torchrun")
    device = torch.device(device) if device is not None else info.device
    mesh = device_mesh(info, cfg.sharding) if info.distributed else None   # made by every rank at once
    # the processes of a node build their models whole on the host and shard them one at a time (in_turns)
    built = in_turns(info, lambda: _models_on_rank(cfg, world, info, device, mesh))
    teacher, student, critic, features, score_kind = built
    # rank 0 embeds a real-scale run's prompts once (umT5-XXL: ~21 GiB of host memory), the others read its cache
    if info.distributed and rank != 0:
        torch.distributed.barrier()
    prompts = build_prompts(cfg, teacher, out_dir, world)
    if info.distributed and rank == 0:
        torch.distributed.barrier()
    job = Distiller(cfg, teacher, student, critic, prompts, rank, world_size,
                    score_kind=score_kind, features=features)
    log.info("teacher and critic score clips %s", "whole (bidirectional)" if job.score_kind == "bidirectional"
             else "chunk by chunk given the clean past (teacher forcing)")
    for sentence in inactive_terms(cfg, info.distributed):   # valid, but not what it reads as: said before step 1
        log.warning(sentence)
    clips = cfg.batch_size * cfg.grad_accum * world_size
    if not cfg.world and clips < RELEASED_CLIPS_PER_UPDATE:
        per_pass = cfg.batch_size * world_size
        log.warning("%d clip(s) per generator update (batch_size × grad_accum × processes); the release's launch "
                    "script averages %d (8 GPUs × batch 1) and its configs name %d (total_batch_size, Self Forcing's "
                    "64-GPU recipe, not read by its trainer): --grad-accum %d matches the first on this many "
                    "processes, %d the second", clips, RELEASED_CLIPS_PER_UPDATE, CONFIGS_TOTAL_BATCH,
                    -(-RELEASED_CLIPS_PER_UPDATE // per_pass), -(-CONFIGS_TOTAL_BATCH // per_pass))
    loop = TrainingLoop(run, "distill", quiet=quiet, step_key="gen_step", metadata={
        "salt_config": student.cfg.to_json(), "distill_config": json.dumps(asdict(cfg))})
    loop.resume(job, ["student", "critic"], optional=["ema"], readers=info.local_world_size if info.distributed else 1)
    check_clips_per_update(job, allow_changes, info.distributed)
    if max_gen_steps is not None and max_gen_steps <= job.gen_step < cfg.gen_steps:
        log.warning("the run is at generator step %d, at or past max_gen_steps=%d (a step of the run, counted from "
                    "its start): nothing to train; give a larger one to go on", job.gen_step, max_gen_steps)

    def evaluate():   # every rank evaluates (the inference copy is a collective when sharded); rank 0 writes the GIF
        preview = run.file(f"preview_{job.gen_step:06d}.gif") if rank == 0 else None
        return {} if world is None else world.evaluate(job.student_for_inference(), cfg, callback, preview)
    with peers_lost_message(rank, world_size, out_dir):
        loop.run(job, stop_step(cfg.gen_steps, max_gen_steps), checkpoint_every=cfg.checkpoint_every,
                 keep_every=cfg.checkpoint_keep_every,
                 log_every=cfg.log_every, callback=callback, evaluate=evaluate, eval_every=cfg.eval_every,
                 postfix={"dmd": "dmd_loss", "critic": "critic_loss"}, interrupt=interrupt,
                 nonfinite_hint="lower the learning rates or check the teacher")
    summary = job.summary()
    if rank == 0:
        with open(run.file("summary.json"), "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    log.info("done: %s", summary)
    return job.student_for_inference()
