"""Publishing a run's student where ComfyUI lists models, replacing only what that run published before.

Each run folder gets an id (`run_id`, made at its first export) that the students it exports carry
(weights.files.RUN_META); a file at the published name is replaced only when it carries the run's id, or, from a
run that exported before runs had ids, when it is still that run's export or the file the run recorded before it
trained on (`published_without_id`). Students are placed whole by a rename. Knows nothing of ComfyUI.
"""
import filecmp
import os
import re
import shutil
import uuid

from ..weights.files import atomic_write, check_output, published_run
from .runs import RunError, open_own_to_read, write_text

RUN_ID_FILE = "run_id"   # in a run folder: the run's id (32 hex digits), carried by the students it exports
# in a run folder: the identity of a student without a run id that the run published (before runs had ids),
# recorded before it trains on: the proof that outlives the export made anew (published_here_by)
CLAIM_FILE = "published_without_id"


def run_identity(folder: str, create: bool = False) -> str:
    """Run folder `folder`'s id, from its RUN_ID_FILE; made once (random, written whole) where `create`, else ""
    when it has none yet (a run that has not exported, or one exported before runs had ids)."""
    path = os.path.join(folder, RUN_ID_FILE)
    found = _read_small(path)
    if re.fullmatch(r"[0-9a-f]{32}", found):
        return found
    if not create:
        return ""
    made = uuid.uuid4().hex
    write_text(path, made + "\n")
    return made


def published_here_by(dest: str, folder: str) -> bool:
    """Whether the file at `dest` is a student the run in `folder` published: it carries the run's id
    (files.RUN_META), or, from a run that exported before runs had ids, it is the file `claim_published` recorded
    before the run trained on, or still that run's export (a hard link of it, or a byte-identical copy: a models
    folder on another file system)."""
    mine, theirs = run_identity(folder), published_run(dest)
    if theirs:
        return theirs == mine
    claim = _read_small(os.path.join(folder, CLAIM_FILE))      # recorded before this run trained on (claim_published)
    if claim and _file_identity(dest) == claim:
        return True
    export = os.path.join(folder, "export", "student.safetensors")
    if mine or not os.path.isfile(export):
        return False
    try:
        return os.path.samefile(dest, export) or (os.path.getsize(dest) == os.path.getsize(export)
                                                  and filecmp.cmp(dest, export, shallow=False))
    except OSError:
        return False


def claim_published(dest: str, folder: str) -> None:
    """Before the run in `folder` trains on: when the file at `dest` is a student without a run id that the run
    published (published_here_by: still its export), record that file's identity (inode, size, modification
    time) in the run folder. The export made anew no longer matches it, and the run id written at
    export time ends the first rule: without the record, an export or a publish that failed (a full disk) would
    leave the run refused its own file for good."""
    if os.path.lexists(dest) and not published_run(dest) and published_here_by(dest, folder):
        write_text(os.path.join(folder, CLAIM_FILE), _file_identity(dest))


def _file_identity(path: str) -> str:
    """'inode:size:mtime_ns' of a file (another file put at `path`, or this one rewritten, changes it; the device
    number is left out: a network or FUSE file system may renumber it at a remount); "" when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _read_small(path: str, limit: int = 256) -> str:
    """The first `limit` characters of a small text file the run keeps, stripped; "" when missing, a link or not a
    plain file (open_own_to_read). Any other error reading it (permissions, another program holding it) is raised:
    taken as no file, a run id would be made anew over the one its published students carry."""
    try:
        with open_own_to_read(path) as f:
            return f.read(limit).strip()
    except (FileNotFoundError, RunError):
        return ""


def check_publish_dest(dest: str, folder: str, flag: str = "dest") -> bool:
    """Before a run trains: `dest` may take the student of the run in `folder` (files.check_output: never a file
    Salt did not write) and, when a file is there, the run published it (published_here_by): a student another
    run published, one whose run folder is gone, or one exported by the CLI is never replaced. Returns whether
    there is such a file of this run's (publish_student then replaces it); a ValueError naming `flag` otherwise."""
    check_output(dest, flag)
    if not os.path.lexists(dest):
        return False
    if published_here_by(dest, folder):
        return True
    if published_run(dest):
        whose = f"another run's (run id {published_run(dest)[:8]}…; its run folder may be gone)"
    else:
        whose = ("a student without a run id (a CLI export, or one published by a release before run ids whose run "
                 "folder no longer holds it)")
    raise ValueError(f"{flag}={dest!r} holds {whose}, not one the run in {folder!r} published; it is never "
                     f"replaced. Choose a new name, or move that file away first")


def publish_student(export_path: str, dest: str, flag: str = "dest", folder: str = None) -> str:
    """Place an exported student (written with its `files.student_metadata`) at `dest` (hard link, else a copy),
    replacing only a file Salt wrote there; a user's file at `dest` is never replaced: a ValueError naming `flag`
    (the input that chose `dest`) and where the export stays. With the run's `folder`, a file there is replaced only
    when that run published it (published_here_by; a student without a run id: claimed by claim_published before
    the run trained on). Returns `dest`."""
    try:
        check_output(dest, flag)
        mine = folder is None or not os.path.lexists(dest) or published_here_by(dest, folder)
        if not mine:
            check_publish_dest(dest, folder, flag)     # refuses, saying whose file it is
    except ValueError as e:
        raise ValueError(f"{e}; the student stays at {export_path!r}") from None
    def place(tmp):                   # whole or not at all: a copy cut by a full disk never takes the name
        os.remove(tmp)
        try:
            os.link(export_path, tmp)
        except OSError:               # another file system, or links not allowed
            shutil.copyfile(export_path, tmp)
    atomic_write(dest, place)
    return dest
