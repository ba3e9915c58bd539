"""Packaging: the wheel installs one project package (`tarsier_hf`, with eval/ as `tarsier_hf.eval`) and the
remote-code modules, nothing with a generic name; every console script of setup.cfg runs from the environment."""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import console_script

REPO = Path(__file__).resolve().parents[1]
SETUP = configparser.ConfigParser()
SETUP.read(REPO / "setup.cfg")
CONSOLE_SCRIPTS = dict(
    (name.strip(), target.strip())
    for name, target in (line.split("=") for line in SETUP["options.entry_points"]["console_scripts"].split("\n")
                         if line.strip())
)
# The remote-code modules a checkpoint names in its auto_map keep their own top-level names.
REMOTE_CODE = re.compile(r"^[a-z_]+_tarsier2?$")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy of the sources, so the checkout gets no build/ or *.egg-info
    source = tmp_path_factory.mktemp("src") / "tarsier-hf"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "outputs", "*.egg-info", "__pycache__", "tests"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
         str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = out.glob("tarsier_hf-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_wheel_installs_only_project_names(wheel):
    names = wheel.namelist()
    top_level = {name.split("/")[0].removesuffix(".py") for name in names if ".dist-info/" not in name}
    assert "tarsier_hf" in top_level
    generic = sorted(name for name in top_level if name != "tarsier_hf" and not REMOTE_CODE.match(name))
    assert not generic, f"generic top-level names in the wheel: {generic}"
    # Every remote-code file at the repo root travels in the wheel (a new one must be added to py_modules).
    assert {p.stem for p in REPO.glob("*_tarsier*.py")} <= top_level
    # train_sft.py is a script run from a checkout, like TRL's examples/scripts/sft_vlm.py.
    assert "train_sft" not in top_level


def test_wheel_holds_every_module_and_asset(wheel):
    names = set(wheel.namelist())
    expected = {f"tarsier_hf/{p.relative_to(REPO / 'tarsier_hf').as_posix()}" for p in (REPO / "tarsier_hf").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
    expected |= {f"tarsier_hf/eval/{p.relative_to(REPO / 'eval').as_posix()}" for p in (REPO / "eval").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    missing = sorted(expected - names)
    assert not missing, f"files of the repo missing from the wheel: {missing}"
    # the evaluate modules load from the installed package as from the repo (their relative imports included)
    assert {"tarsier_hf/eval/cider/cider.py", "tarsier_hf/eval/autodq/autodq.py",
            "tarsier_hf/eval/side_by_side/static/app.js", "tarsier_hf/chat_templates/chatml.jinja",
            "video_processing_tarsier.py"} <= names


def test_installed_processor_reads_its_chat_templates_from_the_wheel(wheel, tmp_path):
    """`pip install` of the wheel into an empty folder: the remote-code modules import from there and the
    processor finds the `.jinja` chat templates the package ships (not the checkout's copies)."""
    target = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), wheel.filename],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    probe = ("import json, processing_tarsier as p, video_processing_tarsier as v; "
             "print(json.dumps([p.__file__, v.__file__, str(p.CHAT_TEMPLATE_DIR), p.CHAT_TEMPLATES]))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    processing, video_processing, template_dir, templates = json.loads(result.stdout.splitlines()[-1])
    assert Path(processing).parent == Path(video_processing).parent == target.resolve()
    assert Path(template_dir) == target.resolve() / "tarsier_hf" / "chat_templates"
    shipped = {p.stem: p.read_text(encoding="utf-8") for p in (REPO / "tarsier_hf" / "chat_templates").glob("*.jinja")}
    assert shipped and templates == shipped


def test_wheel_entry_points_name_modules_it_holds(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    scripts = {name: target for name, target in parser["console_scripts"].items()}
    assert scripts == CONSOLE_SCRIPTS
    names = set(wheel.namelist())
    for name, target in scripts.items():
        module = target.split(":")[0]
        assert module.startswith("tarsier_hf."), (name, target)
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, (name, target)


def _help(name: str) -> tuple[str, subprocess.CompletedProcess]:
    return name, subprocess.run([console_script(name), "--help"], cwd=REPO, capture_output=True, text=True,
                                timeout=240)


@pytest.mark.slow
def test_every_console_script_runs_help():
    """Each command of setup.cfg, from the environment's bin/ (pip install -e writes them there)."""
    missing = [name for name in CONSOLE_SCRIPTS if not (Path(sys.executable).parent / name).is_file()]
    assert not missing, f"not installed beside {sys.executable} (run `pip install -e .`): {missing}"
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(_help, CONSOLE_SCRIPTS))
    for name, result in results.items():
        assert result.returncode == 0, f"{name} --help failed:\n{result.stderr[-3000:]}"
        assert result.stdout.startswith("usage: "), (name, result.stdout[:500])


def _source(module: str) -> Path:
    """The repo file of an installed module name (`tarsier_hf.eval.*` lives in eval/)."""
    parts = module.split(".")
    root, parts = (REPO / "eval", parts[2:]) if parts[:2] == ["tarsier_hf", "eval"] else (REPO, parts)
    return root.joinpath(*parts).with_suffix(".py")


def test_every_console_script_also_runs_as_python_m():
    """The README gives `python -m MODULE` beside each command: the module the entry point names must call the
    same `main` under `if __name__ == "__main__":`."""
    for name, target in CONSOLE_SCRIPTS.items():
        module, function = target.split(":")
        tree = ast.parse(_source(module).read_text(encoding="utf-8"))
        guards = [ast.unparse(node) for node in tree.body
                  if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"]
        assert guards and f"{function}(" in guards[-1], f"{name}: {module} has no __main__ guard calling {function}()"
