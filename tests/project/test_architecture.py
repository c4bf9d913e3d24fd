"""docs/architecture.md describes the layers the import contracts enforce: the same
layers in the same order, every module of the package on the page."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "architecture.md").read_text()
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]


def layers_of(container: str) -> list[set[str]]:
    (contract,) = [c for c in CONTRACTS if c["containers"] == [container]]
    return [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]


def test_the_layers_table_is_the_package_contract() -> None:
    rows = re.findall(r"^\| (\d+) \| ((?:`[a-z_]+`(?:, )?)+) \|", PAGE, re.M)
    table = [set(re.findall(r"`([a-z_]+)`", names)) for _, names in rows]
    assert table == layers_of("django_uow")
    assert [int(n) for n, _ in rows] == list(range(1, len(rows) + 1))


def test_every_contract_covers_every_module_and_the_page_names_it() -> None:
    package = ROOT / "django_uow"
    top = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    top |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert set().union(*layers_of("django_uow")) == top
    for contract in CONTRACTS:
        (container,) = contract["containers"]
        if container == "django_uow":
            continue
        folder = ROOT / container.replace(".", "/")
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        assert set().union(*layers_of(container)) == modules, container
        short = container.removeprefix("django_uow.")
        line = next(line for line in PAGE.splitlines() if line.startswith(f"- `{short}`:"))
        block = PAGE[PAGE.index(line) : PAGE.index("\n- ", PAGE.index(line) + 1)]
        assert set(re.findall(r"`([a-z_]+)`", block)) >= modules, container
