"""What the repository keeps of each lab run as soon as it finishes, and bringing it back on a fresh machine.

A session's machine can be replaced between sessions: everything under `runs/` (checkpoints, exports, metrics) is
then gone, and only what the repository holds survives. So each finished run's small files are copied into the
repository's kept folder at once (`keep_run`), gzipped without timestamps (a repeated keep writes the same bytes):
its config, summary, evaluation, the SC-triplet and mechanism measurements, and (for the arms whose gradient probes
are tabulated) its metrics. An ODE initialisation also keeps its exported student: every arm starts from it.
`restore_runs` writes them back under the experiment folder where a run folder is missing, with a mark
(`KEPT_MARK`): the runner then treats the run as finished, and the tables and measurement scripts read its files as
if the run had finished on this machine. A restored run has no checkpoints: a longer budget starts it again from its
ODE initialisation, which is the same run (distillation has no learning-rate schedule) up to the floating point of
another machine (about 1e-5; docs/method_lab.md "The teacher trained again reproduces").
An evaluation made from a longer run's milestone checkpoint (`MILESTONE_MARK`) is kept the same way.
"""
import gzip
import json
import os
import shutil

KEPT_MARK = "kept.json"        # in a restored run folder: where its files came from
# in the folder of an evaluation made from another run's milestone checkpoint (lab_experiment.py --milestone): which
# run and after how many updates; that arm × seed is finished at this budget without a run of its own
MILESTONE_MARK = "milestone.json"
SMALL_FILES = ("config.json", "summary.json", "lab_eval.json", "sc_triplets.json", MILESTONE_MARK)
MECHANISM_PREFIX = "sc_mechanism"   # sc_mechanism.json and sc_mechanism_<updates>.json
METRICS = "metrics.jsonl"
WEIGHTS = os.path.join("export", "student.safetensors")


def _gzip_bytes(data: bytes, path: str) -> None:
    """`data` gzipped into `path` without timestamp or name (a repeated keep writes the same bytes), made whole
    under a temporary name, then renamed into place."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(data)
    os.replace(tmp, path)


def write_gzip_json(path: str, obj) -> None:
    """`obj` as gzipped JSON at `path` (the kept form of a run's JSON files)."""
    _gzip_bytes(json.dumps(obj).encode(), path)


def read_json(path: str):
    """The JSON file `path`, or its kept copy `path.gz`, or None when neither exists."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if os.path.exists(path + ".gz"):
        with gzip.open(path + ".gz", "rt") as f:
            return json.load(f)
    return None


def kept_names(run_dir: str, metrics: bool = False) -> list:
    """The files of `run_dir` the repository keeps (names relative to it), in a fixed order."""
    names = [n for n in SMALL_FILES if os.path.exists(os.path.join(run_dir, n))]
    names += sorted(n for n in os.listdir(run_dir) if n.startswith(MECHANISM_PREFIX) and n.endswith(".json"))
    if metrics and os.path.exists(os.path.join(run_dir, METRICS)):
        names.append(METRICS)
    return names


def keep_run(run_dir: str, dest: str, metrics: bool = False, weights: bool = False) -> list:
    """Copy a finished run's small files into `dest` (made if missing) as `<name>.gz`, its metrics too when `metrics`,
    and its exported student as `student.safetensors` when `weights` (an ODE initialisation); returns the paths
    written. Nothing is kept of a folder that was itself restored (its kept files are already in place)."""
    if os.path.exists(os.path.join(run_dir, KEPT_MARK)):
        return []
    os.makedirs(dest, exist_ok=True)
    written = []
    for name in kept_names(run_dir, metrics):
        with open(os.path.join(run_dir, name), "rb") as f:
            _gzip_bytes(f.read(), os.path.join(dest, name + ".gz"))
        written.append(os.path.join(dest, name + ".gz"))
    if weights and os.path.exists(os.path.join(run_dir, WEIGHTS)):
        target = os.path.join(dest, "student.safetensors")
        shutil.copyfile(os.path.join(run_dir, WEIGHTS), target + ".tmp")
        os.replace(target + ".tmp", target)
        written.append(target)
    return written


def _kept_folders(root: str):
    """(relative folder, [kept file names]) of every folder under `root` holding kept files."""
    for folder, _, files in sorted(os.walk(root)):
        names = sorted(f for f in files if f.endswith(".gz") or f == "student.safetensors")
        if names:
            yield os.path.relpath(folder, root), names


def restore_runs(kept: str, out: str) -> list:
    """Write the runs kept under `kept` back under `out` where their folder is missing (files un-gzipped to their
    names; a kept student to export/student.safetensors), each with KEPT_MARK; returns the folders restored.
    A folder that exists under `out` is left alone: a run that was (re)started here keeps its own files."""
    restored = []
    for rel, names in _kept_folders(kept):
        target = os.path.join(out, rel)
        if rel == "." or os.path.exists(target):
            continue
        tmp = os.path.join(os.path.dirname(target), f".restoring-{os.path.basename(target)}")   # no seed* name
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name in names:
            src = os.path.join(kept, rel, name)
            if name == "student.safetensors":
                os.makedirs(os.path.join(tmp, "export"))
                shutil.copyfile(src, os.path.join(tmp, WEIGHTS))
            else:
                with gzip.open(src, "rb") as f, open(os.path.join(tmp, name[:-len(".gz")]), "wb") as g:
                    shutil.copyfileobj(f, g)
        with open(os.path.join(tmp, KEPT_MARK), "w") as f:
            json.dump({"from": os.path.join(kept, rel)}, f)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(tmp, target)
        restored.append(target)
    return restored


def measured_in(folders, rel: str, name: str):
    """`<folder>/<rel>/<name>` of the first of `folders` that has it or its kept `.gz` (read it with read_json),
    or None: an experiment first, then the folders of its runs trained again for the measurements their kept
    copies lack (lab_experiment.py --remeasure)."""
    for folder in folders:
        path = os.path.join(folder, rel, name)
        if os.path.exists(path) or os.path.exists(path + ".gz"):
            return path
    return None


def is_restored(run_dir: str) -> bool:
    """True for a run folder `restore_runs` wrote (finished on an earlier machine; no checkpoints here)."""
    return os.path.exists(os.path.join(run_dir, KEPT_MARK))


def finished_elsewhere(run_dir: str) -> bool:
    """True when an arm × seed needs no run here: restored from the repository, or evaluated from a longer run's
    milestone checkpoint."""
    return is_restored(run_dir) or os.path.exists(os.path.join(run_dir, MILESTONE_MARK))
