"""Helpers (not tests): ComfyUI's modules and the pack's `nodes` inside a test process (dev/comfy_import.py), or
the test skipped with a message naming the setup command when ComfyUI is not installed."""
import pytest

from comfyui_salt.dev import comfy_import as _comfy
from comfyui_salt.dev.comfy_import import COMFYUI_DIR, MISSING, comfyui_installed  # noqa: F401  (tests use them)


def import_comfy():
    """Make `comfy`, `comfy_api`, `folder_paths`, ... importable here (CPU mode); skip the test if absent."""
    if not comfyui_installed():
        pytest.skip(MISSING)
    _comfy.import_comfy()


def import_nodes():
    """The pack's `comfyui_salt.nodes` package, imported with ComfyUI available."""
    import_comfy()
    return _comfy.import_nodes()
