"""Run UI-format workflows in a real ComfyUI, headless: boot it, queue a prompt, collect the files, stop it.

The server is a subprocess, `python main.py --cpu --listen 127.0.0.1 --port <free> --base-directory <tmp>
--disable-auto-launch`, started from a ComfyUI tree (default `.venv/comfyui`, 0.3.75, installed by `bash .ci/setup`;
`COMFYUI_033_DIR` names the newer 0.33 tree from .ci/setup_comfyui_033) with this pack symlinked into
`<tmp>/custom_nodes/comfyui_salt`; a tree's own packages (`<tree>/site`, e.g. 0.33's newer frontend) come first on
the server's PYTHONPATH. Every wait is bounded and the server is always stopped by its own PID. Used by the demo
(`dev/demo.py`) and by the server and browser tests.

Knows nothing of ComfyUI's modules (it only talks HTTP, standard library only) nor of what a workflow
means: the caller edits the API prompt and reads the files.
"""
import contextlib
import json
import logging
import os
import pathlib
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from .workflow_api import convert

log = logging.getLogger("salt.comfy")

PACK_NAME = "comfyui_salt"
PACK_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_COMFYUI_DIR = pathlib.Path(os.environ.get("SALT_COMFYUI_DIR", PACK_ROOT / ".venv" / "comfyui"))
# The newer line for tests, beside 0.3.75: absent unless the shared tarball was there at setup.
COMFYUI_033_DIR = pathlib.Path(os.environ.get("SALT_COMFYUI_033_DIR", PACK_ROOT / ".venv" / "comfyui-0.33"))
BOOT_TIMEOUT_S = 240     # ~15-40 s on an idle 2-core machine; generous for a busy one
PROMPT_TIMEOUT_S = 300


class ComfyError(RuntimeError):
    """ComfyUI missing, failing to boot, refusing a prompt or failing to execute it (message says which)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_comfyui(comfyui_dir) -> pathlib.Path:
    """The ComfyUI tree as a Path, or a ComfyError saying how to install it."""
    path = pathlib.Path(comfyui_dir or DEFAULT_COMFYUI_DIR)
    if not ((path / "main.py").is_file() and (path / "comfy_api").is_dir()):
        raise ComfyError(f"ComfyUI is not installed at {path} (no main.py / comfy_api there); run `bash .ci/setup` "
                         f"(it installs ComfyUI 0.3.75 into .venv/comfyui) or pass the path of a ComfyUI >= 0.3.75 tree")
    return path


def comfyui_version(comfyui_dir) -> str:
    """The version of a ComfyUI tree as its comfyui_version.py says ("0.3.75", "0.33.0"); "" when it has none."""
    path = pathlib.Path(comfyui_dir or DEFAULT_COMFYUI_DIR) / "comfyui_version.py"
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", path.read_text()) if path.is_file() else None
    return found.group(1) if found else ""


def comfyui_site(comfyui_dir):
    """The tree's own package folder `<tree>/site` (packages it needs at other versions than the venv's, installed
    there by .ci/setup_comfyui_033) as a Path, or None when it has none."""
    site = pathlib.Path(comfyui_dir or DEFAULT_COMFYUI_DIR) / "site"
    return site if site.is_dir() else None


def comfyui_env(comfyui_dir, env: dict = None) -> dict:
    """A copy of `env` (default os.environ) for a process running the tree: its `site` folder first on PYTHONPATH,
    so its packages win over the venv's."""
    env = dict(os.environ if env is None else env)
    site = comfyui_site(comfyui_dir)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    return env


class ComfyServer:
    """A running ComfyUI process: HTTP helpers, its log, its base directory."""

    def __init__(self, base: pathlib.Path, port: int, process: subprocess.Popen, log_path: pathlib.Path):
        self.base, self.port, self.process, self.log_path = base, port, process, log_path
        self.url = f"http://127.0.0.1:{port}"

    # -- HTTP -------------------------------------------------------------------------------------------
    def request(self, path: str, body: dict = None, timeout: float = 30) -> tuple:
        """(status, parsed JSON or text) of GET `path`, or POST of `body` as JSON."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str, timeout: float = 30):
        """Parsed JSON of GET `path` (ComfyError on a non-200 status)."""
        status, body = self.request(path, timeout=timeout)
        if status != 200:
            raise ComfyError(f"GET {path}: HTTP {status}: {str(body)[:500]}")
        return body

    def queue(self, prompt: dict) -> tuple:
        """POST /prompt with an API-format graph: (status, response)."""
        return self.request("/prompt", {"prompt": prompt, "client_id": "salt"})

    def wait(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT_S) -> dict:
        """The /history entry of a finished prompt (bounded wait; ComfyError with the log tail on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and "status" in entry:  # the history holds a prompt only once it has finished
                return entry
            time.sleep(0.25)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout} s; log tail:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = PROMPT_TIMEOUT_S) -> dict:
        """Queue a prompt that must pass validation and return its finished /history entry (failed or not)."""
        status, response = self.queue(prompt)
        if status != 200:
            raise ComfyError(f"ComfyUI refused the prompt (HTTP {status}): {format_prompt_error(response)}")
        return self.wait(response["prompt_id"], timeout)

    # -- process ----------------------------------------------------------------------------------------
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def check_alive(self):
        """ComfyError with the log tail if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise ComfyError(f"ComfyUI exited with code {code}; log tail:\n{self.log_tail()}")

    def stop(self):
        """Terminate the server by its PID (kill after 15 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def prepare_base(base: pathlib.Path, models: dict = None) -> pathlib.Path:
    """A ComfyUI base directory with the pack linked into custom_nodes and `models` {file name: path} linked into
    models/diffusion_models; returns models/diffusion_models."""
    base = pathlib.Path(base)
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(PACK_ROOT, target_is_directory=True)
    settings = base / "user" / "default"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    folder = base / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in (models or {}).items():
        if not (folder / name).exists():
            (folder / name).symlink_to(pathlib.Path(path).resolve())
    return folder


# Flags the harness sets itself: a server bound to loopback on a free port, inside its own temporary folders.
ISOLATION_FLAGS = ("--listen", "--port", "--base-directory", "--output-directory", "--input-directory",
                   "--temp-directory", "--user-directory", "--extra-model-paths-config", "--enable-cors-header",
                   "--database-url", "--tls-keyfile", "--tls-certfile")


def extra_args(text: str) -> list:
    """Extra ComfyUI flags for development checks (SALT_COMFYUI_ARGS, e.g. "--front-end-root DIR" for another
    frontend), split as a shell would; a ComfyError for text that does not split (an unbalanced quote) and for flags
    that would undo the harness's isolation (ISOLATION_FLAGS)."""
    try:
        args = shlex.split(text)
    except ValueError as e:
        raise ComfyError(f"SALT_COMFYUI_ARGS={text[:80]!r} does not split into flags ({e}); quote as in a shell") \
            from None
    # argparse takes any unambiguous prefix of a flag (--liste, --base-dir): a prefix of a guarded flag is refused too
    taken = [a for a in args if a.startswith("--") and len(a.split("=", 1)[0]) > 2
             and any(flag.startswith(a.split("=", 1)[0]) for flag in ISOLATION_FLAGS)]
    if taken:
        raise ComfyError(f"SALT_COMFYUI_ARGS sets {taken}: the harness binds 127.0.0.1 on a free port in its own "
                         f"folders, so these flags are refused; drop them")
    return args


def start_server(base: pathlib.Path, timeout: float = BOOT_TIMEOUT_S, threads: int = None,
                 comfyui_dir=None) -> ComfyServer:
    """Boot ComfyUI on a free port with `base` as base directory and wait (bounded) until the pack's nodes answer.

    `threads` caps torch's CPU threads in the server (OMP_NUM_THREADS): tiny models run several times faster on
    one thread than on two contended ones.
    """
    comfyui_dir = check_comfyui(comfyui_dir)
    base = pathlib.Path(base)
    port = free_port()
    log_path = base / "comfyui.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--disable-auto-launch"]
    cmd += extra_args(os.environ.get("SALT_COMFYUI_ARGS", ""))
    env = comfyui_env(comfyui_dir, dict(os.environ, PYTHONUNBUFFERED="1"))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_path, "wb") as out:
        process = subprocess.Popen(cmd, cwd=comfyui_dir, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
    server = ComfyServer(base, port, process, log_path)
    log.info("ComfyUI starting (pid %d, port %d, log %s)", process.pid, port, log_path)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            server.check_alive()
            try:
                status, body = server.request("/object_info/SaltToyModel", timeout=5)
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                status, body = None, None
            if status == 200:
                # custom nodes load before the server listens: an answer without our node means the pack failed
                if not (isinstance(body, dict) and "SaltToyModel" in body):
                    raise ComfyError(f"ComfyUI started but the pack {PACK_NAME} did not load; log tail:\n"
                                     f"{server.log_tail()}")
                return server
            time.sleep(0.5)
        raise ComfyError(f"ComfyUI did not answer within {timeout} s; log tail:\n{server.log_tail()}")
    except BaseException:
        server.stop()
        raise


@contextlib.contextmanager
def comfy_server(base=None, models: dict = None, threads: int = 1, comfyui_dir=None,
                 timeout: float = BOOT_TIMEOUT_S):
    """A running ComfyUI with the pack installed (in a temporary base directory unless `base`), stopped on exit."""
    with contextlib.ExitStack() as stack:
        if base is None:
            base = stack.enter_context(tempfile.TemporaryDirectory(prefix="salt_comfyui_"))
        prepare_base(base, models)
        server = start_server(base, timeout=timeout, threads=threads, comfyui_dir=comfyui_dir)
        stack.callback(server.stop)
        yield server


def format_prompt_error(response) -> str:
    """One readable text of a POST /prompt error response: the error, then each node's errors."""
    if not isinstance(response, dict):
        return str(response)[:2000]
    err = response.get("error") or {}
    lines = [f"{err.get('message', '')} {err.get('details', '')}".strip()] if isinstance(err, dict) else [str(err)]
    for node_id, node in (response.get("node_errors") or {}).items():
        for e in node.get("errors", []):
            lines.append(f"node {node_id} ({node.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def history_error(entry: dict) -> dict:
    """The execution_error message of a failed /history entry (node_id, node_type, exception_message, ...)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    raise ComfyError(f"no execution_error in {json.dumps(entry.get('status'))[:1000]}")


def output_files(server: ComfyServer, entry: dict) -> list:
    """Paths of the files a finished prompt's output nodes saved (images / animated / videos)."""
    paths = []
    for node_out in entry.get("outputs", {}).values():
        for key in ("images", "gifs", "videos"):
            for item in node_out.get(key, []):
                if isinstance(item, dict) and "filename" in item:
                    folder = server.base / item.get("type", "output")
                    paths.append(folder / item.get("subfolder", "") / item["filename"])
    return paths


def run_workflow(server: ComfyServer, workflow: dict, edit=None, timeout: float = PROMPT_TIMEOUT_S) -> list:
    """Convert a UI-format workflow against the server's /object_info, apply `edit(prompt)` (in place), run it;
    returns the saved files' paths. ComfyError with ComfyUI's node error if it fails."""
    prompt = convert(workflow, server.get("/object_info", timeout=120))
    if edit is not None:
        edit(prompt)
    entry = server.run(prompt, timeout)
    if entry.get("status", {}).get("status_str") == "error":
        e = history_error(entry)
        raise ComfyError(f"ComfyUI failed in node {e.get('node_id')} ({e.get('node_type')}): "
                         f"{e.get('exception_type')}: {e.get('exception_message')}")
    return output_files(server, entry)
