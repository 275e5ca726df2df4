"""ComfyUI's server: websocket events to the browsers and HTTP routes of the live node.
"""
import base64
import io as io_module
import sys

from PIL import Image


def push_event(event: str, data: dict, pixels: int) -> None:
    """Send `data` to every browser over ComfyUI's websocket as `event` (no server: nothing). Its "frames" IMAGE
    (N, H, W, 3) goes as JPEG data URLs, scaled to about `pixels` wide."""
    server = getattr(__import__("server").PromptServer, "instance", None) if "server" in sys.modules else None
    if server is None:
        return
    frames = data.pop("frames")
    urls = []
    for frame in frames:
        image = Image.fromarray((frame.clamp(0, 1) * 255).round().byte().numpy())
        scale = max(1, pixels // max(1, image.width))
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        out = io_module.BytesIO()
        image.save(out, "JPEG", quality=85)
        urls.append("data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode())
    server.send_sync(event, {**data, "frames": urls, "width": frames.shape[2], "height": frames.shape[1]})


def add_routes(prefix: str, handler, read_only=("status",)) -> bool:
    """Register GET and POST `<prefix>/{stream}/{action}` on ComfyUI's server (False without one): `handler(stream,
    action, body)` → (status, JSON) runs in the server's thread; a body that is not JSON is a 400. GET answers only
    the `read_only` actions (405 for the others): a cross-site GET (an <img> on any page) carries no Origin header,
    so ComfyUI's origin check cannot stop it, and it must not change anything."""
    server = getattr(__import__("server").PromptServer, "instance", None) if "server" in sys.modules else None
    if server is None:
        return False
    from aiohttp import web

    async def route(request):
        body = None
        if request.method == "GET" and request.match_info["action"] not in read_only:
            return web.json_response({"error": f"use POST for this action (GET only reads: {list(read_only)})"},
                                     status=405, headers={"Allow": "POST"})
        if request.method == "POST" and request.can_read_body:
            try:
                body = await request.json()
            except (ValueError, RecursionError):          # not JSON, or nested deeper than the parser recurses
                return web.json_response({"error": "the body is not JSON"}, status=400)
        status, reply = handler(request.match_info["stream"], request.match_info["action"], body)
        return web.json_response(reply, status=status)
    server.routes.get(prefix + "/{stream}/{action}")(route)
    server.routes.post(prefix + "/{stream}/{action}")(route)
    return True
