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
    """Imports in ROOT/layer that reach a forbidden top-level package or pack layer (a front door in FRONT_DOORS
    is held to its own, smaller set)."""
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        package = list(path.relative_to(ROOT).parts[:-1])  # e.g. ["toy", "metrics"]
        forbidden_here = FRONT_DOORS.get(path.relative_to(ROOT).as_posix(), forbidden)
        for module, level in _imports(path):
            if level == 0:
                parts = module.split(".")
                target = parts[1] if parts[0] == "comfyui_salt" and len(parts) > 1 else parts[0]
            else:
                base = package[: len(package) - (level - 1)] if level - 1 <= len(package) else None
                resolved = (base or []) + [p for p in module.split(".") if p]
                target = resolved[0] if base is not None and resolved else "<outside the pack>"
            if target in forbidden_here or target == "<outside the pack>":
                bad.append(f"{path.relative_to(ROOT)}: {'.' * level}{module}")
    return bad


COMFY = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "latent_preview", "server"}
# The house, one-way: nodes → toy → training → salt_core. The CLI (training/__main__.py) is a front door like
# nodes: it may build the toy wing's callbacks and run the dev harness's demo. dev/ (the harness) may import
# anything and is imported by nothing in the package but that one command.
FORBIDDEN = {
    "salt_core": COMFY | {"training", "toy", "nodes", "dev"},
    "training": COMFY | {"toy", "nodes", "dev"},
    "toy": COMFY | {"nodes", "dev"},
    "nodes": {"dev"},
}
FRONT_DOORS = {"training/__main__.py": COMFY | {"nodes"}}


def test_salt_core_imports_no_training_toy_nodes_or_comfy():
    assert _violations("salt_core", FORBIDDEN["salt_core"]) == []


def test_training_imports_no_toy_nodes_dev_or_comfy_except_its_cli():
    assert _violations("training", FORBIDDEN["training"]) == []


def test_the_toy_wing_imports_no_nodes_dev_or_comfy():
    assert _violations("toy", FORBIDDEN["toy"]) == []


def test_nodes_import_no_dev_harness():
    assert _violations("nodes", FORBIDDEN["nodes"]) == []


def test_the_layering_check_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "salt_core"
    fake.mkdir()
    (fake / "bad.py").write_text("from ..training import teacher\nimport comfy.samplers\nfrom ..toy import world\n")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "job.py").write_text("from ..toy.jobs import distill_world\n")
    (tmp_path / "training" / "__main__.py").write_text("from ..toy.jobs import distill_world\nfrom ..dev.demo import run_demo\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert len(_violations("salt_core", FORBIDDEN["salt_core"])) == 3
    assert _violations("training", FORBIDDEN["training"]) == ["training/job.py: ..toy.jobs"]   # the CLI may


def test_pyproject_lists_every_package_of_the_pack_and_leaves_out_the_dev_harness():
    """A subpackage missing from pyproject's explicit `packages` would be left out of built wheels; the dev
    harness must be left out; the shipped toy assets must be package data."""
    import tomllib
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    found = {"comfyui_salt." + ".".join(p.parent.relative_to(ROOT).parts)
             for layer in FORBIDDEN for p in (ROOT / layer).rglob("__init__.py")}
    assert found <= declared, f"add {sorted(found - declared)} to [tool.setuptools] packages"
    assert not [name for name in declared if name.split(".")[1:2] == ["dev"]], "dev/ must not ship"
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
