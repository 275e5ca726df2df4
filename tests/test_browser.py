"""The served frontend in headless Chromium: it renders, and it loads every shipped workflow with all node types.

One ComfyUI boot for the module; every browser and server is stopped by its own PID. Chromium is Debian's
(`.ci/setup_comfyui` installs it best-effort); without it the tests skip. Two ways in:
- `chromium --headless --screenshot`: a screenshot of the first page, checked to be non-blank and kept as
  out/test-artifacts/frontend.png;
- the DevTools protocol (a small client over aiohttp's websocket): load each workflow with the frontend's
  own `app.loadGraphData`, list node types the frontend has not registered, and compare the frontend's own
  API prompt (`app.graphToPrompt`) with dev/workflow_api.py's conversion (an independent check of the
  converter and of the widget order in the shipped files). One screenshot per workflow is kept beside it.
"""
import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from comfy_import import MISSING, comfyui_installed
from comfyui_salt.dev.comfy_runner import prepare_base, start_server
from comfyui_salt.dev.workflow_api import convert
from helpers import NEEDS_CORE_NODES, missing_core_nodes

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "out" / "test-artifacts"
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
NO_CHROMIUM = ("Debian's chromium is not installed (bash .ci/setup_comfyui installs it when run as root, or: "
               "apt-get install -y chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,800"]
BROWSER_TIMEOUT_S = 120

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not comfyui_installed(), reason=MISSING),
              pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui_browser")
    prepare_base(base)          # also writes user/default/comfy.settings.json with Comfy.TutorialCompleted
    srv = start_server(base, threads=1)
    try:
        yield srv
    finally:
        srv.stop()


def stop_browser(process: subprocess.Popen) -> None:
    """Stop a browser started in its own session: its process group, by the browser's PID."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def run_browser(args: list, timeout: float = BROWSER_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run chromium to completion (bounded), in its own process group so no helper process outlives it."""
    process = subprocess.Popen([CHROMIUM, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_browser(process)
        raise AssertionError(f"chromium did not finish within {timeout} s")
    finally:
        stop_browser(process)
    return subprocess.CompletedProcess(args, process.returncode, out.decode(errors="replace"), "")


def distinct_colours(path: pathlib.Path) -> int:
    from PIL import Image
    with Image.open(path) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))


def test_the_frontend_renders_a_non_blank_page_in_headless_chromium(server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "frontend.png"
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        result = run_browser([*FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                              f"--screenshot={shot}", server.url + "/"])
    assert shot.is_file(), f"no screenshot (exit {result.returncode}):\n{result.stdout[-2000:]}"
    print(f"\nfrontend screenshot: {shot}")
    colours = distinct_colours(shot)
    assert colours > 100, f"{shot} has {colours} distinct colours: the page looks blank"


# -- DevTools protocol ----------------------------------------------------------------------------------------
class DevTools:
    """A minimal DevTools-protocol client for one page target (commands in order, events ignored)."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def send(self, method: str, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while True:
            message = await self.ws.receive_json(timeout=max(0.1, deadline - time.monotonic()))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str, timeout: float = 60):
        """The JSON value of a script run in the page (promises awaited); page exceptions fail the test."""
        result = await self.send("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                                 returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {json.dumps(result['exceptionDetails'])[:1500]}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.evaluate(expression):
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"the page never satisfied {expression!r} within {timeout} s")

    async def screenshot(self, path: pathlib.Path) -> None:
        import base64
        data = (await self.send("Page.captureScreenshot", format="png"))["data"]
        path.write_bytes(base64.b64decode(data))


LOAD_WORKFLOW = """(async () => {
  const wf = %s;
  await window.app.loadGraphData(wf, true, true, %s);
  const registered = window.LiteGraph.registered_node_types;
  const missing = [...new Set(wf.nodes.map(n => n.type).filter(t => !(t in registered)))];
  const prompt = await window.app.graphToPrompt();
  const c = window.app.canvas, b = [1e9, 1e9, -1e9, -1e9];          // whole graph in the screenshot
  for (const n of window.app.graph.nodes) {
    b[0] = Math.min(b[0], n.pos[0]); b[1] = Math.min(b[1], n.pos[1] - 40);
    b[2] = Math.max(b[2], n.pos[0] + n.size[0]); b[3] = Math.max(b[3], n.pos[1] + n.size[1]);
  }
  c.ds.scale = Math.min((c.canvas.width - 200) / (b[2] - b[0]), (c.canvas.height - 160) / (b[3] - b[1]));
  c.ds.offset = [140 / c.ds.scale - b[0], 120 / c.ds.scale - b[1]];          // clear of the side bar and menu
  c.setDirty(true, true);
  return {missing, nodes: window.app.graph.nodes.length, output: prompt.output};
})()"""


async def open_app(ws, url: str) -> "DevTools":
    """The page behind DevTools socket `ws` at the frontend `url`, once the app has registered its node types."""
    page = DevTools(ws)
    await page.send("Page.enable")
    await page.send("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
    await page.send("Page.navigate", url=url)
    await page.wait_for("!!(window.app && window.app.graph && window.LiteGraph && "
                        "Object.keys(window.LiteGraph.registered_node_types).length > 100)")
    return page


async def drive(port: int, url: str, object_info: dict) -> dict:
    """{workflow name: (missing types, node count, frontend API prompt, our API prompt)}; screenshots saved."""
    import aiohttp
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = [t for t in await r.json() if t["type"] == "page"]
                if targets:
                    break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "chromium's DevTools endpoint did not answer"
            await asyncio.sleep(0.25)
        async with session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = await open_app(ws, url)
            await page.screenshot(ARTIFACTS / "frontend_devtools.png")
            results = {}
            for path in WORKFLOWS:
                if missing_core_nodes(path.name, object_info):
                    continue                   # needs core nodes of a newer ComfyUI: the tests skip it here
                wf = json.loads(path.read_text())
                got = await page.evaluate(LOAD_WORKFLOW % (json.dumps(wf), json.dumps(path.name)))
                await asyncio.sleep(0.5)       # let the canvas draw before the screenshot
                await page.screenshot(ARTIFACTS / f"workflow_{path.stem}.png")
                # Inputs the server does not declare are frontend-only widgets (PreviewAny's text box): dropped.
                for node in got["output"].values():
                    declared = {k for group in object_info[node["class_type"]]["input"].values() for k in group}
                    node["inputs"] = {k: v for k, v in node["inputs"].items() if k in declared}
                results[path.name] = (got["missing"], got["nodes"], got["output"], convert(wf, object_info))
            return results


@pytest.fixture(scope="module")
def loaded_workflows(server):
    """Every shipped workflow loaded by the frontend in a headless Chromium driven over DevTools."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    object_info = server.get("/object_info", timeout=120)
    with devtools_browser() as port:
        return asyncio.run(asyncio.wait_for(drive(port, server.url + "/", object_info), BROWSER_TIMEOUT_S))


@contextlib.contextmanager
def devtools_browser():
    """A headless Chromium with a fresh profile and a DevTools endpoint: yields its port; stopped by its PID."""
    with tempfile.TemporaryDirectory() as profile:
        process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                    "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file, deadline = pathlib.Path(profile) / "DevToolsActivePort", time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text().strip():
                assert process.poll() is None, f"chromium exited with code {process.returncode}"
                assert time.monotonic() < deadline, "chromium wrote no DevToolsActivePort file"
                time.sleep(0.2)
            yield int(port_file.read_text().split()[0])
        finally:
            stop_browser(process)


def skip_if_not_loaded(loaded_workflows: dict, name: str) -> None:
    if name not in loaded_workflows:
        pytest.skip(f"{name} needs {NEEDS_CORE_NODES[name]}, core nodes of ComfyUI 0.16+ (the 0.33 line runs it)")


@pytest.mark.parametrize("name", [p.name for p in WORKFLOWS])
def test_the_frontend_loads_each_workflow_with_every_node_type_registered(loaded_workflows, name):
    skip_if_not_loaded(loaded_workflows, name)
    missing, count, _, _ = loaded_workflows[name]
    assert missing == [], f"{name}: node types the frontend does not know: {missing}"
    assert count == len(json.loads((ROOT / "workflows" / name).read_text())["nodes"])
    assert (ARTIFACTS / f"workflow_{pathlib.Path(name).stem}.png").is_file()


@pytest.mark.parametrize("name", [p.name for p in WORKFLOWS])
def test_the_frontends_own_api_prompt_equals_our_conversion(loaded_workflows, name):
    skip_if_not_loaded(loaded_workflows, name)
    _, _, theirs, ours = loaded_workflows[name]
    assert set(theirs) == set(ours), f"{name}: node ids differ"
    for node_id, node in ours.items():
        assert theirs[node_id]["class_type"] == node["class_type"], node_id
        assert theirs[node_id]["inputs"] == node["inputs"], f"{name} node {node_id} ({node['class_type']})"


LIVE_WORKFLOW = ROOT / "workflows" / "salt_toy_live.json"
QUEUE_LIVE = """(async () => {
  window.saltLiveShown = 0; window.saltLiveReceived = 0;
  await window.app.loadGraphData(%s);
  const node = window.app.graph.nodes.find(n => n.type === "SaltLiveStream");
  node.widgets.find(w => w.name === "max_chunks").value = 5000;
  node.widgets.find(w => w.name === "stream_id").value = "browser_live";
  await window.app.queuePrompt(0, 1);
  return node.id;
})()"""
RUNNING = "fetch('/queue').then(r => r.json()).then(q => q.queue_running.length)"


async def drive_live(port: int, url: str) -> dict:
    """Queue the toy live workflow from the page; what the page showed while it ran, then Stop from the node."""
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
            target = next(t for t in await r.json() if t["type"] == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = await open_app(ws, url)
            await page.evaluate(QUEUE_LIVE % LIVE_WORKFLOW.read_text())
            await page.wait_for("(window.saltLiveShown || 0) >= 12", timeout=120)
            seen = {"shown_while_running": await page.evaluate("window.saltLiveShown"),
                    "running": await page.evaluate(RUNNING),
                    "img": await page.evaluate("document.querySelector('.salt-live img').src.slice(0, 23)"),
                    "status": await page.evaluate("document.querySelector('.salt-live div').textContent")}
            await page.screenshot(ARTIFACTS / "live_node.png")
            seen["colour_before"] = shown_colour(await page.evaluate(SHOWN))
            await page.evaluate("document.querySelector('[data-salt-live=pause]').click()")
            await asyncio.sleep(2.0)                                 # what was in flight arrives
            paused_at = await page.evaluate("window.saltLiveReceived")
            await asyncio.sleep(2.0)
            seen["received_while_paused"] = await page.evaluate("window.saltLiveReceived") - paused_at
            await page.evaluate("document.querySelector('[data-salt-live=resume]').click()")
            await page.wait_for(f"window.saltLiveReceived > {paused_at}", timeout=30)
            await page.evaluate(TYPE_PROMPT % json.dumps(BLUE))
            start, seen["colour_after"] = time.monotonic(), None
            while time.monotonic() - start < 30:                     # the frame the page shows, 10 times a second
                colour = shown_colour(await page.evaluate(SHOWN))
                if colour == "blue":
                    seen["colour_after"], seen["switch_ms"] = colour, 1000 * (time.monotonic() - start)
                    break
                await asyncio.sleep(0.1)
            seen["period_ms"] = await page.evaluate(
                "fetch('/salt/live/browser_live/status').then(r => r.json()).then(s => s.period_ms)")
            await page.evaluate("document.querySelector('[data-salt-live=stop]').click()")
            await page.wait_for(f"{RUNNING}.then(n => n === 0)", timeout=60)
            seen["after_stop"] = await page.evaluate("window.saltLiveReceived")
            await page.wait_for("window.saltLiveEnded === 'stop'", timeout=30)   # the end event, after the frames
            seen["status_after_stop"] = await page.evaluate("document.querySelector('.salt-live div').textContent")
            return seen


SHOWN = "document.querySelector('.salt-live img').src"
BLUE = "a blue disc moving left on a dark background"
TYPE_PROMPT = """(() => {
  const input = document.querySelector('.salt-live input');
  input.value = %s;
  input.dispatchEvent(new Event('input'));
  document.querySelector('[data-salt-live=prompt]').click();
  return true;
})()"""


def shown_colour(data_url: str) -> str:
    """The toy oracle's sprite colour of the frame a page shows (a JPEG data URL, scaled back to 16 × 16)."""
    import base64
    import io
    import torch
    from PIL import Image
    from comfyui_salt.toy.metrics.fit import fit_sprites
    from comfyui_salt.toy.worlds import get_world
    world = get_world("default").cfg
    image = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB")
    import numpy as np
    pixels = torch.from_numpy(np.asarray(image.resize((16, 16), Image.BOX), dtype=np.float32))     # (16, 16, 3)
    clip = (pixels / 127.5 - 1).permute(2, 0, 1)[None, :, None].expand(1, 3, 3, 16, 16)
    return world.palette[int(fit_sprites(clip, world).colour_index[0, 0])][0]


def test_the_live_node_shows_frames_while_the_prompt_runs_and_its_stop_button_ends_it(server):
    """In headless Chromium with the pack's web extension: the toy live workflow queued from the page; frames play
    in the node while the prompt is still running (counted before it ends); the node's Stop button ends it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with devtools_browser() as port:
        seen = asyncio.run(asyncio.wait_for(drive_live(port, server.url + "/"), BROWSER_TIMEOUT_S + 120))
    assert seen["shown_while_running"] >= 12 and seen["running"] == 1, seen
    assert seen["img"] == "data:image/jpeg;base64," and seen["status"].startswith("chunk "), seen
    assert seen["after_stop"] < 5000 * 3                          # stopped long before its chunk budget
    assert seen["status_after_stop"].startswith("ended (stop) after chunk "), seen   # and the node says so
    assert seen["received_while_paused"] == 0, seen               # Pause: no frame arrives; Resume: they do again
    # a prompt typed in the node's box and applied: the shown video turns from red to blue (switch_noise 0.7 in the
    # workflow); the page shows at most 2 pushes behind the stream (6 frames at 16 fps)
    assert seen["colour_before"] == "red" and seen["colour_after"] == "blue", seen
    print(f"typed prompt → first blue frame shown: {seen['switch_ms']:.0f} ms; chunk period {seen['period_ms']} ms")
