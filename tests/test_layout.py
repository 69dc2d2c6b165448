"""The code's layout as a checked property: imports run down the layers of ``workloads/`` (the
contracts in ``pyproject.toml``, checked by import-linter's ``lint-imports``), and no module
imports another's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "workloads", tmp_path / "workloads", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_tree_keeps_its_contracts(copy: Path) -> None:
    cp = lint(copy)
    assert cp.returncode == 0, cp.stdout[-3000:]
    assert "Contracts: 3 kept, 0 broken." in cp.stdout


@pytest.mark.parametrize(("module", "planted", "broken"), [
    ("base/numbers.py", "from workloads.campaign import spec", "Layers"),  # a leaf importing the top
    ("describe/plan.py", "from workloads.render import brokers", "Layers"),  # describing importing rendering
    ("hosts/azure/common.py", "from workloads.hosts.lab import netns", "The lab and the Azure VMs"),
    ("hosts/lab/netns.py", "from workloads.hosts.lab import lab", "No circle"),  # lab imports netns: a circle
])
def test_an_import_against_the_layers_is_refused(copy: Path, module: str, planted: str, broken: str) -> None:
    path = copy / "workloads" / module
    path.write_text(path.read_text() + f"\n{planted}  # noqa: E402, F401\n")
    cp = lint(copy)
    assert cp.returncode != 0
    assert broken in cp.stdout.split("Broken contracts", 1)[1], cp.stdout[-3000:]


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for path in sorted([*(ROOT / "workloads").rglob("*.py"), *(ROOT / "infra").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("workloads", "infra"):
                found += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert found == []
