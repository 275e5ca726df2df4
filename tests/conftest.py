"""Fixtures shared by the node test files (ComfyUI's modules imported in-process; skipped when it is absent)."""
import os
import pathlib
import sys

import pytest

# `python -m pytest` puts the working directory on sys.path; from the checkout's root that makes the pack's `nodes`
# folder shadow ComfyUI's own `nodes` module (and `training`, `toy` other packs' ones). The pack is imported as
# `comfyui_salt` only, so the root leaves sys.path before any test module is collected.
_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if pathlib.Path(os.path.abspath(p or os.curdir)) != _ROOT]

from comfy_import import import_nodes  # noqa: E402  (after the sys.path fix above)


@pytest.fixture(scope="module")
def salt_nodes():
    """The pack's `nodes` package, imported the way ComfyUI imports it."""
    return import_nodes()


@pytest.fixture(scope="module")
def toy_salt(salt_nodes):
    """A SaltModel of the toy preset with random weights (the shipped teacher may not exist yet)."""
    from comfyui_salt.nodes.types import SaltModel
    from comfyui_salt.salt_core.model import build_model
    return SaltModel(build_model("toy", seed=0).eval(), "pixels", "random toy", causal=True)
