"""The pack imports under one fixed name without its root on sys.path, and layers import one way."""
import ast
import importlib.util
import pathlib
import subprocess
import sys

import pytest

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
    """Imports in ROOT/layer (a folder, or one file at the root) that reach a forbidden top-level package or pack
    layer."""
    bad = []
    paths = [ROOT / layer] if layer.endswith(".py") else sorted((ROOT / layer).rglob("*.py"))
    for path in paths:
        package = list(path.relative_to(ROOT).parts[:-1])  # e.g. ["toy", "metrics"]
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
# The house, one way: nodes → toy → training → weights → salt_core, with the front doors above them: the CLI (the
# package root's __main__.py), the development harness dev/ (the demo, the ComfyUI runner), bench/ and experiments/. Each
# layer lists what it may import; everything else of the pack (and ComfyUI, where not listed) is forbidden. No
# file is excepted.
PACK = {"salt_core", "weights", "training", "toy", "nodes", "dev", "bench", "experiments", "__main__"}
MAY_IMPORT = {
    "salt_core": set(),
    "weights": {"salt_core"},
    "training": {"salt_core", "weights"},
    "toy": {"salt_core", "weights", "training"},
    "nodes": {"salt_core", "weights", "training", "toy"} | COMFY,
    "dev": {"salt_core", "weights", "training", "toy"} | COMFY,
    "__main__.py": {"salt_core", "weights", "training", "toy", "dev"},
    "bench": {"salt_core", "weights", "training", "toy", "nodes", "dev"} | COMFY,
    "experiments": {"salt_core", "weights", "training", "toy", "dev", "__main__"},
}
FORBIDDEN = {layer: (PACK | COMFY) - allowed - {layer} for layer, allowed in MAY_IMPORT.items()}
SHIPPED = ("salt_core", "weights", "training", "toy", "nodes")


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_every_layer_imports_only_the_layers_below_it(layer):
    assert _violations(layer, FORBIDDEN[layer]) == []


def test_the_layering_check_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "salt_core"
    fake.mkdir()
    (fake / "bad.py").write_text("from ..training import teacher\nimport comfy.samplers\nfrom ..toy import world\n")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "job.py").write_text("from ..toy.jobs import distill_world\n")
    (tmp_path / "training" / "__main__.py").write_text("from ..dev.demo import run_demo\n")
    (tmp_path / "__main__.py").write_text("from .training.teacher import x\nfrom .nodes import y\n")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "run.py").write_text("from comfyui_salt.bench.golden import z\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert len(_violations("salt_core", FORBIDDEN["salt_core"])) == 3
    assert _violations("training", FORBIDDEN["training"]) == ["training/__main__.py: ..dev.demo",
                                                              "training/job.py: ..toy.jobs"]
    assert _violations("__main__.py", FORBIDDEN["__main__.py"]) == ["__main__.py: .nodes"]
    assert _violations("experiments", FORBIDDEN["experiments"]) == ["experiments/run.py: comfyui_salt.bench.golden"]


def test_pyproject_lists_every_package_of_the_pack_and_leaves_out_the_dev_harness():
    """A subpackage missing from pyproject's explicit `packages` would be left out of built wheels; the dev
    harness must be left out; the shipped toy assets must be package data."""
    import tomllib
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    found = {"comfyui_salt." + ".".join(p.parent.relative_to(ROOT).parts)
             for layer in SHIPPED for p in (ROOT / layer).rglob("__init__.py")}
    assert found <= declared, f"add {sorted(found - declared)} to [tool.setuptools] packages"
    for harness in ("dev", "bench", "experiments"):
        assert not [name for name in declared if name.split(".")[1:2] == [harness]], f"{harness}/ must not ship"
    assets = sorted(p.name for p in (ROOT / "toy" / "assets").glob("*.safetensors"))
    assert assets == ["toy_salt_student.safetensors", "toy_teacher.safetensors"]
    assert "comfyui_salt.toy.assets" in declared and setuptools["package-data"]["comfyui_salt.toy.assets"] == ["*.safetensors"]


def test_pytest_keeps_the_checkout_off_sys_path_whatever_the_folder_is_called(tmp_path):
    """Runs the real pytest with this project's [tool.pytest.ini_options] in a package folder named like a git
    clone of the repository (`comfyui-salt`, not an identifier): the default import mode puts that folder on
    sys.path (the pack's `nodes` then shadows ComfyUI's); ours must not."""
    import tomllib
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    checkout = tmp_path / "comfyui-salt"
    (checkout / "tests").mkdir(parents=True)
    (checkout / "__init__.py").write_text("")
    ini = "\n".join(f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {list(value)!r}"
                    for key, value in options.items())
    (checkout / "pyproject.toml").write_text("[tool.pytest.ini_options]\n" + ini.replace("'", '"') + "\n")
    (checkout / "tests" / "helpers.py").write_text("VALUE = 1\n")
    (checkout / "tests" / "test_probe.py").write_text(
        "import pathlib, sys\nfrom helpers import VALUE\n\n"
        "def test_probe():\n"
        "    root = pathlib.Path(__file__).resolve().parents[1]\n"
        "    assert VALUE == 1\n"
        "    assert str(root) not in [str(pathlib.Path(p).resolve()) for p in sys.path if p]\n")
    pytest_script = pathlib.Path(sys.executable).parent / "pytest"   # `python -m pytest` would add the cwd itself
    out = subprocess.run([str(pytest_script), "-q"], cwd=checkout, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_python_m_pytest_from_the_root_keeps_the_checkout_off_sys_path():
    """`python -m pytest` puts the working directory on sys.path: tests/conftest.py takes the root off again, so
    the pack's `nodes` does not shadow ComfyUI's (a test that imports ComfyUI's nodes module passes)."""
    probe = ("tests/test_nodes.py::"
             "test_salt_sigmas_are_self_forcing_timesteps_under_comfys_flow_sampling_as_sampler_ar_video_uses_them")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", probe], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-3000:]


def test_the_old_command_line_says_where_the_command_line_went():
    """`python -m comfyui_salt.training distill ...` (the 0.x form) runs nothing and names the new command."""
    done = subprocess.run([sys.executable, "-m", "comfyui_salt.training", "distill", "--preset", "toy-dmd"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "python -m comfyui_salt distill --preset toy-dmd" in done.stderr, done.stderr
    new = subprocess.run([sys.executable, "-m", "comfyui_salt", "--help"], capture_output=True, text=True, timeout=120)
    assert new.returncode == 0 and "{teacher,export-teacher,export,distill,ode-init,demo}" in new.stdout
