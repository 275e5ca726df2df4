"""ComfyUI's server: websocket events to the browsers and HTTP routes of the live node.
"""
import base64
import io as io_module
import json
import sys

from PIL import Image

MAX_BODY = 64 << 10     # bytes a route's JSON body may have (a typed prompt is at most a few KB)
JSON_TYPE = "application/json"    # the only body a route takes (a cross-site page must ask first to send it)


def shown_size(width: int, height: int, pixels: int) -> tuple:
    """The (width, height) a frame is pushed at: its longer side about `pixels`, the aspect kept (larger frames
    shrunk, smaller ones enlarged by a whole factor, so a toy's 16 px frames stay sharp). Both sides end at most
    `pixels`: a tall, narrow frame enlarged by its width alone (4 × 8192 → 256 × 524,288) took hundreds of MiB and
    was past JPEG's 65,500 px."""
    longer = max(1, width, height)
    if longer > pixels:
        return max(1, round(width * pixels / longer)), max(1, round(height * pixels / longer))
    scale = max(1, pixels // longer)
    return width * scale, height * scale


MAX_BACKLOG = 4   # messages waiting in ComfyUI's send queue beyond which a push goes without its frames


def backlog(server) -> int:
    """Messages waiting in ComfyUI's send queue (one coroutine sends them in turn, waiting on each socket: a slow
    browser holds every message behind it); 0 where the server has no such queue."""
    messages = getattr(server, "messages", None)
    try:
        return int(messages.qsize()) if messages is not None else 0
    except (AttributeError, TypeError, ValueError):
        return 0


def push_event(event: str, data: dict, pixels: int) -> None:
    """Send `data` over ComfyUI's websocket as `event` to the browser that queued the prompt (ComfyUI's own previews
    go there; every browser when the prompt names none; no server: nothing). Its "frames" IMAGE (N, H, W, 3) goes as
    JPEG data URLs about `pixels` wide (shown_size); data without "frames" goes as it is. While more than
    MAX_BACKLOG messages wait to be sent (a browser slower than the stream), the frames are left out and counted as
    "skipped": the view stays live instead of falling further behind, and the server's memory stays bounded (the
    node's IMAGE output keeps every frame)."""
    server = getattr(__import__("server").PromptServer, "instance", None) if "server" in sys.modules else None
    if server is None:
        return
    if "frames" not in data:
        server.send_sync(event, data, getattr(server, "client_id", None))
        return
    frames = data.pop("frames")
    if backlog(server) > MAX_BACKLOG:
        server.send_sync(event, {**data, "frames": [], "skipped": len(frames), "width": frames.shape[2],
                                 "height": frames.shape[1]}, getattr(server, "client_id", None))
        return
    urls = []
    for frame in frames:
        image = Image.fromarray((frame.clamp(0, 1) * 255).round().byte().numpy())
        size = shown_size(image.width, image.height, pixels)
        image = image.resize(size, Image.BILINEAR if size[0] < image.width else Image.NEAREST)
        out = io_module.BytesIO()
        image.save(out, "JPEG", quality=85)
        urls.append("data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode())
    server.send_sync(event, {**data, "frames": urls, "width": frames.shape[2], "height": frames.shape[1]},
                     getattr(server, "client_id", None))


def add_routes(prefix: str, handler, read_only=("status",)) -> bool:
    """Register GET and POST `<prefix>/{stream}/{action}` on ComfyUI's server (False without one): `handler(stream,
    action, body)` → (status, JSON) runs in the server's thread (make_route). GET answers only the `read_only`
    actions (405 for the others): a cross-site GET (an <img> on any page) carries no Origin header, so ComfyUI's
    origin check cannot stop it, and it must not change anything. (aiohttp also answers HEAD on a GET route, and
    ComfyUI's copy of each route under /api takes no `allow_head=False`: make_route refuses HEAD itself.)"""
    server = getattr(__import__("server").PromptServer, "instance", None) if "server" in sys.modules else None
    if server is None:
        return False
    route = make_route(handler, read_only)
    server.routes.get(prefix + "/{stream}/{action}")(route)   # (aiohttp adds HEAD: make_route refuses it)
    server.routes.post(prefix + "/{stream}/{action}")(route)
    return True


def make_route(handler, read_only=("status",)):
    """The aiohttp handler `add_routes` registers: only POST changes anything (GET, and any other method, answers
    the `read_only` actions alone: 405 otherwise). A POST must say `Content-Type: application/json` (415
    otherwise): a web page on another site can send a form or text POST without asking the server first (no CORS
    preflight), and ComfyUI checks such a request's origin only when it is reached by a loopback address. Its body
    is read to its end but no further than MAX_BODY bytes (413 past it; it may arrive in several pieces) and must
    be UTF-8 JSON (400 otherwise, whatever charset the request names)."""
    from aiohttp import web

    async def route(request):
        body = None
        if request.method != "POST" and request.match_info["action"] not in read_only:
            return web.json_response({"error": f"use POST for this action (GET only reads: {list(read_only)})"},
                                     status=405, headers={"Allow": "POST"})
        if request.method == "POST":
            if request.content_type != JSON_TYPE:      # the media type alone, lower case (aiohttp)
                return web.json_response({"error": f"Content-Type {request.content_type[:60]!r}; send the body as "
                                                   f"JSON with Content-Type: {JSON_TYPE} (e.g. {{}} for stop, pause "
                                                   f"and resume)"}, status=415)
            if (request.content_length or 0) > MAX_BODY:
                return web.json_response({"error": f"the body is over {MAX_BODY} bytes"}, status=413)
            raw = bytearray()
            while len(raw) <= MAX_BODY:          # one read returns what has arrived so far: read to the end
                piece = await request.content.read(MAX_BODY + 1 - len(raw))
                if not piece:
                    break
                raw += piece
            if len(raw) > MAX_BODY:
                return web.json_response({"error": f"the body is over {MAX_BODY} bytes"}, status=413)
            try:
                body = json.loads(raw.decode("utf-8")) if raw else None
            except (ValueError, RecursionError):     # not UTF-8, not JSON, or nested deeper than the parser recurses
                return web.json_response({"error": "the body is not JSON"}, status=400)
        status, reply = handler(request.match_info["stream"], request.match_info["action"], body)
        return web.json_response(reply, status=status)
    return route
