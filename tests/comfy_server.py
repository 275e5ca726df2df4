"""Helpers (not tests): boot a real ComfyUI with this pack installed, talk to it over HTTP, stop it.

The server is ComfyUI 0.3.75 from .venv/comfyui (see .ci/setup_comfyui), started as
`python main.py --cpu --listen 127.0.0.1 --port <free> --base-directory <tmp> --disable-auto-launch`
with the pack symlinked into <tmp>/custom_nodes/comfyui_salt. Every wait is bounded; the server is
stopped by its own PID. Uses only the standard library.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from comfy_import import COMFYUI_DIR, ROOT

PACK_NAME = "comfyui_salt"
BOOT_TIMEOUT_S = 240     # ~40 s on an idle 2-core machine; generous for a busy one
PROMPT_TIMEOUT_S = 300


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        """Parsed JSON of GET `path` (AssertionError on a non-200 status)."""
        status, body = self.request(path, timeout=timeout)
        assert status == 200, f"GET {path}: HTTP {status}: {str(body)[:500]}"
        return body

    def queue(self, prompt: dict) -> tuple:
        """POST /prompt with an API-format graph: (status, response)."""
        return self.request("/prompt", {"prompt": prompt, "client_id": "salt-tests"})

    def wait(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT_S) -> dict:
        """The /history entry of a finished prompt (bounded wait; fails with the log tail on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_alive()
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and "status" in entry:  # the history holds a prompt only once it has finished
                return entry
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s; log tail:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = PROMPT_TIMEOUT_S) -> dict:
        """Queue a prompt that must pass validation and return its finished /history entry."""
        status, response = self.queue(prompt)
        assert status == 200, f"POST /prompt: HTTP {status}: {json.dumps(response)[:2000]}"
        return self.wait(response["prompt_id"], timeout)

    # -- process ----------------------------------------------------------------------------------------
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def assert_alive(self):
        code = self.process.poll()
        assert code is None, f"ComfyUI exited with code {code}; log tail:\n{self.log_tail()}"

    def stop(self):
        """Terminate the server by its PID (kill after 15 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def prepare_base(base: pathlib.Path) -> pathlib.Path:
    """A ComfyUI base directory with the pack linked into custom_nodes; returns models/diffusion_models."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    settings = base / "user" / "default"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    models = base / "models" / "diffusion_models"
    models.mkdir(parents=True, exist_ok=True)
    return models


def start_server(base: pathlib.Path, timeout: float = BOOT_TIMEOUT_S, threads: int = None) -> ComfyServer:
    """Boot ComfyUI on a free port with `base` as base directory and wait (bounded) until it answers.

    `threads` caps torch's CPU threads in the server (OMP_NUM_THREADS): the tests' tiny models run several
    times faster on one thread than on two contended ones.
    """
    port = free_port()
    log_path = base / "comfyui.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--disable-auto-launch"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
    server = ComfyServer(base, port, process, log_path)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            server.assert_alive()
            try:
                if server.request("/object_info/SaltToyModel", timeout=5)[0] == 200:
                    return server
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            time.sleep(0.5)
        raise AssertionError(f"ComfyUI did not answer within {timeout} s; log tail:\n{server.log_tail()}")
    except BaseException:
        server.stop()
        raise


def history_error(entry: dict) -> dict:
    """The execution_error message of a failed /history entry (node_id, node_type, exception_message, ...)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    raise AssertionError(f"no execution_error in {json.dumps(entry.get('status'))[:1000]}")


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
