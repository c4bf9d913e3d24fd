"""Every import path the docs and README name works, and so do the earlier flat paths.

The package's tree moved modules into subpackages by role; a path a user's code or
settings name must keep working: the documented ones as they are, the earlier ones with
a ``DeprecationWarning`` that names the new place.
"""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest

from django_uow.moved import MOVED

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOTTED = re.compile(r"\bdjango_uow(?:\.[A-Za-z_][A-Za-z0-9_]*)+")

#: Dotted names in the docs that are not import paths: logger names, permissions, the
#: example project's app label.
NOT_PATHS = re.compile(
    r"^django_uow\.(?:(?:view|change|add|delete)_[a-z]+|shop(?:\..*)?|E\d+|W\d+|I\d+)$"
)


def documented() -> list[str]:
    names: set[str] = set()
    loggers = (ROOT / "docs" / "reference" / "loggers.md").read_text()
    logger_names = set(re.findall(r"`(django_uow(?:\.[a-z_]+)*)`", loggers))
    for document in DOCUMENTS:
        for name in DOTTED.findall(document.read_text()):
            if not NOT_PATHS.match(name) and name not in logger_names:
                names.add(name)
    return sorted(names)


def resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted``, then follow the attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("dotted", documented())
def test_each_documented_path_imports_without_a_warning(dotted: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert resolve(dotted) is not None


def test_the_docs_name_paths_at_all() -> None:
    found = documented()
    assert "django_uow.publishers.CeleryPublisher" in found
    assert "django_uow.relay.redeliver" in found
    assert len(found) > 40


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_earlier_path_still_imports_and_says_where_it_went(old: str, new: str) -> None:
    old_name, new_name = f"django_uow.{old}", f"django_uow.{new}"
    sys.modules.pop(old_name, None)
    with pytest.warns(DeprecationWarning, match=f"{old_name} moved to {new_name}"):
        module = importlib.import_module(old_name)
    assert module is importlib.import_module(new_name)


def test_an_earlier_path_gives_the_names_it_gave() -> None:
    sys.modules.pop("django_uow.deliveries", None)
    with pytest.warns(DeprecationWarning):
        from django_uow.deliveries import consumer_lag  # type: ignore[attr-defined]
    from django_uow.delivery.rows import consumer_lag as now

    assert consumer_lag is now
