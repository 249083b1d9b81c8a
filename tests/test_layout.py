"""The package's layers: the core imports neither the trainer nor deployment, and deployment
imports neither the trainer nor its data (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "xnortrain"
CORE = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__main__.py")
DEPLOY = sorted((PACKAGE / "deploy").glob("*.py"))
TRAIN = sorted((PACKAGE / "train").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every xnortrain module that `path` imports, at the top or inside a function, as absolute names."""
    package = ".".join(path.relative_to(PACKAGE.parent).parts[:-1])  # the package `path` is in
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
    return {name for name in found if name.startswith("xnortrain")}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_imports_neither_the_trainer_nor_deployment(path):
    assert [m for m in imported_modules(path) if _within(m, "xnortrain.train") or _within(m, "xnortrain.deploy")] == []


@pytest.mark.parametrize("path", DEPLOY, ids=lambda p: p.name)
def test_deployment_imports_neither_the_trainer_nor_its_data(path):
    assert [m for m in imported_modules(path) if _within(m, "xnortrain.train")] == []


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.name)
def test_only_the_trainers_deployment_module_imports_deployment(path):
    uses_deploy = [m for m in imported_modules(path) if _within(m, "xnortrain.deploy")]
    assert uses_deploy == [] or path.name == "deployment.py"


def test_the_scan_sees_relative_imports():
    assert "xnortrain.train.data" in imported_modules(PACKAGE / "train" / "deployment.py")
    assert "xnortrain.serialization" in imported_modules(PACKAGE / "deploy" / "export.py")


def test_importing_the_core_and_deployment_loads_no_trainer_module():
    probe = ("import sys, xnortrain, xnortrain.deploy, xnortrain.deploy.summary, xnortrain.model_factory; "
             "print([m for m in sys.modules if m.startswith('xnortrain.train')])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=PACKAGE.parent)
    assert done.stdout.strip() == "[]"
