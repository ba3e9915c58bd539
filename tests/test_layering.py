"""Imports run one way (docs/design.md, "Layers"): remote code <- library <- evaluation <- the main job and tools.

Read from the source files' syntax trees, so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Each layer with the packages it may not import (everything above it). The remote-code modules travel with
# checkpoints, so they import nothing of this repository but each other.
REMOTE_CODE = sorted(p.stem for p in REPO.glob("*_tarsier*.py"))
LAYERS = {
    "remote code": ([REPO / f"{name}.py" for name in REMOTE_CODE], ("tarsier_hf",)),
    "library": (
        [REPO / "tarsier_hf" / "jsonl.py", REPO / "tarsier_hf" / "__init__.py"]
        + [p for sub in ("dream_s", "hub", "inference", "training") for p in (REPO / "tarsier_hf" / sub).rglob("*.py")],
        ("tarsier_hf.eval", "tarsier_hf.tiny_recipe"),
    ),
    "evaluation": (sorted((REPO / "eval").rglob("*.py")), ("tarsier_hf.tiny_recipe",)),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """`(line, dotted module name)` of every absolute import in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from tarsier_hf import eval` names the package through an attribute
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def upward_imports(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports module` for every import statement of `paths` that reaches a `forbidden` package."""
    found = {}
    for path in paths:
        for line, module in imported_modules(path):
            if any(module == name or module.startswith(name + ".") for name in forbidden):
                where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}"
                found.setdefault(where, f"{where} imports {module}")
    return list(found.values())


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_no_module_imports_a_layer_above_its_own(layer):
    paths, forbidden = LAYERS[layer]
    assert paths, f"no files found for the {layer} layer"
    assert upward_imports(paths, forbidden) == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule is not vacuous: a library-like module that imports evaluation, even inside a function, is found."""
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from tarsier_hf.eval.prompts import get_preset\n    import tarsier_hf.tiny_recipe\n")
    assert len(upward_imports([module], ("tarsier_hf.eval", "tarsier_hf.tiny_recipe"))) == 2
