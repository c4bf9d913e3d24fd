"""Every Python block of the quickstart (docs and README) is run or compared to tested code.

Blocks fall in three kinds; a block that fits none fails the test, so a new block
cannot go untested. Include lines (``--8<--``) are refused: on GitHub or in an editor a
reader would see no code.

- file blocks (first line ``# shop/<name>.py`` or ``# tests/<name>.py``): must equal
  ``tests/quickstart/<name>.py`` line for line (the suite imports and runs that app);
- settings blocks: executed, then checked (``manage.py check``, Celery task names);
- usage blocks (``from shop...``): executed against the quickstart app, with ``shop``
  read as ``tests.quickstart``, and their effects asserted.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_uow.models import OutboxEvent
from tests.quickstart.models import Order

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_APP = ROOT / "tests" / "quickstart"
DOCUMENTS = [ROOT / "docs" / "quickstart.md", ROOT / "docs" / "testing.md", ROOT / "README.md"]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$', re.M)
FILE_HEADER = re.compile(r"^# (?:shop|tests)/(\w+\.py)\n")

INLINE = {
    "RELAY_ON_COMMIT": "inline",
    "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
}


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


def kind(block: str) -> str:
    if SNIPPET.search(block):
        return "snippet"
    if FILE_HEADER.match(block):
        return "file"
    if re.search(r"^(INSTALLED_APPS|DJANGO_UOW|CELERY_BEAT_SCHEDULE) = ", block, re.M):
        return "settings"
    if re.search(r"^from shop\.", block, re.M):
        return "usage"
    return "unknown"


ALL_BLOCKS = [
    pytest.param(block, id=f"{path.name}-{number}")
    for path in DOCUMENTS
    for number, block in enumerate(python_blocks(path), 1)
]


def blocks_of(kind_name: str) -> list[Any]:
    return [p for p in ALL_BLOCKS if kind(p.values[0]) == kind_name]


def test_the_documents_have_python_blocks_of_every_kind() -> None:
    kinds = {kind(p.values[0]) for p in ALL_BLOCKS}
    assert {"settings", "usage", "file"} <= kinds


@pytest.mark.parametrize("block", ALL_BLOCKS)
def test_every_block_is_of_a_tested_kind(block: str) -> None:
    assert kind(block) not in {"unknown", "snippet"}, (
        f"This Python block is not exercised by a test:\n{block}"
    )


def test_no_document_hides_its_code_behind_an_include_line() -> None:
    for path in [*DOCUMENTS, *sorted((ROOT / "docs").glob("*.md"))]:
        if path.name == "changelog.md":
            continue  # the changelog page is CHANGELOG.md itself, shown whole
        assert not SNIPPET.search(path.read_text()), f"{path.name} has a --8<-- include line"


@pytest.mark.parametrize("block", blocks_of("file"))
def test_readme_files_are_the_quickstart_app_files(block: str) -> None:
    header = FILE_HEADER.match(block)
    assert header is not None
    source = (QUICKSTART_APP / header.group(1)).read_text()
    assert block[header.end() :].strip() == source.strip(), (
        f"The documented {header.group(1)} differs from tests/quickstart/{header.group(1)}"
    )


@pytest.mark.parametrize("block", blocks_of("settings"))
def test_settings_blocks_are_valid(block: str) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(block, "<settings block>", "exec"), namespace)
    if "INSTALLED_APPS" in namespace:
        assert "django_uow" in namespace["INSTALLED_APPS"]
    if "DJANGO_UOW" in namespace:
        with override_settings(DJANGO_UOW=namespace["DJANGO_UOW"]):
            call_command("check")  # raises SystemCheckError on a wrong key or value
    for entry in namespace.get("CELERY_BEAT_SCHEDULE", {}).values():
        from celery import current_app

        import django_uow.tasks  # noqa: F401 - registers the shared tasks

        assert entry["task"] in current_app.tasks


def test_the_settings_check_does_reject_a_wrong_value() -> None:
    # Proves the check in test_settings_blocks_are_valid can fail.
    with (
        override_settings(DJANGO_UOW={"RELAY_ON_COMMIT": "sometimes"}),
        pytest.raises(SystemCheckError),
    ):
        call_command("check")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("block", blocks_of("usage"))
def test_usage_blocks_place_an_order_and_run_the_handler(block: str, settings: Any) -> None:
    settings.DJANGO_UOW = INLINE
    code = re.sub(r"^from shop\.", "from tests.quickstart.", block, flags=re.M)
    namespace: dict[str, Any] = {}
    exec(compile(code, "<usage block>", "exec"), namespace)

    order = Order.objects.get()
    assert order.status == "placed" and order.total == Decimal("9.50")
    event = OutboxEvent.objects.get()
    assert (event.event_type, event.status) == ("quickstart.OrderPlaced", "dispatched")
    assert event.payload == {"order_id": order.pk, "total": "9.50"}
    assert [m.subject for m in mail.outbox] == [f"Order {order.pk}"]
