"""Ordered handlers through an in-process Celery worker: a blocked delivery is published
again by its predecessor's success. (Its own module: the worker fixture is module-scoped
and must not consume the tasks of the subprocess worker in test_ordered_handlers.)"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from django_uow.delivery.handlers import registry
from django_uow.publishers import CeleryPublisher
from tests.delivery.test_ordered_handlers import HANDLER, delivery, no_jitter, sequenced, write
from tests.publishers.test_publishers import celery_worker, wait_for  # noqa: F401 - the worker fixture

__all__ = ["no_jitter"]  # the autouse fixture, applied here too


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_through_celery_a_blocked_delivery_is_published_again_by_its_predecessor(
    celery_worker: Any,  # noqa: F811
) -> None:
    first, second = write([("1", 1), ("1", 2)])
    publisher = CeleryPublisher(celery_worker)
    handler = registry.get(HANDLER)
    with override_settings(DJANGO_UOW={"RELAY_ON_COMMIT": False, "ORDERED_WAIT": 0.3}):
        publisher.send_deliveries([(second.to_envelope(), handler)])
        assert wait_for(lambda: getattr(delivery(second), "status", "") == "blocked", timeout=30)
        assert sequenced() == []
        publisher.send_deliveries([(first.to_envelope(), handler)])
        assert wait_for(lambda: len(sequenced()) == 2, timeout=30)
    assert sequenced() == [first.event_id, second.event_id]
    row = delivery(second)
    assert row is not None and (row.status, row.attempts, row.last_error) == ("succeeded", 1, "")
