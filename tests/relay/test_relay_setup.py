"""A fresh process knows every event, and a relay refuses to relay into nothing.

Workers, beat and scripts skip the system checks: what the checks say must also hold
at run time there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import override_settings

from django_uow import UnitOfWork
from django_uow.conf import uow_settings
from django_uow.models import OutboxEvent
from django_uow.relay import relay_events, relay_pending
from tests.support.relay import make_rows
from tests.testapp.models import Effect, Order

ROOT = Path(__file__).resolve().parents[2]
UOW = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}


def untouched() -> list[tuple[str, int, str]]:
    return list(OutboxEvent.objects.values_list("status", "attempts", "claimed_by"))


def child(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def relay_child(*args: str, extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``relay_outbox`` through ``call_command``: no system checks, like a worker."""
    return child(
        "-m",
        "tests.relay_subprocess",
        connection.settings_dict["NAME"],
        *args,
        env={"UOW_EXTRA": json.dumps(extra)},
    )


# ----------------------------------------------------------------------- item: discovery


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_fresh_relay_process_knows_events_only_a_handlers_module_imports() -> None:
    (row,) = make_rows([("4", "x")], event_type="audit.requested")
    OutboxEvent.objects.filter(id=row.id).update(payload={"order_id": 4})
    done = child(
        "-m",
        "django",
        "relay_outbox",
        "--once",
        env={"UOW_DB": "postgres", "UOW_PG_NAME": connection.settings_dict["NAME"]},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "relayed 1, failed 0, left 0"
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == ("dispatched", 1, "")
    assert Effect.objects.filter(handler="audit", event_id=row.event_id).count() == 1


def test_a_bare_setup_script_resolves_an_event_only_a_handlers_module_imports() -> None:
    script = (
        "import sys, django; django.setup(); "
        "assert 'tests.testapp.handler_only_events' in sys.modules; "
        "from django_uow.events import registry; "
        "print(registry.get('audit.requested').__qualname__)"
    )
    done = child("-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "AuditRequested"


def test_only_the_handlers_module_imports_the_handler_only_events() -> None:
    # The two tests above prove discovery only while nothing else imports the module.
    importers = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "tests").rglob("*.py")
        if "handler_only_events" in p.read_text() and p.name != Path(__file__).name
    ]
    assert importers == ["tests/testapp/handlers.py"]


# ----------------------------------------------------------------------- item: no publishers


@pytest.mark.django_db
def test_a_relay_with_no_publishers_refuses_and_touches_no_event() -> None:
    rows = make_rows([("1", "a"), ("2", "b")])
    with override_settings(DJANGO_UOW={**UOW, "PUBLISHERS": []}):
        with pytest.raises(ImproperlyConfigured, match=r"DJANGO_UOW\['PUBLISHERS'\] is empty"):
            relay_pending()
        with pytest.raises(ImproperlyConfigured, match="InlinePublisher"):
            relay_events([r.event_id for r in rows])
    assert untouched() == [("pending", 0, "")] * 2


@pytest.mark.django_db(transaction=True)
def test_the_inline_fast_path_with_no_publishers_leaves_the_event_pending() -> None:
    with override_settings(DJANGO_UOW={**UOW, "RELAY_ON_COMMIT": "inline", "PUBLISHERS": []}):
        with UnitOfWork():
            order = Order.objects.create(total=Decimal("1"))
            order.place()
            order.save()
    assert untouched() == [("pending", 0, "")]
    assert not Effect.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_relay_process_that_skips_checks_refuses_an_empty_publisher_list() -> None:
    make_rows([("1", "a"), ("2", "b")])
    done = relay_child("--once", extra={"PUBLISHERS": []})
    assert done.returncode != 0
    assert "DJANGO_UOW['PUBLISHERS'] is empty" in done.stderr
    assert untouched() == [("pending", 0, "")] * 2


# ----------------------------------------------------------------------- item: misspelled keys


@pytest.mark.django_db
def test_a_misspelled_key_raises_at_first_use_with_a_suggestion() -> None:
    make_rows([("1", "a")])
    with override_settings(DJANGO_UOW={**UOW, "BATCH_SIZ": 10}):
        with pytest.raises(ImproperlyConfigured, match=r"'BATCH_SIZ'; did you mean 'BATCH_SIZE'\?"):
            relay_pending()
        with pytest.raises(ImproperlyConfigured, match="did you mean 'BATCH_SIZE'"):
            uow_settings.LEASE  # noqa: B018 - reading any setting validates the keys
    assert untouched() == [("pending", 0, "")]
    # The override is gone: the settings validate again and the relay runs.
    with override_settings(DJANGO_UOW={**UOW, "BATCH_SIZE": 10}):
        assert relay_pending().relayed == 1


def test_a_misspelled_key_raises_in_a_bare_script() -> None:
    script = (
        "import tests.settings as s; s.DJANGO_UOW = {'MAX_ATTEMPT': 3}; "
        "import django; django.setup(); "
        "from django_uow.conf import uow_settings; uow_settings.MAX_ATTEMPTS"
    )
    done = child("-c", script)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "'MAX_ATTEMPT'; did you mean 'MAX_ATTEMPTS'?" in done.stderr


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_relay_process_that_skips_checks_refuses_a_misspelled_key() -> None:
    make_rows([("1", "a")])
    done = relay_child("--once", extra={"BATCH_SIZ": 10})
    assert done.returncode != 0
    assert "did you mean 'BATCH_SIZE'?" in done.stderr
    assert untouched() == [("pending", 0, "")]
