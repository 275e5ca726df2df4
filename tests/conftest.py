"""Fixtures shared by the node test files (ComfyUI's modules imported in-process; skipped when it is absent)."""
import pytest

from comfy_import import import_nodes


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
