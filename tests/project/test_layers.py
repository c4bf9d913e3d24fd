"""The package's imports point one way: the layers contract in pyproject.toml holds, and
it fails when a module imports upward (so `make lint` catches a new cycle)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[dev]')"
)


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "django_uow", tmp_path / "django_uow")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_contract_is_kept() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "upward_import"),
    [
        ("models.py", "from .uow import unit_of_work  # noqa\n"),  # the old models -> UoW arrow
        ("uow/unit_of_work.py", "from ..relay import fastpath  # noqa\n"),  # core -> relay
        ("context.py", "from . import models  # noqa\n"),  # a leaf importing a model
        ("delivery/names.py", "from . import running  # noqa\n"),  # inside a package
    ],
)
def test_an_upward_import_breaks_the_contract(
    tmp_path: Path, module: str, upward_import: str
) -> None:
    tree = copy_package(tmp_path)
    target = tree / "django_uow" / module
    target.write_text(target.read_text() + "\n\ndef _late() -> None:\n    " + upward_import)
    done = lint(tree)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout
