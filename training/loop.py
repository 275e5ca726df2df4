"""One resumable training loop for every Salt job (teacher pre-training, ODE init, distillation), as edm2's
`training_loop`: the jobs differ only in what one step does.

A job is an object with
- `step`: its progress counter (optimizer steps; generator updates for distillation): checkpoints are named
  after it and `stop` bounds it;
- `advance(interrupt)`: one unit of work; returns its stats (a dict of floats) when `step` moved, None when it did
  not (a distillation iteration with only a critic update); raises FloatingPointError on a non-finite loss. A job
  whose unit is long may call `interrupt` (None: nothing to call) inside it, only where it has changed nothing
  yet (between micro-batches, before any optimizer step), and mark what that raises with `mark_at_boundary` (below);
- `state()` → ({name: state_dict} written as safetensors, {optimizer states, counters} written as state.pt)
  and `load(tensors, state)`, its inverse.

`TrainingLoop` owns everything around the step: resuming from the newest readable checkpoint, stop signals
(`check_stop`, below) and interrupts (saved at a step boundary, then re-raised), max_steps / max_seconds,
checkpoint_every, the progress bar, metrics.jsonl, evaluations (one a Cancel interrupted is made up on
resume) and the non-finite stop (the last good state saved when the step left one). Rank 0 writes
checkpoints; every rank logs to its own file. `RegressionJob` is the one-network job of the teacher and
the ODE init. Knows nothing of the losses, the worlds or ComfyUI.
"""
import contextlib
import logging
import math
import os
import signal
import time

import torch
from tqdm.auto import tqdm

from .distributed import any_rank, grace_is_settable, mean_over_ranks, torchrun_grace_s
from .optim import EMA, cosine_lr
from .runs import RunError, RunFolder, logged_eval_steps

log = logging.getLogger("salt.training")


_STOP = {"signal": None}


def mark_at_boundary(reason: BaseException) -> BaseException:
    """`reason` marked as raised inside `advance()` with the job's state still the last boundary's (what it
    accumulated thrown away): the loop then saves and stops as if it had been raised before the unit."""
    reason.salt_at_boundary = True
    return reason


def _request_stop(signum, frame):
    """Signal handler: the first signal asks the loop to stop at the next step boundary; a second one stops now."""
    if _STOP["signal"] is not None:
        raise KeyboardInterrupt(f"signal {signum} (second)")
    _STOP["signal"] = signum
    log.info("signal %d: stopping after this step and saving a checkpoint (send it again to stop at once)", signum)


def install_stop_handlers() -> None:
    """Make SIGINT and SIGTERM stop a training loop cleanly at a step boundary (checkpoint saved, rerun resumes).

    Call from the main thread of a command-line job. Also catches a plain `kill` and Ctrl-C in shells that
    start background jobs with SIGINT ignored.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _request_stop)


@contextlib.contextmanager
def torch_threads(count: int):
    """Torch's intra-op thread count at `count` while a job runs (0: left as it is), restored after it: a job run
    inside a server (the ComfyUI node, whose overrides may set `threads`) must not change the prompts after it."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count:
            torch.set_num_threads(before)


def check_stop() -> None:
    """At a step boundary: raise KeyboardInterrupt if a stop signal arrived (the loops save, then re-raise)."""
    if _STOP["signal"] is not None:
        signum, _STOP["signal"] = _STOP["signal"], None
        raise KeyboardInterrupt(f"signal {signum}")


def check_loss_terms(loss, stats: dict, tag: str, it: int, max_nonfinite_frac: float = 0.5) -> None:
    """FloatingPointError naming the term when a step's loss is non-finite or a loss term reports that more
    than `max_nonfinite_frac` of its entries were non-finite (`*_nonfinite_frac` stats, e.g. DMD's masked
    score): such a step would train on nothing while looking finite."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{tag} loss became {loss.item()} at iteration {it}")
    for key, value in stats.items():
        if key.endswith("_nonfinite_frac") and not value <= max_nonfinite_frac:
            term = key[:-len("_nonfinite_frac")]
            raise FloatingPointError(f"{term} loss: {value:.0%} of its entries were non-finite (NaN/Inf) at iteration "
                                     f"{it} ({tag} update; more than {max_nonfinite_frac:.0%} is a failed step)")
        if key.endswith("_loss") and isinstance(value, float) and not math.isfinite(value):
            raise FloatingPointError(f"{key} became {value} at iteration {it} ({tag} update)")


def stop_step(total: int, max_steps: int = None) -> int:
    """Where a run stops: its schedule's `total`, or earlier at `max_steps` (the schedule stays `total` long)."""
    return total if max_steps is None else min(total, max_steps)


class TrainingLoop:
    """The loop that advances a job through its run folder's checkpoints and metrics log."""

    def __init__(self, run: RunFolder, desc: str, *, quiet: bool = False, metadata: dict = None,
                 step_key: str = "step"):
        """run: the RunFolder (`open_run` yields it; its rank decides who writes checkpoints); desc: the progress
        bar's label; metadata: strings stored in every checkpoint's safetensors header; step_key: the name of the
        job's counter in metrics.jsonl records."""
        self.folder, self.desc, self.rank, self.quiet = run.path, desc, run.rank, quiet
        self.metadata, self.step_key = metadata or {}, step_key
        self.warned_grace = False   # a checkpoint slower than half of torchrun's stop grace was reported
        self.ckpt, self.logger = run.checkpoints, run.metrics

    def resume(self, job, names, optional=(), readers: int = 1) -> bool:
        """Load the newest readable checkpoint's `names` (+ `optional` ones present) into `job`; False if none.
        readers: the processes of this host reading it at once (a node's ranks), for the host-memory check."""
        refused, latest, sharded = None, None, getattr(job, "sharded", False)
        if sharded:                       # every rank checks before any reads: none counts another's state.pt
            any_rank(False)
        try:
            latest = self.ckpt.load_latest(names, optional, readers)
        except MemoryError as e:          # check_resume_memory, before a byte is read
            refused = e
        if sharded and any_rank(refused is not None):   # ranks whose free memory differs
            raise refused or MemoryError(f"rank {self.rank}: another rank of this run cannot hold the checkpoint it "
                                         f"resumes from (its error is in its log); every rank stops")
        if refused is not None:
            raise refused
        if latest is None:
            return False
        path, tensors, state = latest
        if self.ckpt.is_sharded(path):         # torch.distributed.checkpoint: read into the job's own layout
            try:
                job.load_sharded(path, state)
            except BaseException as e:         # noqa: BLE001  (DCP's CheckpointException is a BaseException)
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]   # DCP: the cause comes last
                raise RunError(f"run folder {self.folder}: the sharded checkpoint {os.path.basename(path)} does not "
                               f"read into these models ({type(e).__name__}: "
                               f"{(lines[-1] if lines else '')[:300]}). If it is "
                               f"damaged, move that step folder away and rerun: the older checkpoint is used; if "
                               f"the model sources or sizes changed, start a new run folder") from e
            log.info("resumed from %s (%s %d)", path, self.step_key, job.step)
            return True
        try:
            job.load(tensors, state)
        except RuntimeError as e:     # load_state_dict: other names or shapes than the models these settings build
            if "Error(s) in loading state_dict" not in str(e):
                raise
            detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "key" in ln), str(e))
            raise ValueError(f"run folder {self.folder}: the checkpoint {os.path.basename(path)} holds models of "
                             f"another architecture than these settings build ({detail[:300]}); a resume, even "
                             f"with changed settings, continues the checkpoint's weights, so the model sources and "
                             f"sizes cannot change. Start a new run folder for the new models") from None
        log.info("resumed from %s (%s %d)", path, self.step_key, job.step)
        return True

    @staticmethod
    def _check_stop(job) -> None:
        """check_stop at a step boundary; for a sharded job a stop signal on any rank stops every rank there."""
        if not getattr(job, "sharded", False):
            check_stop()
            return
        try:
            check_stop()
            stopping = False
        except KeyboardInterrupt:
            stopping = True
        if any_rank(stopping):
            stop = KeyboardInterrupt("a stop signal (on this or another rank)")
            stop.salt_collective = True
            raise stop

    def save(self, job) -> None:
        """A checkpoint of `job` at its step. A sharded job: every rank writes its shards (torch.distributed.checkpoint,
        readable on any number of ranks); otherwise rank 0 writes full tensors (replicas are identical)."""
        started = time.monotonic()
        if getattr(job, "sharded", False):
            tensors, state = job.sharded_state()
            self.ckpt.save_sharded(job.step, tensors, state, self.rank, self.metadata)
        elif self.rank == 0:
            tensors, state = job.state()
            self.ckpt.save(job.step, tensors, state, self.metadata)
        self._check_save_time(job.step, time.monotonic() - started)

    def _check_save_time(self, step: int, seconds: float) -> None:
        """Warn once (rank 0) when a checkpoint takes more than half of torchrun's grace after a stop signal: the save
        a Ctrl-C starts would be killed midway (the previous checkpoint stays: a rerun loses the steps since)."""
        grace = torchrun_grace_s()
        if grace is None or self.rank != 0 or self.warned_grace or seconds <= grace / 2:
            return
        self.warned_grace = True
        if grace_is_settable():
            fix = (f"launch as PET_SHUTDOWN_TIMEOUT={max(60, 10 * math.ceil(4 * seconds / 10))} torchrun ... (the "
                   f"workers see torchrun's --shutdown-timeout only in its environment form)")
        else:
            fix = ("this torch's torchrun cannot wait longer (a newer one has --shutdown-timeout): stop the run with "
                   f"SIGTERM to its worker processes on each node (here: pkill -TERM -P {os.getppid()}, the "
                   f"children of this node's torchrun), not Ctrl-C or a signal to torchrun itself")
        log.warning("the checkpoint at %s %d took %.0f s; torchrun kills its workers %.0f s after a stop signal "
                    "(Ctrl-C), so the save a stop starts could be cut (the previous checkpoint stays, and a rerun "
                    "loses the steps since): %s", self.step_key, step, seconds, grace, fix)

    def run(self, job, stop: int, *, checkpoint_every: int, log_every: int, max_seconds: float = None,
            callback=None, evaluate=None, eval_every: int = 0, postfix: dict = None, nonfinite_hint: str = "",
            keep_every: int = 0, interrupt=None) -> None:
        """Advance `job` until `job.step` reaches `stop` (or `max_seconds` of wall time have passed).

        After each step that moved the counter, in this order: the log record (every `log_every` steps),
        `callback({"gen_step", "total", "stats"})` (it may raise KeyboardInterrupt to stop: the state is saved
        first), a checkpoint (every `checkpoint_every` steps, at the milestones, at `stop`, and when out of time),
        `evaluate()` → a dict of scores logged as {step_key, "eval"} (every `eval_every` steps and at `stop`; 0
        disables).
        postfix: {bar label: stats key} shown on the progress bar. nonfinite_hint: the fix added to a
        non-finite stop's message. keep_every > 0: the checkpoints at its multiples are kept (milestones), besides
        the newest two. interrupt(): called before every unit of work, also those that do not move the counter (a
        distillation's critic-only iterations: up to critic_ratio − 1 between generator updates), and passed to
        `job.advance` for the points inside a unit where nothing has changed yet; it may raise KeyboardInterrupt to
        stop there, the state saved first (a single-process job's Cancel: a sharded job's ranks would have to
        agree, as stop signals do).
        """
        started = time.time()
        self.ckpt.keep_every = keep_every
        sharded = getattr(job, "sharded", False)

        def eval_due():
            return (evaluate is not None and eval_every > 0 and job.step > 0
                    and (job.step % eval_every == 0 or job.step == stop))

        def run_evaluation():
            scores = evaluate()
            self.logger.write(**{self.step_key: job.step, "eval": scores})
            log.info("%s %d eval %s", self.step_key, job.step, scores)

        if eval_due():         # the evaluation a Cancel interrupted after the checkpoint it follows
            missing = job.step not in logged_eval_steps(self.logger.path, self.step_key)
            if sharded:        # rank 0's log decides for every rank (an evaluation may be a collective)
                missing = any_rank(self.rank == 0 and missing)
            if missing:
                run_evaluation()
        bar = tqdm(total=stop, initial=job.step, desc=self.desc, disable=self.quiet or self.rank != 0,
                   dynamic_ncols=True)
        last_log, last_logged = time.time(), job.step
        at_boundary = True   # True between steps: only then is the in-memory state consistent to save
        unsaved = False      # work done since the state was loaded or saved (a stop with none saves nothing)
        try:
            while job.step < stop:
                self._check_stop(job)
                if interrupt is not None:
                    interrupt()
                before = job.step
                at_boundary = False
                try:
                    stats = job.advance(interrupt)
                except KeyboardInterrupt as e:
                    at_boundary = getattr(e, "salt_at_boundary", False)
                    raise
                except FloatingPointError as e:
                    # A failure before the counter moved left the last good state in memory: save it. After it
                    # moved (a critic failing after its iteration's generator update), the state is half a unit
                    # that a resume would repeat: the newest checkpoint is the last good state.
                    if job.step == before:
                        self.save(job)
                        where = f"the last good state is saved in {self.ckpt.folder}"
                    else:
                        where = f"the newest checkpoint in {self.ckpt.folder} is the last good state"
                    raise FloatingPointError(f"{e}; {where}" + (f"; {nonfinite_hint}" if nonfinite_hint else "")) \
                        from None
                at_boundary, unsaved = True, True
                if stats is None:
                    continue
                bar.update(1)
                if job.step % log_every == 0:
                    now = time.time()
                    logged = mean_over_ranks(stats) if sharded else stats   # each rank's losses are of its clips
                    self.logger.write(**{self.step_key: job.step}, **logged,
                                      sec_per_step=(now - last_log) / max(1, job.step - last_logged))
                    last_log, last_logged = now, job.step
                    if postfix:
                        bar.set_postfix({label: f"{logged.get(key, 0.0):.4g}" for label, key in postfix.items()})
                if callback is not None:
                    callback({"gen_step": job.step, "total": stop, "stats": stats})
                out_of_time = max_seconds is not None and time.time() - started > max_seconds
                milestone = keep_every > 0 and job.step % keep_every == 0
                if job.step % checkpoint_every == 0 or milestone or job.step == stop or out_of_time:
                    self.save(job)
                    unsaved = False
                if eval_due():
                    run_evaluation()
                if out_of_time:
                    log.info("stopped at %s %d after %.0f s (max_seconds); rerun to continue", self.step_key,
                             job.step, time.time() - started)
                    break
        except (KeyboardInterrupt, Exception) as reason:
            # An interrupt (a stop signal, Ctrl-C, the callback's Cancel) or an error in a callback or an
            # evaluation between steps finds a consistent state: save it so a rerun resumes exactly.
            # a sharded job saves only where every rank stopped together (a stop signal taken by _check_stop):
            # a save is a collective, and an error on one rank must not leave the others waiting in it
            together = not getattr(job, "sharded", False) or getattr(reason, "salt_collective", False)
            if at_boundary and together and not isinstance(reason, FloatingPointError):
                if unsaved:
                    self.save(job)
                log.info("stopped at %s %d (%s); %s, rerun the same command to resume", self.step_key, job.step,
                         type(reason).__name__, "checkpoint saved" if unsaved else "nothing new since the last save")
            else:
                log.info("stopped inside a step; rerun the same command to resume from the last checkpoint")
            raise
        finally:
            bar.close()


class RegressionJob:
    """One network trained by AdamW on `loss_fn(step)` (a scalar tensor; it draws its own batch from the step),
    with linear warm-up + cosine learning rate, grad-norm clipping and an EMA from step 0: the teacher's
    pre-training and the ODE initialisation of a student."""

    def __init__(self, model, loss_fn, *, name: str, loss_name: str, lr: float, betas: tuple, weight_decay: float,
                 warmup: int, total: int, min_lr_ratio: float, grad_clip: float, ema_decay: float):
        """name: the checkpoint file of the raw weights ("model", "student"); loss_name: its key in the stats."""
        self.model, self.loss_fn, self.name, self.loss_name = model, loss_fn, name, loss_name
        self.schedule = dict(base=lr, warmup=warmup, total=total, min_ratio=min_lr_ratio)
        self.grad_clip, self.ema_decay = grad_clip, ema_decay
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
        self.ema = EMA(model, ema_decay)
        self.step = 0

    def advance(self, interrupt=None) -> dict:
        """One optimizer step; FloatingPointError (nothing applied) when the loss is not finite. One forward and
        backward: `interrupt` is not called inside."""
        lr = cosine_lr(self.step, **self.schedule)
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss = self.loss_fn(self.step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.loss_name} became {loss.item()} at step {self.step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        return {self.loss_name: loss.item(), "grad_norm": float(grad_norm), "lr": lr}

    def restart_from(self, step: int) -> None:
        """Continue a warm start at `step` of the schedule: a fresh optimizer state, the EMA at the current weights."""
        self.ema = EMA(self.model, self.ema_decay)
        self.step = step

    def state(self) -> tuple:
        return ({self.name: self.model.state_dict(), "ema": self.ema.state_dict()},
                {"optimizer": self.opt.state_dict(), "step": self.step})

    def load(self, tensors: dict, state: dict) -> None:
        self.model.load_state_dict(tensors[self.name])
        self.ema.load_state_dict(tensors["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
