"""Helpers (not tests): boot a real ComfyUI with this pack installed, talk to it over HTTP, stop it.

The implementation is the package's `training/comfy_runner.py` (the demo uses it too); this module only
points it at the tests' ComfyUI tree (`comfy_import.COMFYUI_DIR`, honouring SALT_COMFYUI_DIR).
"""
from comfy_import import COMFYUI_DIR
from comfyui_salt.training import comfy_runner
from comfyui_salt.training.comfy_runner import (BOOT_TIMEOUT_S, PACK_NAME, PROMPT_TIMEOUT_S,  # noqa: F401
                                                ComfyError, ComfyServer, free_port, history_error, output_files,
                                                prepare_base)


def start_server(base, timeout: float = BOOT_TIMEOUT_S, threads: int = None) -> ComfyServer:
    """Boot the tests' ComfyUI with `base` as base directory (see comfy_runner.start_server)."""
    return comfy_runner.start_server(base, timeout=timeout, threads=threads, comfyui_dir=COMFYUI_DIR)
