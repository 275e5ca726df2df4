"""Run folders shared by both front doors (CLI and the ComfyUI node) and every job (teacher, ODE init,
distillation): names, resume checks, a lock, config.json, publishing.

- A run name is a plain folder name; the node turns it into `<output>/salt_runs/<name>`, the CLI takes a path.
- `open_run` is every job's way in: the settings check, the lock, then config.json (never rewritten by a
  refused resume; rewritten with the new settings only under the explicit override).
- A folder holding checkpoints of a run with other settings is refused (only RESUMABLE_FIELDS may
  change), unless the caller says so explicitly; a folder without a checkpoint holds nothing to
  resume, so a failed start (a bad teacher file) never blocks its name.
- One process per run folder: `RunLock` holds an OS lock on `<folder>/.lock` (released by the OS
  when the process dies, so a killed run never leaves a stale lock).
Knows nothing of ComfyUI or the losses.
"""
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil

from .common import CheckpointManager, RunError

log = logging.getLogger("salt.training")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Fields that may change when a run is resumed (how long, how often, how many threads; the text encoder is
# read once, to fill the run's embedding cache, so a resume may drop or move it).
# The teacher's evaluation sampler (eval_steps, eval_cfg) changes what is measured, not what is trained.
RESUMABLE_FIELDS = ("gen_steps", "threads", "checkpoint_every", "eval_every", "eval_clips", "log_every", "text_encoder",
                    "memory_limit_gib", "eval_steps", "eval_cfg")
LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
# The explicit override, as each front door spells it (the error names both).
OVERRIDE_HINT = "--allow-changed-settings (CLI) / allow_changed_settings=True (Python)"


def check_run_name(name: str, where: str = "run") -> str:
    """`name` if it is a plain folder name (letters, digits, '_', '-', '.'; ≤ 100 characters), else ValueError."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise ValueError(f"{where}: name={name!r}; expected a plain folder name (letters, digits, '_', '-', '.'; "
                         f"up to 100 characters), e.g. 'toy_salt_run1'")
    return name


def has_checkpoint(folder: str) -> bool:
    """Whether `folder/checkpoints` holds at least one complete checkpoint (something to resume)."""
    ckpts = os.path.join(folder, "checkpoints")
    return os.path.isdir(ckpts) and bool(CheckpointManager(ckpts).complete())


def changed_settings(cfg, folder: str) -> dict:
    """{field: (stored, requested)} of the settings that differ from the run in `folder`, beyond RESUMABLE_FIELDS."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.exists(path) or not has_checkpoint(folder):
        return {}
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"run folder {folder}: config.json is unreadable ({e}); it holds checkpoints, so restore the "
                         f"file or start a new run in another folder") from e
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    return {k: (old.get(k), v) for k, v in new.items() if k not in RESUMABLE_FIELDS and old.get(k) != v}


def check_resumable(cfg, folder: str, allow_changes: bool = False, override_hint: str = OVERRIDE_HINT) -> None:
    """Refuse to resume `folder` with settings other than its checkpoints' (beyond RESUMABLE_FIELDS).

    `allow_changes=True` continues anyway (logged): the restored optimizer state keeps its old moments.
    `override_hint` names the front doors' explicit override, added to the error's fixes.
    """
    changed = changed_settings(cfg, folder)
    if not changed:
        return
    listing = "; ".join(f"{k}: stored {a!r}, requested {b!r}" for k, (a, b) in sorted(changed.items()))
    if allow_changes:
        log.warning("resuming %s with changed settings (%s); the restored optimizer state is kept", folder, listing)
        return
    fix = "rerun (or queue) it with the stored settings to resume it, or pick another name for a new run"
    if override_hint:
        fix += f", or pass {override_hint} to continue this run with the new settings"
    raise ValueError(f"run folder {folder} holds checkpoints of a run with other settings ({listing}); {fix}")


def write_config(cfg, folder: str) -> str:
    """Write the dataclass `cfg` as `<folder>/config.json` (sorted keys), atomically; returns the path."""
    path = os.path.join(folder, CONFIG_FILE)
    _write_text(path, json.dumps(dataclasses.asdict(cfg), indent=1, sort_keys=True))
    return path


@contextlib.contextmanager
def open_run(cfg, folder: str, *, allow_changes: bool = False, rank: int = 0):
    """Enter run folder `folder` for a job with settings `cfg` (a config dataclass); yields `folder`.

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
    os.makedirs(folder, exist_ok=True)
    with RunLock(folder) if rank == 0 else contextlib.nullcontext():
        check_resumable(cfg, folder, allow_changes, OVERRIDE_HINT)
        if rank != 0:
            yield folder
            return
        config = os.path.join(folder, CONFIG_FILE)
        previous = None
        if os.path.isfile(config):
            with open(config) as f:
                previous = f.read()
        checkpoints = _checkpoint_names(folder)
        write_config(cfg, folder)
        try:
            yield folder
        except BaseException:
            # The job failed before it saved anything with the new settings (e.g. changed settings that do not
            # fit the checkpoints): config.json goes back to describing the checkpoints the folder holds.
            if previous is not None and _checkpoint_names(folder) == checkpoints:
                _write_text(config, previous)
            raise


def _checkpoint_names(folder: str) -> list:
    """The entries of `<folder>/checkpoints` (what a job has saved so far)."""
    path = os.path.join(folder, "checkpoints")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def _write_text(path: str, text: str) -> None:
    """Replace `path` with `text` atomically (a temp file beside it, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RunLock:
    """An exclusive OS lock on `<folder>/.lock` while a job runs; a second process gets a clear error.

    Use as a context manager. The lock dies with its process (flock / msvcrt), so it is never stale.
    """

    def __init__(self, folder: str):
        self.path, self._fd = os.path.join(folder, LOCK_FILE), None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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


def publish_student(export_path: str, dest: str) -> str:
    """Place an exported student (written with its `files.student_metadata`) at `dest` (hard link, else a copy).
    Returns `dest`."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.lexists(dest):
        os.remove(dest)
    try:
        os.link(export_path, dest)
    except OSError:   # another file system, or links not allowed
        shutil.copyfile(export_path, dest)
    return dest
