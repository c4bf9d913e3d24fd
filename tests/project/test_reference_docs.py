"""The Reference pages of the docs say what the code has: no more, no less."""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.core.management import get_commands, load_command_class
from django.core.management.base import BaseCommand
from django.dispatch import Signal

import django_uow
from django_uow import signals
from django_uow.checks import CROSS_CHECKS
from django_uow.conf import DEFAULTS, UowSettings

PACKAGE = Path(django_uow.__file__).resolve().parent
REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference"


def page(name: str) -> str:
    return (REFERENCE / name).read_text()


def first_column(text: str) -> list[str]:
    """The backticked names in the first column of every Markdown table row."""
    return re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE)


def test_every_setting_is_listed_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", page("settings.md"), re.M))
    assert set(rows) == set(DEFAULTS), "docs/reference/settings.md and conf.DEFAULTS differ"
    for key, written in rows.items():
        shown = eval(written, {"timedelta": timedelta, "None": None})  # our own docs
        default = DEFAULTS[key]
        if isinstance(default, tuple | list):
            shown, default = list(shown), list(default)
        assert shown == default, f"{key}: the page says {written}, the code says {default!r}"


def _check_ids_in_code() -> set[str]:
    """Every id a check can emit: each key's declaration, the rules' own, the cross checks."""
    ids = {f"django_uow.E{setting.check_id:03d}" for setting in UowSettings.declared()}
    rules = (PACKAGE / "conf" / "rules.py").read_text()
    ids |= {f"django_uow.E{int(n):03d}" for n in re.findall(r"check_id=(\d+)", rules)}
    return ids | {f"django_uow.{code}" for code in CROSS_CHECKS}


def test_each_check_id_has_one_meaning() -> None:
    declared = [setting.check_id for setting in UowSettings.declared()]
    assert len(declared) == len(set(declared)), "two settings share a check id"
    rules = (PACKAGE / "conf" / "rules.py").read_text()
    own = [int(n) for n in re.findall(r"check_id=(\d+)", rules)]
    cross = [int(code[1:]) for code in CROSS_CHECKS if code.startswith("E")]
    numbers = declared + own + cross
    assert len(numbers) == len(set(numbers)), "an error id is used for two meanings"
    # checks.py emits only the ids it declares in CROSS_CHECKS (the rest: the schema's).
    tree = ast.parse((PACKAGE / "checks.py").read_text())
    emitted: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg == "id" and isinstance(keyword.value, ast.Constant):
                emitted.add(str(keyword.value.value).removeprefix("django_uow."))
        literal = [a.value for a in node.args if isinstance(a, ast.Constant)]
        if getattr(node.func, "id", "") == "_error" and literal and type(literal[-1]) is int:
            emitted.add(f"E{literal[-1]:03d}")
    assert emitted <= set(CROSS_CHECKS), emitted - set(CROSS_CHECKS)


def test_each_setting_has_its_one_line_on_the_reference_page() -> None:
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `[^`]*` \| ([^|]+) \|", page("settings.md"), re.M))
    for setting in UowSettings.declared():
        assert rows.get(setting.name, "").strip() == setting.doc, setting.name


def test_every_check_id_is_listed() -> None:
    code = _check_ids_in_code()
    assert len(code) >= 20  # the parser still finds them
    listed = first_column(page("checks.md"))
    assert set(listed) == code
    # One row, one meaning: two changes picking the same new id show up here.
    assert sorted(listed) == sorted(set(listed)), "an id is listed twice in checks.md"


def test_every_signal_is_listed() -> None:
    code = {name for name, value in vars(signals).items() if isinstance(value, Signal)}
    assert set(first_column(page("signals.md"))) == code


def _own_options(name: str) -> set[str]:
    baseline = {a.dest for a in BaseCommand().create_parser("manage.py", name)._actions}
    command = load_command_class("django_uow", name)
    parser = command.create_parser("manage.py", name)
    return {
        max(action.option_strings, key=len)
        for action in parser._actions
        if action.dest not in baseline and action.option_strings
    }


def test_every_command_and_option_is_listed() -> None:
    text = page("commands.md")
    commands = sorted(n for n, app in get_commands().items() if app == "django_uow")
    assert commands == sorted(re.findall(r"^## `([a-z_]+)`", text, flags=re.MULTILINE))
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    for name in commands:
        (section,) = [s for s in sections if s.startswith(f"`{name}`")]
        assert set(first_column(section)) == _own_options(name), name


def test_every_logger_is_listed() -> None:
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        names |= set(re.findall(r'(?:getLogger|logger_for)\("([^"]+)"\)', path.read_text()))
    assert names, "no logger found: the pattern is out of date"
    assert set(first_column(page("loggers.md"))) == names


STANDARD_URLS = ("_changelist", "_add", "_history", "_delete", "_change", "_autocomplete")


@pytest.mark.django_db
def test_every_admin_url_is_listed() -> None:
    names: set[Any] = set()
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label != "django_uow":
            continue
        for pattern in model_admin.get_urls():
            name = getattr(pattern, "name", None)
            if name and not name.endswith(STANDARD_URLS):
                names.add(f"admin:{name}")
    assert names
    assert set(first_column(page("admin-urls.md"))) == names
