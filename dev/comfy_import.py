"""Import ComfyUI's modules and the pack's `nodes` package into this process (tests, benchmarks).

ComfyUI lives where the dev harness looks for it (`comfy_runner.DEFAULT_COMFYUI_DIR`: .venv/comfyui, installed by
.ci/setup_comfyui, or SALT_COMFYUI_DIR, e.g. .venv/comfyui-0.33). It is appended to sys.path of the calling
process only, with its command line parsed as `--cpu`: otherwise comfy.model_management probes CUDA when imported.
A tree's own packages (`<tree>/site`: 0.33's frontend, comfy-aimdo, ...) go first on sys.path, before
site-packages, so they win over the venv's versions.
"""
import importlib
import sys

from .comfy_runner import DEFAULT_COMFYUI_DIR as COMFYUI_DIR, ComfyError, check_comfyui, comfyui_site

MISSING = f"ComfyUI is not installed at {COMFYUI_DIR}; run `bash .ci/setup_comfyui` (part of .ci/setup)"


def comfyui_installed() -> bool:
    """True when the ComfyUI tree is present."""
    try:
        check_comfyui(COMFYUI_DIR)
    except ComfyError:
        return False
    return True


def import_comfy():
    """Make `comfy`, `comfy_api`, `folder_paths`, ... importable here (CPU mode); ComfyError when absent."""
    if "comfy.model_management" in sys.modules:
        return
    if not comfyui_installed():
        raise ComfyError(MISSING)
    site = comfyui_site(COMFYUI_DIR)
    if site is not None and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.append(str(COMFYUI_DIR))   # appended: ComfyUI's top-level `utils`, `tests`, ... must not shadow ours
    import comfy.options
    comfy.options.enable_args_parsing()
    argv = sys.argv
    sys.argv = [argv[0], "--cpu"]
    try:
        importlib.import_module("comfy.cli_args")
        importlib.import_module("comfy.model_management")
    finally:
        sys.argv = argv


def import_nodes():
    """The pack's `comfyui_salt.nodes` package, imported with ComfyUI available."""
    import_comfy()
    return importlib.import_module("comfyui_salt.nodes")
