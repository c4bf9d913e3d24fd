"""Prometheus metrics: gauges read from the database at scrape time, counters fed by the
relay's signals, scraped while a relay runs."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from django_uow.contrib import prometheus as metrics
from django_uow.models import OutboxEvent
from django_uow.ops.status import outbox_status
from django_uow.relay import RelayLoop, relay_batch, relay_pending
from tests.support.relay import RecordingPublisher, interleaved, make_rows

prometheus_client = pytest.importorskip("prometheus_client")


def sample(registry: Any, name: str, **labels: str) -> float | None:
    value = registry.get_sample_value(name, labels or {"database": "default"})
    return None if value is None else float(value)


@pytest.mark.server_db  # a reader beside a writer: SQLite's shared test cache locks the table
@pytest.mark.django_db(transaction=True)
def test_scrapes_during_a_relay_and_counts_that_match_outbox_status() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics.install(registry)
    assert metrics.install(registry) is metrics.install(registry)  # idempotent
    make_rows(interleaved(10, 20))
    OutboxEvent.objects.filter(payload__reason="19").update(status="failed")
    assert sample(registry, "django_uow_outbox_pending") == 190

    errors: list[BaseException] = []
    scrapes: list[bytes] = []
    done = threading.Event()

    def scrape() -> None:
        try:
            while not done.is_set():
                scrapes.append(prometheus_client.generate_latest(registry))
        except BaseException as exc:
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        summary = relay_pending(publishers=[RecordingPublisher()], batch_size=20)
    finally:
        done.set()
        scraper.join(timeout=30)
    assert not errors
    assert len(scrapes) >= 2
    assert b"django_uow_outbox_pending" in scrapes[-1]

    status = outbox_status()
    assert sample(registry, "django_uow_outbox_pending") == status["counts"]["pending"]
    assert sample(registry, "django_uow_outbox_failed") == status["counts"]["failed"] == 10
    assert sample(registry, "django_uow_outbox_lag_seconds") == 0.0
    dispatched = sample(
        registry, "django_uow_events_dispatched_total", event_type="orders.cancelled"
    )
    assert dispatched == summary.relayed == 190
    batches = registry.get_sample_value("django_uow_relay_batch_duration_seconds_count")
    assert batches == summary.batches == 10  # an empty claim is no batch
    observed = registry.get_sample_value("django_uow_commit_to_dispatch_seconds_count")
    assert observed == 190


@pytest.mark.django_db
def test_scrapes_between_batches_match_the_table() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics.install(registry)
    make_rows(interleaved(4, 5))
    seen: list[tuple[float | None, int]] = []

    def scrape(batch: Any, drained: Any) -> None:
        prometheus_client.generate_latest(registry)
        pending = OutboxEvent.objects.filter(status="pending").count()
        seen.append((sample(registry, "django_uow_outbox_pending"), pending))

    RelayLoop(publishers=[RecordingPublisher()], batch_size=6, on_batch=scrape).drain(
        count_left=False
    )
    assert [gauge for gauge, _ in seen] == [float(rows) for _, rows in seen] == [14, 8, 2, 0]


@pytest.mark.django_db
def test_failures_and_retries_are_counted_apart() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics.install(registry)
    make_rows([("1", "boom"), ("2", "ok")])
    publisher = RecordingPublisher(fail={"boom": RuntimeError("nope")})
    relay_batch(publishers=[publisher])  # one batch: a jittered retry may be due at once
    retried = registry.get_sample_value(
        "django_uow_events_retried_total", {"event_type": "orders.cancelled"}
    )
    assert retried == 1
    assert registry.get_sample_value(
        "django_uow_events_failed_total", {"event_type": "orders.cancelled"}
    ) in (None, 0.0)


@pytest.mark.django_db
def test_the_metrics_view_serves_the_text_format(client: Any) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"django_uow_outbox_pending" in response.content
