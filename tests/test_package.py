"""The pack imports under one fixed name without its root on sys.path, and layers import one way."""
import ast
import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_package_is_importable_as_comfyui_salt_from_the_repo_root():
    import comfyui_salt
    assert pathlib.Path(comfyui_salt.__file__).resolve() == ROOT / "__init__.py"
    assert str(ROOT) not in [str(pathlib.Path(p).resolve()) for p in sys.path if p]


def test_the_root_is_not_on_sys_path_so_comfyuis_nodes_module_is_not_shadowed():
    code = ("import sys, comfyui_salt, importlib.util;"
            "spec = importlib.util.find_spec('nodes');"
            "print('none' if spec is None else spec.origin)")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert str(ROOT) not in out.stdout


def test_comfyui_style_folder_import_works():
    """ComfyUI executes the pack folder's __init__.py as a package under the folder name."""
    spec = importlib.util.spec_from_file_location("salt_pack_as_comfy", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        core = importlib.import_module("salt_pack_as_comfy.salt_core.model")
        assert hasattr(core, "WanModel")
    finally:
        for name in [n for n in sys.modules if n.startswith("salt_pack_as_comfy")]:
            del sys.modules[name]


def _imports(path: pathlib.Path):
    """(module, level) of every import statement in a file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level


def _violations(layer: str, forbidden: set):
    """Imports in ROOT/layer that reach a forbidden top-level package or pack layer."""
    bad = []
    for path in (ROOT / layer).rglob("*.py"):
        package = list(path.relative_to(ROOT).parts[:-1])  # e.g. ["salt_core", "toy"]
        for module, level in _imports(path):
            if level == 0:
                parts = module.split(".")
                target = parts[1] if parts[0] == "comfyui_salt" and len(parts) > 1 else parts[0]
            else:
                base = package[: len(package) - (level - 1)] if level - 1 <= len(package) else None
                resolved = (base or []) + [p for p in module.split(".") if p]
                target = resolved[0] if base is not None and resolved else "<outside the pack>"
            if target in forbidden or target == "<outside the pack>":
                bad.append(f"{path.relative_to(ROOT)}: {'.' * level}{module}")
    return bad


COMFY = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "server"}


def test_salt_core_imports_no_training_nodes_or_comfy():
    assert _violations("salt_core", COMFY | {"training", "nodes"}) == []


def test_training_imports_no_nodes_or_comfy():
    assert _violations("training", COMFY | {"nodes"}) == []


def test_the_layering_check_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "salt_core"
    fake.mkdir()
    (fake / "bad.py").write_text("from ..training import teacher\nimport comfy.samplers\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert len(_violations("salt_core", COMFY | {"training", "nodes"})) == 2


def test_pyproject_lists_every_package_of_the_pack():
    """A subpackage missing from pyproject's explicit `packages` would be left out of built wheels."""
    import tomllib
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"comfyui_salt." + ".".join(p.parent.relative_to(ROOT).parts)
             for layer in ("salt_core", "training", "nodes") for p in (ROOT / layer).rglob("__init__.py")}
    assert found <= declared, f"add {sorted(found - declared)} to [tool.setuptools] packages"
