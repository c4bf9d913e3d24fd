"""Prometheus metrics (extra ``django-uow[prometheus]``, using ``prometheus_client``).

    # in an AppConfig.ready() of yours, in every process that should expose metrics
    from django_uow import metrics
    metrics.install()

    # urls.py (or prometheus_client.start_http_server(9100) in a relay process)
    path("metrics", metrics.metrics_view)

Two kinds of numbers:

- **Gauges read from the database when scraped** (``OutboxCollector``): pending, failed
  and scheduled counts, the age of the oldest pending event, the lag of due work, and
  the handler deliveries owed, failed and blocked with the consumer lag (a handler's
  dead letter leaves its event dispatched, so only these show it). One statement per
  scrape (``django_uow.health.outbox_health``), the same whatever the relay mode, so any
  process can expose them and they agree across processes.
- **Counters and histograms of what this process did**, fed by django-uow's signals:
  events dispatched, failed for good, retried, handler failures, relay batch duration,
  and commit-to-dispatch time. They count in the process that relays (a
  ``relay_outbox`` command, a Celery worker, or the web process in inline mode): expose
  them from there, or use prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from .. import signals
from ..ops.health import outbox_health
from ..retry import logger_for

logger = logger_for("django_uow.metrics")

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # pragma: no cover - an optional extra
    prometheus_client = None  # type: ignore[assignment]

__all__ = ["OutboxCollector", "install", "metrics_view"]

#: Buckets (seconds) of the batch-duration and commit-to-dispatch histograms.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def _require() -> Any:
    if prometheus_client is None:
        raise ImportError(
            "django_uow.metrics needs prometheus_client: pip install 'django-uow[prometheus]'."
        )
    return prometheus_client


class OutboxCollector:
    """Gauges of the outbox and the handler deliveries on database ``using``, read with one
    statement per scrape."""

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using

    def describe(self) -> list[Any]:
        return []  # no read at registration time: the database may not be ready

    def collect(self) -> Iterator[Any]:
        try:
            numbers = outbox_health(self.using)
        except DatabaseError as exc:
            logger.warning("Outbox metrics unavailable on database %r: %s", self.using, exc)
            return
        labels = ["database"]
        gauges = [
            ("django_uow_outbox_pending", "Outbox events pending (due or not).", numbers.pending),
            (
                "django_uow_outbox_failed",
                "Outbox events failed for good (dead letters).",
                numbers.failed,
            ),
            (
                "django_uow_outbox_discarded",
                "Dead letters discarded by an operator, kept until retention prunes them.",
                numbers.discarded,
            ),
            (
                "django_uow_outbox_scheduled",
                "Pending outbox events not due yet (backing off or scheduled).",
                numbers.scheduled,
            ),
            (
                "django_uow_outbox_oldest_pending_age_seconds",
                "Age of the oldest pending outbox event.",
                numbers.lag_seconds,
            ),
            (
                "django_uow_outbox_lag_seconds",
                "How long the oldest due pending event has been due: how late the relay is.",
                numbers.due_lag_seconds,
            ),
            (
                "django_uow_deliveries_owed",
                "Handler deliveries published or retrying: handed to consumers, not handled.",
                numbers.deliveries_owed,
            ),
            (
                "django_uow_deliveries_failed",
                "Handler deliveries failed for good (dead letters; their events are dispatched).",
                numbers.deliveries_failed,
            ),
            (
                "django_uow_deliveries_blocked",
                "Deliveries of ordered handlers waiting for an earlier event of their aggregate.",
                numbers.deliveries_blocked,
            ),
            (
                "django_uow_consumer_lag_seconds",
                "Age of the oldest handler delivery not handled yet, from its first publish.",
                numbers.consumer_lag_seconds,
            ),
        ]
        for name, documentation, value in gauges:
            family = GaugeMetricFamily(name, documentation, labels=labels)
            family.add_metric([self.using], float(value))
            yield family


class _ProcessMetrics:
    """Counters and histograms fed by signals, registered once per registry."""

    def __init__(self, registry: Any) -> None:
        client = _require()
        by_type = ["event_type"]
        self.dispatched = client.Counter(
            "django_uow_events_dispatched",
            "Events published by the relay in this process.",
            by_type,
            registry=registry,
        )
        self.failed = client.Counter(
            "django_uow_events_failed",
            "Events that failed for good (dead letters) in this process.",
            by_type,
            registry=registry,
        )
        self.retried = client.Counter(
            "django_uow_events_retried",
            "Failed attempts that will be retried, in this process.",
            by_type,
            registry=registry,
        )
        self.handler_failures = client.Counter(
            "django_uow_handler_failures",
            "Handler runs that raised, in this process.",
            ["event_type", "handler"],
            registry=registry,
        )
        self.batch_duration = client.Histogram(
            "django_uow_relay_batch_duration_seconds",
            "Duration of one relay batch: publish and settle.",
            buckets=BUCKETS,
            registry=registry,
        )
        self.commit_to_dispatch = client.Histogram(
            "django_uow_commit_to_dispatch_seconds",
            "From an event's occurred_at to its publication by the relay.",
            buckets=BUCKETS,
            registry=registry,
        )

    def on_dispatched(self, sender: Any, *, envelope: Any, **kwargs: Any) -> None:
        self.dispatched.labels(envelope.event_type).inc()
        age = (timezone.now() - envelope.occurred_at).total_seconds()
        self.commit_to_dispatch.observe(max(0.0, age))

    def on_failed(self, sender: Any, *, envelope: Any, dead: bool, **kwargs: Any) -> None:
        handler = kwargs.get("handler") or getattr(kwargs.get("error"), "handler_name", None)
        if handler:
            self.handler_failures.labels(envelope.event_type, str(handler)).inc()
        (self.failed if dead else self.retried).labels(envelope.event_type).inc()

    def on_batch(self, sender: Any, *, duration: float, **kwargs: Any) -> None:
        self.batch_duration.observe(duration)


#: Per registry id; the registry is kept too, so its id cannot be reused by another one.
_installed: dict[int, tuple[Any, OutboxCollector, _ProcessMetrics]] = {}
_lock = threading.Lock()


def install(registry: Any = None, *, using: str = DEFAULT_DB_ALIAS) -> OutboxCollector:
    """Register the gauges and connect the counters to ``registry`` (default: the global one).

    Idempotent per registry: call it from ``AppConfig.ready()`` of every process that
    should expose django-uow's metrics.
    """
    client = _require()
    registry = registry if registry is not None else client.REGISTRY
    with _lock:
        if id(registry) in _installed:
            return _installed[id(registry)][1]
        collector = OutboxCollector(using)
        registry.register(collector)
        process = _ProcessMetrics(registry)
        uid = f"django_uow_metrics_{id(registry)}"
        signals.event_dispatched.connect(process.on_dispatched, dispatch_uid=f"{uid}_d", weak=False)
        signals.event_failed.connect(process.on_failed, dispatch_uid=f"{uid}_f", weak=False)
        signals.relay_batch_finished.connect(process.on_batch, dispatch_uid=f"{uid}_b", weak=False)
        _installed[id(registry)] = (registry, collector, process)
        return collector


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus text exposition of the global registry (installs django-uow's metrics)."""
    client = _require()
    install()
    return HttpResponse(client.generate_latest(), content_type=client.CONTENT_TYPE_LATEST)
