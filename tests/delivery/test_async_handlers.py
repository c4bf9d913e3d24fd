"""``async def`` handlers: run to completion inline and on a real Celery worker, with the
same inbox row, retries and outcomes as sync handlers; their ORM calls are part of their
unit of work, and an ``async with UnitOfWork()`` inside is its savepoint."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_uow import UnitOfWork
from django_uow.delivery.handlers import registry
from django_uow.delivery.running import run_handler
from django_uow.models import OutboxEvent
from django_uow.publishers import CeleryPublisher
from django_uow.relay import relay_pending
from tests.asyncapp import handlers
from tests.asyncapp.events import Greeted
from tests.support.aio import run
from tests.support.delivery import CELERY, delivery, outbox_rows
from tests.support.processes import running, start_worker, wait_for
from tests.testapp.models import Effect, Note

pytestmark = pytest.mark.django_db(transaction=True)

IN_UNIT = "greet in unit=True atomic=True"


@pytest.fixture(autouse=True)
def _fresh_runs() -> Iterator[None]:
    handlers.RUNS.clear()
    yield
    handlers.RUNS.clear()


def greeted(name: str, failures: int = 0) -> OutboxEvent:
    (row,) = outbox_rows("asyncapp.greeted", [{"name": name, "failures": failures}])
    return row


def test_an_async_handler_runs_inline_in_its_unit_with_its_inbox_row() -> None:
    row = greeted("ada")
    assert relay_pending().relayed == 1
    assert list(Effect.objects.values_list("handler", "aggregate_id")) == [(IN_UNIT, "ada")]
    found = delivery(row, "asyncapp.greet")
    assert found is not None and (found.status, found.attempts) == ("succeeded", 1)

    # Delivered again (a redelivery): the inbox row says succeeded, so it is skipped.
    handler = registry.get("asyncapp.greet")
    assert run_handler(handler, row.to_envelope()) is False
    assert Effect.objects.count() == 1 and handlers.RUNS[str(row.event_id)] == 1


def test_a_failing_async_handler_rolls_back_its_effect_and_is_retried() -> None:
    row = greeted("bob", failures=1)
    policy = {"PUBLISHERS": ["django_uow.publishers.InlinePublisher"], "BACKOFF": [0.0, 0.0]}
    with override_settings(DJANGO_UOW=policy):
        result = relay_pending()  # fails once, due again at once, then succeeds
    assert (result.retried, result.dispatched, result.failed) == (1, 1, 0)
    assert handlers.RUNS[str(row.event_id)] == 2
    found = delivery(row, "asyncapp.greet")
    assert found is not None and (found.status, found.attempts) == ("succeeded", 2)
    # The failed run wrote its effect too, in the unit that rolled back.
    assert list(Effect.objects.values_list("handler", flat=True)) == [IN_UNIT]


def test_a_unit_opened_in_an_async_handler_is_a_savepoint_of_its_unit() -> None:
    (row,) = outbox_rows("asyncapp.welcomed", [{"name": "cy"}])
    assert relay_pending().relayed == 2  # and the follow-up it recorded
    assert list(Effect.objects.order_by("id").values_list("handler", flat=True)) == [
        "welcome nested=True",
        "pinged",  # the follow-up, handled in its turn
    ]
    assert list(Note.objects.values_list("text", flat=True)) == ["welcome cy"]
    (follow_up,) = OutboxEvent.objects.filter(event_type="testapp.Pinged")
    assert follow_up.headers["causation_id"] == str(row.event_id)


def test_an_async_units_inline_fast_path_runs_async_handlers_after_its_commit() -> None:
    async def main() -> int:
        async with UnitOfWork() as uow:
            uow.record_event(Greeted(name="dee"))
        return await Effect.objects.acount()

    with override_settings(
        DJANGO_UOW={
            "RELAY_ON_COMMIT": "inline",
            "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
        }
    ):
        assert run(main) == 1  # handled once the `async with` block is left
    assert list(OutboxEvent.objects.values_list("status", flat=True)) == ["dispatched"]
    assert list(Effect.objects.values_list("handler", flat=True)) == [IN_UNIT]


@pytest.mark.celery
@pytest.mark.postgres  # the worker's threads need a real server (in-memory SQLite locks tables)
def test_an_async_handler_runs_on_a_celery_worker_with_retries_and_its_inbox(
    celery_app: Any,
) -> None:
    policy = {**CELERY, "BACKOFF": [0.01, 0.05]}
    ok, flaky = greeted("eve"), greeted("fay", failures=1)
    worker = start_worker(extra=policy)
    with running(worker), override_settings(DJANGO_UOW=policy):
        assert relay_pending(publishers=[CeleryPublisher(celery_app)]).relayed == 2

        def done() -> bool:
            return all(
                getattr(delivery(r, "asyncapp.greet"), "status", "") == "succeeded"
                for r in (ok, flaky)
            )

        assert wait_for(done, timeout=60)
        time.sleep(0.5)  # a second run would show here
    assert sorted(Effect.objects.values_list("aggregate_id", "handler")) == [
        ("eve", IN_UNIT),
        ("fay", IN_UNIT),
    ]
    assert delivery(flaky, "asyncapp.greet").attempts == 2  # type: ignore[union-attr]
    assert delivery(ok, "asyncapp.greet").attempts == 1  # type: ignore[union-attr]
