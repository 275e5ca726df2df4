"""Run folders shared by both front doors (CLI and the ComfyUI node) and every job (teacher, ODE init,
distillation): one `RunFolder` object holds what a run keeps there (checkpoints/, metrics.jsonl, its other files),
`open_run` the lock and config.json, and every whole-file write goes through one atomic write
(weights.files.atomic_write).

- A run name is a plain folder name; the node turns it into `<output>/salt_runs/<name>`, the CLI takes a path.
- `open_run` is every job's way in: the settings check, the lock, then config.json (never rewritten by a
  refused resume; rewritten with the new settings only under the explicit override).
- A folder holding checkpoints of a run with other settings is refused (only RESUMABLE_FIELDS may
  change), unless the caller says so explicitly; a folder without a checkpoint holds nothing to
  resume, so a failed start (a bad teacher file) never blocks its name.
- One process per run folder: `RunLock` holds an OS lock on `<folder>/.lock` (released by the OS
  when the process dies, so a killed run never leaves a stale lock).
- Publishing a run's student (its run id, what it may replace) is training/publish.py's.
- Checkpoints are `step_XXXXXXXX/` folders written beside their final name and renamed into place complete, so a
  kill never leaves a torn one (one saved again at its step replaces the old by renames: `step_XXXXXXXX.old` while
  it does); the newest one that reads back is found on restart.
Knows nothing of ComfyUI or the losses.
"""
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import shutil
import stat
import time

import torch
from safetensors.torch import load_file, save_file

from ..salt_core.validate import available_memory, check_memory, out_of_memory, quote
from ..weights.files import atomic_write
from .validate import unread_fields

log = logging.getLogger("salt.training")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")     # \Z: "$" would take a final newline
# Fields that may change when a run is resumed (how long, how often, how many threads; the text encoder is
# read once, to fill the run's embedding cache, so a resume may drop or move it).
# The teacher's evaluation sampler (eval_steps, eval_cfg) changes what is measured, not what is trained.
# A distillation's eval_nfe, like eval_clips, says what an evaluation measures.
RESUMABLE_FIELDS = ("gen_steps", "threads", "checkpoint_every", "checkpoint_keep_every", "eval_every", "eval_clips",
                    "eval_nfe", "log_every", "grad_probes", "text_encoder", "memory_limit_gib", "eval_steps",
                    "eval_cfg")
LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
# The explicit override, as each front door spells it (the error names both).
OVERRIDE_HINT = "--allow-changed-settings (CLI) / allow_changed_settings=True (Python)"


class RunError(RuntimeError):
    """A run folder that cannot be used as asked (locked by another process, no readable checkpoint)."""


class CheckpointManager:
    """`step_XXXXXXXX/` folders holding safetensors weights + a weights-only training-state file (and, for a save
    cut while replacing a checkpoint of its own step, the `step_XXXXXXXX.old` it was replacing: `complete`)."""

    PATTERN = re.compile(r"^step_(\d{8})$")
    # a checkpoint being replaced by one of its own step: its folder is renamed so, the new one renamed into place,
    # then it is deleted; read only when a save was cut between the two renames (no step_N beside it)
    REPLACED = re.compile(r"^step_(\d{8})\.old$")
    MILESTONE = "MILESTONE"     # the marker file of a checkpoint kept for good (`keep_every`)

    def __init__(self, folder: str, keep: int = 2, keep_every: int = 0):
        self.folder, self.keep, self.keep_every = folder, keep, keep_every
        os.makedirs(folder, exist_ok=True)

    def complete(self, superseded: bool = False) -> list:
        """[(step, path)] of the complete checkpoints, newest first: `step_N`, or where a save at step N was cut
        between its renames (`save`) and no complete `step_N` exists, the `step_N.old` it was replacing.
        `superseded`: also a complete `step_N.old` beside a complete `step_N` (a save cut after its second rename),
        listed right after it: the order `load_latest` tries, so a `step_N` that does not read falls back to the
        checkpoint of the same step it replaced before an older step."""
        found, replaced = {}, {}
        for name in os.listdir(self.folder):
            m = self.PATTERN.match(name) or self.REPLACED.match(name)
            if m and os.path.exists(os.path.join(self.folder, name, "COMPLETE")):
                (found if m.re is self.PATTERN else replaced)[int(m.group(1))] = os.path.join(self.folder, name)
        ranked = [(step, 1, path) for step, path in found.items()]
        ranked += [(step, 0, path) for step, path in replaced.items() if superseded or step not in found]
        return [(step, path) for step, _, path in sorted(ranked, reverse=True)]

    def latest(self):
        """(step, path) of the newest complete checkpoint, or None."""
        found = self.complete()
        return found[0] if found else None

    def load_latest(self, names, optional=(), readers: int = 1) -> tuple:
        """(path, {name: state_dict}, state) of the newest checkpoint that reads back, or None if there is none.

        Before it is read, the host must hold it `readers` times (the processes of this host reading it at once:
        the ranks of a node resuming a run) beside what they have built: else a MemoryError names both sizes and
        the fix (check_resume_memory), and the checkpoint stays where it is.

        A checkpoint that does not read (a truncated file after a disk-full or a copy) is renamed to
        `<step>.unreadable` (kept for inspection, ignored from then on) and the next older one is tried (first a
        `step_N.old` of the same step, where a cut save left one: `complete(superseded=True)`), with a warning
        naming both; if none reads, the error names every file and the fix.
        """
        failures = []
        for step, path in self.complete(superseded=True):
            present = [n for n in optional if os.path.exists(os.path.join(path, f"{n}.safetensors"))]
            check_resume_memory(path, readers * self.load_host_bytes(path), readers)
            try:
                tensors, state = self.load(path, list(names) + present)
            except Exception as e:   # safetensors / torch report damage with several exception types
                if out_of_memory(e):     # the host, not the checkpoint: it stays the newest
                    raise
                failures.append((path, f"{path}: {type(e).__name__}: {str(e)[:160]}"))
                log.warning("checkpoint %s does not read (%s: %s); falling back to an older one", path,
                            type(e).__name__, str(e)[:160])
                continue
            for bad_path, _ in failures:
                moved = self._set_aside(bad_path)
                log.warning("resuming from %s instead; the unreadable checkpoint was moved to %s", path,
                            moved or bad_path + ".unreadable")
            return path, tensors, state
        if failures:
            raise RunError(f"no checkpoint in {self.folder} reads back: {'; '.join(m for _, m in failures)}. Move "
                           f"the damaged step folders away to start over from scratch, or restore them from a backup")
        return None

    def load_newest(self, names) -> tuple:
        """(path, {name: state_dict}, state) of the newest step, read only, or None if there is no checkpoint: where
        `step_N` does not read, the `step_N.old` a cut save left beside it (the same step). Nothing is renamed or
        deleted (a reader beside a training run, or a transient read error, must not move a run's checkpoint aside),
        and an older step is never taken in its place: if no copy of the newest step reads, a RunError names each
        file and the fix. For exports; a resume uses load_latest."""
        found = self.complete(superseded=True)
        newest = found[0][0] if found else None
        failures = []
        for step, path in found:
            if step != newest:
                break
            try:
                tensors, state = self.load(path, names)
            except Exception as e:   # safetensors / torch report damage with several exception types
                if out_of_memory(e):
                    raise
                failures.append(f"{path}: {type(e).__name__}: {str(e)[:160]}")
                continue
            if failures:
                log.warning("checkpoint %s does not read; read the copy of the same step at %s", failures[0], path)
            return path, tensors, state
        if failures:
            raise RunError(f"the newest checkpoint in {self.folder} (step {newest}) does not read: "
                           f"{'; '.join(failures)}. If another program holds it, retry once it is done; if it is "
                           f"damaged, resume the run to write that step again, or move the step folder away to use "
                           f"the step before it")
        return None

    @staticmethod
    def _set_aside(path: str):
        """Rename an unreadable checkpoint folder to `<path>.unreadable` (`.unreadable2`, … where an earlier one of
        that step is kept there already); the new path, or None when another rank of a multi-process run moved
        it first."""
        for n in itertools.count(1):
            target = path + ".unreadable" + (str(n) if n > 1 else "")
            if os.path.lexists(target):
                continue
            try:
                os.replace(path, target)
            except FileNotFoundError:
                return None
            return target

    def save(self, step: int, tensors: dict, state: dict, metadata: dict = None) -> str:
        """Write {name: state_dict} as name.safetensors and `state` as state.pt, atomically: every file synced to
        disk before COMPLETE marks the folder and the rename puts it in place."""
        final = self.step_folder(step)
        tmp = final + f".tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        for name, sd in tensors.items():   # each file written whole and synced (a new file's mode, as state.pt's)
            cpu = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
            atomic_write(os.path.join(tmp, f"{name}.safetensors"), lambda path, cpu=cpu: save_file(cpu, path, meta))
        atomic_write(os.path.join(tmp, "state.pt"), lambda path: torch.save(state, path))
        self._mark(tmp, step)
        open(os.path.join(tmp, "COMPLETE"), "w").close()
        self._put_in_place(tmp, final)
        self._prune()
        return final

    def _put_in_place(self, tmp: str, final: str) -> None:
        """Rename the complete folder `tmp` to `final`. A checkpoint already at `final` (the same step saved again:
        after critic-only iterations, or by a resumed run) is renamed to `final.old` first and deleted only after
        the new one is in place: a save killed at any point leaves a complete checkpoint of that step (`complete`),
        never only the one before it (deleting a large checkpoint takes seconds)."""
        old = final + ".old"
        if os.path.exists(final):
            self._remove(old)             # left beside it by a save cut after its second rename: its own error
            os.replace(final, old)
        os.replace(tmp, final)
        self._remove(old, strict=False)   # saved: what is left of it is superseded, _prune retries

    @staticmethod
    def _remove(folder: str, strict: bool = True) -> None:
        """Delete a checkpoint folder, its COMPLETE marker first (a delete cut midway leaves no complete-looking
        remnant); `strict`: a file that cannot be deleted raises its own error."""
        if os.path.isdir(folder):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, "COMPLETE"))
            shutil.rmtree(folder, ignore_errors=not strict)

    def step_folder(self, step: int) -> str:
        """The folder of the checkpoint at `step` (it may not exist)."""
        return os.path.join(self.folder, f"step_{step:08d}")

    def _mark(self, folder: str, step: int) -> None:
        """Mark a checkpoint at a multiple of `keep_every` as a milestone: kept for good, whatever later runs set; so
        is one that replaces a milestone of the same step (saved again after critic-only iterations, or by a run
        resumed with another keep_every; or resumed from the `.old` folder of a save that was cut)."""
        again = [os.path.join(self.step_folder(step) + tail, self.MILESTONE) for tail in ("", ".old")]
        if (self.keep_every > 0 and step % self.keep_every == 0) or any(map(os.path.exists, again)):
            open(os.path.join(folder, self.MILESTONE), "w").close()

    @staticmethod
    def is_sharded(path: str) -> bool:
        """Whether a checkpoint folder was written by torch.distributed.checkpoint (a sharded run)."""
        return os.path.exists(os.path.join(path, ".metadata"))

    def save_sharded(self, step: int, tensors: dict, state: dict, rank: int, metadata: dict = None) -> str:
        """A sharded run's checkpoint, every rank writing its own shards with torch.distributed.checkpoint
        (`tensors`: nested state dicts of DTensors, the same keys on every rank), rank 0 the `state` and metadata;
        written in a temporary folder and renamed into place complete, so an interrupted save never replaces the
        last good checkpoint. A collective: every rank calls it."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        final = self.step_folder(step)
        tmp = final + ".tmp_sharded"
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        dist.barrier()
        dcp.save(tensors, checkpoint_id=tmp)
        if rank == 0:
            torch.save(state, os.path.join(tmp, "state.pt"))
            with open(os.path.join(tmp, "metadata.json"), "w") as f:
                json.dump({k: str(v) for k, v in (metadata or {}).items()}, f)
            self._mark(tmp, step)
            open(os.path.join(tmp, "COMPLETE"), "w").close()
            self._put_in_place(tmp, final)
            self._prune()
        dist.barrier()
        return final

    @staticmethod
    def load_host_bytes(path: str) -> int:
        """Host bytes `load(path, ...)` holds beside the job's models: the training state (state.pt, read whole by
        torch.load: its size on disk, an unsharded run's optimizer moments among it; 0 when missing: the load then
        names it). The weight files count nothing: safetensors maps them, and their clean file pages, copied into
        the models, are the kernel's to drop under pressure (as in weights.files.load_host_bytes)."""
        state = os.path.join(path, "state.pt")
        return os.path.getsize(state) if os.path.isfile(state) else 0

    def load(self, path: str, names) -> tuple:
        """({name: state_dict}, state) from a checkpoint folder; a sharded one gives ({}, state): its tensors are
        read into the job's own layout (`Distiller.load_sharded`)."""
        if self.is_sharded(path):
            return {}, torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
        tensors = {n: load_file(os.path.join(path, f"{n}.safetensors")) for n in names}
        state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
        return tensors, state

    def _prune(self):
        """Keep the `keep` newest complete checkpoints and the milestones (marked when saved at a multiple of
        `keep_every`: a resume with another setting keeps them too); drop older ones, step folders without COMPLETE
        (never a finished save: those are renamed into place complete), `.old` folders a complete checkpoint of
        their step supersedes, and other processes' temp folders."""
        complete = {path for _, path in self.complete()}
        for _, path in self.complete()[self.keep:]:
            if not os.path.exists(os.path.join(path, self.MILESTONE)):
                shutil.rmtree(path, ignore_errors=True)
        for n in os.listdir(self.folder):
            path = os.path.join(self.folder, n)
            if (self.PATTERN.match(n) or self.REPLACED.match(n)) and path not in complete:
                shutil.rmtree(path, ignore_errors=True)
        for n in os.listdir(self.folder):
            if ".tmp" in n and not n.endswith(f".tmp{os.getpid()}"):   # rank 0 prunes after its sharded rename
                shutil.rmtree(os.path.join(self.folder, n), ignore_errors=True)


def check_resume_memory(path: str, need: int, readers: int = 1) -> None:
    """MemoryError before a checkpoint is read when the host's free memory and swap cannot hold `need` bytes of it
    (all `readers` processes' reads) beside the models already built (the OS would kill the job, or ComfyUI's
    server running it, mid-read)."""
    what = f"resuming from {path!r}" + (f" in {readers} processes of this host" if readers > 1 else "")
    check_memory(what, need, available_memory(torch.device("cpu"), swap=True),
                 where="resume", limit_what="the host's free memory and swap",
                 fix="free host memory (other programs, other loaded models) and rerun: the run continues from this "
                     "checkpoint; or continue the run folder on a host with more memory")


def logged_eval_steps(path: str, step_key: str = "gen_step") -> set:
    """Steps (the records' `step_key`) that have an `eval` record in a metrics.jsonl (torn or foreign lines skipped)."""
    steps = set()
    if os.path.exists(path):
        with open_own_to_read(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(record, dict) and "eval" in record and isinstance(record.get(step_key), int):
                    steps.add(record[step_key])
    return steps


class JsonlLog:
    """Append-only metrics log, one JSON object per line."""

    def __init__(self, path: str):
        self.path = path

    def write(self, **record):
        record.setdefault("time", time.time())
        fd = open_own(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a", encoding="utf-8", newline="\n") as f:
            f.write(json.dumps(record) + "\n")


NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)   # POSIX; Windows has no such flag (its links need Developer Mode or admin)


def open_own(path: str, flags: int) -> int:
    """os.open of a file a run keeps in its folder (created if missing with O_CREAT in `flags`), never through a
    symbolic link and only a plain file: a link planted there would make the run write into (or read) a file it did
    not make, a FIFO or a device would hold it forever or feed it without end. A RunError naming it otherwise."""
    verb = "reads" if flags & (os.O_WRONLY | os.O_RDWR) == 0 else "writes"
    try:
        # O_NONBLOCK: opening a FIFO does not wait for its other end (a plain file ignores the flag); O_BINARY: the
        # Windows C runtime writes a text-mode descriptor's '\n' as CRLF (Python's newline= is a layer above it)
        fd = os.open(path, flags | NO_FOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0), 0o644)
    except FileNotFoundError:
        raise
    except OSError:
        if os.path.islink(path):
            raise RunError(f"{path!r} is a symbolic link; a run {verb} its own files there and never through a "
                           f"link: remove the link") from None
        if not os.path.isfile(path):
            raise RunError(f"{path!r} is not a plain file; a run keeps its own files there: remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunError(f"{path!r} is not a plain file; a run keeps its own files there: remove it")
    return fd


def open_own_to_read(path: str):
    """A text file a run keeps in its folder, opened to read (open_own): FileNotFoundError when missing."""
    return os.fdopen(open_own(path, os.O_RDONLY), encoding="utf-8", errors="replace")


# Windows device names: a file or folder named so (any extension, any case) opens the device, not a file
WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10))}
WINDOWS_NAME_RULE = "; on Windows not ending in '.' nor a device name such as CON or NUL"
ON_WINDOWS = os.name == "nt"


def is_plain_name(name) -> bool:
    """Whether `name` can name a file or folder the pack writes: NAME_PATTERN (letters, digits, '_', '-', '.'; up to
    100 characters) and no '..'; on Windows also no final '.' (Windows drops it: two names, one file) and no device
    name (CON, NUL...: the name opens the device). Elsewhere those stay plain names (a run folder named `aux` made
    there keeps resuming)."""
    if not (isinstance(name, str) and NAME_PATTERN.match(name) and ".." not in name):
        return False
    return not ON_WINDOWS or not (name.endswith(".") or name.split(".")[0].upper() in WINDOWS_DEVICES)


def check_run_name(name: str, where: str = "run") -> str:
    """`name` if it is a plain folder name (is_plain_name), else ValueError."""
    if not is_plain_name(name):
        raise ValueError(f"{where}: name={quote(name)}; expected a plain folder name (letters, digits, '_', '-', '.'; "
                         f"up to 100 characters{WINDOWS_NAME_RULE}), e.g. 'toy_salt_run1'")
    return name


def has_checkpoint(folder: str) -> bool:
    """Whether `folder/checkpoints` holds at least one complete checkpoint (something to resume)."""
    ckpts = os.path.join(folder, "checkpoints")
    return os.path.isdir(ckpts) and bool(CheckpointManager(ckpts).complete())


def stored_settings(cfg) -> dict:
    """What config.json records of `cfg`: its fields, and the job that wrote it for a config that names one
    (training.student_config: `JOB`), as JSON types."""
    d = dataclasses.asdict(cfg)
    job = getattr(type(cfg), "JOB", "")
    if job:
        d["job"] = job
    return json.loads(json.dumps(d))


def changed_settings(cfg, folder: str) -> dict:
    """{field: (stored, requested)} of the settings that differ from the run in `folder`, beyond RESUMABLE_FIELDS
    and the fields nothing in the run reads (training.validate.unread_fields: e.g. sc_symmetric with sc_weight 0;
    what they need is compared too, so they were unread in the stored run as well, except eval_every, itself
    resumable: eval_nfe / eval_clips then change what a later evaluation measures, never what is trained).
    A stored file in older keys is read in this release's (the config's `upgrade_stored`); `job` is compared too,
    so one job never resumes another's folder."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.exists(path) or not has_checkpoint(folder):
        return {}
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"run folder {folder}: config.json is unreadable ({quote(str(e))}); it holds checkpoints, so "
                         f"restore the file or start a new run in another folder") from None
    if not isinstance(old, dict):
        raise ValueError(f"run folder {folder}: config.json holds a JSON {type(old).__name__}, not the object of a "
                         f"run's settings; it holds checkpoints, so restore the file or start a new run in another "
                         f"folder")
    upgrade = getattr(type(cfg), "upgrade_stored", None)
    if upgrade is not None and isinstance(old, dict):
        old = upgrade(old)
    new, unread = stored_settings(cfg), unread_fields(cfg)
    return {k: (old.get(k), v) for k, v in new.items()
            if k not in RESUMABLE_FIELDS and k not in unread and old.get(k) != v}


def check_resumable(cfg, folder: str, allow_changes: bool = False, override_hint: str = OVERRIDE_HINT) -> None:
    """Refuse to resume `folder` with settings other than its checkpoints' (beyond RESUMABLE_FIELDS).

    `allow_changes=True` continues anyway (logged): the restored optimizer state keeps its old moments.
    `override_hint` names the front doors' explicit override, added to the error's fixes.
    """
    changed = changed_settings(cfg, folder)
    if not changed:
        return
    if "job" in changed:
        stored, requested = changed["job"]
        raise ValueError(f"run folder {folder} holds checkpoints of a job={quote(stored)} run, not "
                         f"{quote(requested)}; a job cannot continue another's checkpoints, so pick another folder for "
                         f"this run")
    listing = "; ".join(f"{k}: stored {quote(a)}, requested {quote(b)}" for k, (a, b) in sorted(changed.items()))
    if allow_changes:
        log.warning("resuming %s with changed settings (%s); the restored optimizer state is kept", folder, listing)
        return
    fix = "rerun (or queue) it with the stored settings to resume it, or pick another name for a new run"
    if override_hint:
        fix += f", or pass {override_hint} to continue this run with the new settings"
    raise ValueError(f"run folder {folder} holds checkpoints of a run with other settings ({listing}); {fix}")


def write_config(cfg, folder: str) -> str:
    """Write the dataclass `cfg` as `<folder>/config.json` (sorted keys; `stored_settings`), atomically; returns
    the path."""
    path = os.path.join(folder, CONFIG_FILE)
    write_text(path, json.dumps(stored_settings(cfg), indent=1, sort_keys=True))
    return path


# Keys every job's config.json holds (stored_settings of each config class): how a folder is known as a Salt run's.
RUN_MARKER_KEYS = ("seed", "checkpoint_every", "world")
PROMPT_CACHE = "prompt_embeds.safetensors"   # in the run folder: {"embeds": (prompts + 1, 512, D)}
# What a job may find in its folder before its config.json is written: the prompt embeddings the node fills first,
BEFORE_CONFIG = (PROMPT_CACHE, LOCK_FILE)       # and the lock of a job that is starting there


def is_run_folder(folder: str) -> bool:
    """Whether `folder`'s config.json is a Salt run's (a JSON object with RUN_MARKER_KEYS)."""
    try:
        with open(os.path.join(folder, CONFIG_FILE)) as f:
            stored = json.load(f)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(stored, dict) and all(k in stored for k in RUN_MARKER_KEYS)


def check_own_folder(folder: str) -> None:
    """Refuse a run folder that holds files of someone else's: a job writes config.json, its checkpoints and export/
    there and prunes old checkpoints, so it only uses a missing or empty folder, one of its own runs, or one holding
    only what a job writes before its config (BEFORE_CONFIG) and empty folders."""
    if not os.path.isdir(folder) or is_run_folder(folder) or has_checkpoint(folder):
        return                # a run of Salt's (one whose config.json is damaged: check_resumable names the file)
    others = sorted(n for n in set(os.listdir(folder)) - set(BEFORE_CONFIG)       # an empty folder holds nothing
                    if not (os.path.isdir(os.path.join(folder, n)) and not os.listdir(os.path.join(folder, n))))
    if others:
        raise ValueError(f"run folder {folder!r} holds files that are not a Salt run's (e.g. {quote(others[:3])}) and "
                         f"no Salt config.json; a run writes its config, checkpoints and export/ there and prunes old "
                         f"checkpoints, so give a new or empty folder")


@contextlib.contextmanager
def open_run(cfg, folder: str, *, allow_changes: bool = False, rank: int = 0):
    """Enter run folder `folder` for a job with settings `cfg` (a config dataclass); yields its `RunFolder`.

    Refuses checkpoints of other settings (check_resumable; `allow_changes` continues with the new ones),
    holds the RunLock and records `cfg` in config.json. Under several processes only rank 0 locks and writes;
    every rank checks.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"run folder {folder!r} is a file; give a folder (it is created if missing)")
    parent = os.path.dirname(os.path.abspath(folder))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"run folder {folder!r}: {parent!r} is a file, not a folder; choose a run folder elsewhere")
    check_own_folder(folder)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()      # every rank has looked at the folder before rank 0 writes into it
    os.makedirs(folder, exist_ok=True)
    with RunLock(folder) if rank == 0 else contextlib.nullcontext():
        check_resumable(cfg, folder, allow_changes, OVERRIDE_HINT)
        if rank != 0:
            yield RunFolder(folder, rank)
            return
        config = os.path.join(folder, CONFIG_FILE)
        previous = None
        if os.path.isfile(config):
            with open(config) as f:
                previous = f.read()
        checkpoints = _checkpoint_names(folder)
        write_config(cfg, folder)
        try:
            yield RunFolder(folder, rank)
        except BaseException:
            # The job failed before it saved anything with the new settings (e.g. changed settings that do not
            # fit the checkpoints): config.json goes back to describing the checkpoints the folder holds.
            if previous is not None and _checkpoint_names(folder) == checkpoints:
                write_text(config, previous)
            raise


def _checkpoint_names(folder: str) -> list:
    """The entries of `<folder>/checkpoints` (what a job has saved so far)."""
    path = os.path.join(folder, "checkpoints")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def write_text(path: str, text: str) -> None:
    """Replace `path` with `text` atomically (weights.files.atomic_write: a temp file beside it, then rename)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


class RunFolder:
    """A run folder as one object: `path`, its `checkpoints` (CheckpointManager of `<path>/checkpoints`), its
    `metrics` log (`metrics.jsonl`; rank r > 0 of a multi-process run writes `metrics_rank<r>.jsonl`) and `file(name)`
    for what else a job keeps there. The lock, the resume check and config.json are `open_run`'s, which yields one;
    publishing an export is `publish_student`'s."""

    def __init__(self, path: str, rank: int = 0):
        self.path, self.rank = path, rank
        self.checkpoints = CheckpointManager(os.path.join(path, "checkpoints"))
        self.metrics = JsonlLog(os.path.join(path, "metrics.jsonl" if rank == 0 else f"metrics_rank{rank}.jsonl"))

    def file(self, name: str) -> str:
        """The path of `name` inside the folder."""
        return os.path.join(self.path, name)


class RunLock:
    """An exclusive OS lock on `<folder>/.lock` while a job runs; a second process gets a clear error.

    Use as a context manager. The lock dies with its process (flock / msvcrt), so it is never stale.
    """

    def __init__(self, folder: str):
        self.path, self._fd = os.path.join(folder, LOCK_FILE), None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = open_own(self.path, os.O_RDWR | os.O_CREAT)
        try:
            _lock(fd)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"run folder {os.path.dirname(self.path)} is in use by {holder}; wait for that job to "
                               f"finish (or stop it), or use another run folder / name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None


try:
    import fcntl

    def _lock(fd):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd):
        fcntl.flock(fd, fcntl.LOCK_UN)
except ImportError:   # Windows
    import msvcrt

    def _lock(fd):
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
