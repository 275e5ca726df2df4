"""Salt: few-step video generation for ComfyUI (SC-DMD + cache-aware distillation).

This root is both a ComfyUI custom-node pack (ComfyUI executes this file as a package) and the
Python package `comfyui_salt` (editable install maps the root to that name). Library users import
`comfyui_salt.salt_core` / `comfyui_salt`; only ComfyUI needs the node entry point, so it
is imported only when ComfyUI's API is present.
"""
import importlib.util

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"   # the live view (web/salt_live.js), served by ComfyUI for this pack

if importlib.util.find_spec("comfy_api") is not None:  # running inside ComfyUI
    from .nodes import comfy_entrypoint  # noqa: F401
