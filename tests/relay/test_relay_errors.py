"""Errors are classified by who raised them, and storing a failure never fails.

Only a publisher's own transport errors (the broker is unreachable) pause the relay
without spending an attempt. Whatever handler code raises is a handler failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from django_uow import HandlerFailed, UnitOfWork
from django_uow.db.clock import DatabaseNow
from django_uow.models import OutboxEvent
from django_uow.publishers import InlinePublisher
from django_uow.relay import claims, relay_batch, relay_pending
from django_uow.retry import describe, is_connection_error
from django_uow.signals import event_failed
from tests.relay_subprocess import UNSTORABLE
from tests.testapp import handlers
from tests.testapp.models import Effect, Order

ROOT = Path(__file__).resolve().parents[2]
P, D, F = "pending", "dispatched", "failed"


class DependencyDown(ConnectionError):
    """What a handler's own HTTP client raises when its API is down."""


@pytest.fixture(autouse=True, params=["one-statement", "portable"])
def claim_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "portable":
        monkeypatch.setattr(claims, "PORTABLE_ONLY", True)
    return str(request.param)


@pytest.fixture(autouse=True)
def _reset_handlers() -> Iterator[None]:
    handlers.BEHAVIOUR.clear()
    yield
    handlers.BEHAVIOUR.clear()


def place_order() -> Order:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("2"))
        order.place()
        order.save()
    return order


def make_due() -> None:

    OutboxEvent.objects.filter(status=P).update(available_at=DatabaseNow())  # the relay reads the database clock


@pytest.mark.django_db
def test_a_handler_raising_a_connection_error_is_a_handler_failure(settings: Any) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "MAX_ATTEMPTS": 3, "BACKOFF": (0.0, 0.0)}
    sick, healthy = place_order(), place_order()
    handlers.BEHAVIOUR[sick.pk] = DependencyDown("payments API refused the connection")
    errors: list[BaseException] = []
    event_failed.connect(
        lambda sender, error, **kw: errors.append(error), weak=False, dispatch_uid="t-cls"
    )
    try:
        first = relay_batch()  # no RelayError: the broker is fine
        assert (first.dispatched, first.retried, first.handed_back) == (1, 1, 0)
        row = OutboxEvent.objects.get(aggregate_id=str(sick.pk))
        assert (row.status, row.attempts) == (P, 1)
        assert row.last_error == (
            "DependencyDown: payments API refused the connection (in handler testapp.record_placed)"
        )
        for _ in range(2):
            make_due()
            relay_batch()
    finally:
        event_failed.disconnect(dispatch_uid="t-cls")
    row.refresh_from_db()
    assert (row.status, row.attempts) == (F, 3)  # a dead letter after MAX_ATTEMPTS
    assert "payments API refused" in row.last_error
    assert OutboxEvent.objects.get(aggregate_id=str(healthy.pk)).status == D
    # Receivers see what the handler raised.
    assert [type(e) for e in errors] == [DependencyDown] * 3
    # Other aggregates keep flowing behind the dead letter.
    later = place_order()
    assert relay_pending().relayed == 1
    assert Effect.objects.filter(aggregate_id=str(later.pk)).exists()


@pytest.mark.django_db
def test_inline_publisher_wraps_handler_errors() -> None:
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = TimeoutError("slow dependency")
    envelope = OutboxEvent.objects.get().to_envelope()
    (error,) = (InlinePublisher().publish([envelope]) or {}).values()
    assert isinstance(error, HandlerFailed) and not is_connection_error(error)
    assert error.handler == "testapp.record_placed"
    assert isinstance(error.__cause__, TimeoutError)
    assert describe(error) == "TimeoutError: slow dependency (in handler testapp.record_placed)"


@pytest.mark.django_db
def test_a_publisher_transport_error_still_pauses_without_spending() -> None:
    from django_uow import RelayError
    from tests.support.relay import RaisingPublisher

    place_order()
    with pytest.raises(RelayError, match="Could not reach the broker"):
        relay_batch(publishers=[RaisingPublisher(ConnectionRefusedError(111, "refused"))])
    assert OutboxEvent.objects.get().attempts == 0


@pytest.mark.django_db
def test_unstorable_handler_error_text_is_stored_readable() -> None:
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = ValueError(UNSTORABLE)
    assert relay_batch().retried == 1
    row = OutboxEvent.objects.get()
    assert row.last_error == (
        "ValueError: upstream said \ufffd then \ufffd and stopped (in handler testapp.record_placed)"
    )


@pytest.mark.django_db
def test_an_exception_whose_str_fails_is_still_stored() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    order = place_order()
    handlers.BEHAVIOUR[order.pk] = Broken()
    assert relay_batch().retried == 1
    row = OutboxEvent.objects.get()
    # "Broken: <unprintable Broken>"; with tracing on, the span's own str() of the error
    # fails first and the RuntimeError is what the handler raised.
    assert (row.status, row.attempts) == (P, 1)
    assert row.last_error.endswith("(in handler testapp.record_placed)")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_relay_process_survives_unstorable_error_text(claim_mode: str) -> None:
    if claim_mode == "portable":
        pytest.skip("the child process uses the claim of its database")
    place_order()
    place_order()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.relay_subprocess",
            connection.settings_dict["NAME"],
            "--once",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "UOW_HANDLER_ERROR": "unstorable",
            "PYTHONIOENCODING": "utf-8",
            # No retry may become due within the drain: one attempt each, whatever the jitter.
            "UOW_EXTRA": json.dumps({"BACKOFF": [60.0, 60.0]}),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "UnicodeEncodeError" not in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "relayed 0, failed 0, left 2"
    assert list(OutboxEvent.objects.values_list("status", "attempts")) == [(P, 1), (P, 1)]
    assert all(
        "\ufffd then \ufffd" in e for e in OutboxEvent.objects.values_list("last_error", flat=True)
    )
