"""Monitoring that sees handler deliveries: the health view, the Prometheus gauges and
``outbox_status`` count owed, failed and blocked deliveries and the consumer lag, and the
alert rules of docs/operations.md fire exactly when they should.

Under ``CeleryPublisher`` an event is ``dispatched`` once the broker has its tasks; a
handler's dead letter or a worker backlog shows only in the inbox. Each scenario here is
built on the real tables (ages written from the database's clock) or by a real worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings

from django_uow import UnitOfWork
from django_uow.contrib import prometheus as metrics
from django_uow.db.clock import later
from django_uow.delivery.rows import record_published
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.ops.health import outbox_health
from django_uow.publishers import CeleryPublisher
from django_uow.relay import relay_batch, relay_pending
from tests.conftest import require_server
from tests.support.relay import make_rows
from tests.testapp import handlers
from tests.testapp.models import Order

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
HANDLER = "testapp.record_cancelled"
INLINE = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}
CELERY = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"]}


@pytest.fixture(autouse=True)
def clean_behaviour() -> Iterator[None]:
    yield
    handlers.BEHAVIOUR.clear()


# ----------------------------------------------------------------------- rows


def delivery(
    status: str, *, published_ago: float | None, first_attempt_ago: float | None = None
) -> ProcessedEvent:
    """One delivery row of a fresh event, its times set from the database's clock."""
    (event,) = make_rows([("7", "x")])
    record_published([(event.to_envelope(), HANDLER)], using="default")
    rows = ProcessedEvent.objects.filter(event_id=event.event_id)
    rows.update(
        status=status,
        published_at=None if published_ago is None else later(-published_ago),
        first_attempt_at=None if first_attempt_ago is None else later(-first_attempt_ago),
    )
    return rows.get()


def outbox_event(status: str, *, due_ago: float = 0.0) -> OutboxEvent:
    (event,) = make_rows([("9", "y")])
    OutboxEvent.objects.filter(pk=event.pk).update(
        status=status, available_at=later(-due_ago), created_at=later(-due_ago)
    )
    return event


def place_order() -> Order:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("5"))
        order.place()
        order.save()
    return order


REGISTRY = prometheus_client.CollectorRegistry()


def gauges() -> dict[str, float]:
    """One scrape of the gauges, from a registry of this module's own."""
    metrics.install(REGISTRY)
    return {
        sample.name: sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.labels == {"database": "default"}
    }


def status_json() -> dict[str, Any]:
    out = StringIO()
    call_command("outbox_status", "--json", stdout=out)
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


# ----------------------------------------------------------------------- alert rules


@dataclass(frozen=True)
class Rule:
    """One alert rule of docs/operations.md: ``[max(]metric[{matchers}][)] op threshold``."""

    alert: str
    metric: str
    matchers: dict[str, str]
    aggregate: bool
    op: str
    threshold: float

    def fires(self, samples: list[tuple[str, dict[str, str], float]]) -> bool:
        """Whether Prometheus would find the expression true on these samples (``for:``
        aside: each scenario holds still for as long as it is scraped)."""
        values = [
            value
            for name, labels, value in samples
            if name == self.metric and all(labels.get(k) == v for k, v in self.matchers.items())
        ]
        if self.aggregate:  # max() of an empty vector is an empty vector: no alert
            values = [max(values)] if values else []
        compare: Callable[[float], bool] = {
            ">": lambda v: v > self.threshold,
            ">=": lambda v: v >= self.threshold,
        }[self.op]
        return any(compare(v) for v in values)


_SELECTOR = r"(?P<metric>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(?P<matchers>[^}]*)\})?"
_EXPR = re.compile(
    rf"^\s*(?:(?P<max>max)\s*\(\s*{_SELECTOR}\s*\)|{_SELECTOR.replace('?P<', '?P<bare_')})"
    r"\s*(?P<op>>=|>)\s*(?P<threshold>[0-9]+(?:\.[0-9]+)?)\s*$"
)
_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"\s*$')


def parse_rule(alert: str, expr: str) -> Rule:
    match = _EXPR.match(expr)
    if match is None:
        raise ValueError(
            f"alert {alert}: {expr!r} is not a form this test evaluates "
            '(metric > N, metric >= N, max(metric) > N, with {label="value"} matchers); '
            "write the rule in one of those forms or teach the test the new one."
        )
    aggregate = match["max"] is not None
    metric = match["metric"] if aggregate else match["bare_metric"]
    raw = (match["matchers"] if aggregate else match["bare_matchers"]) or ""
    matchers = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        pair = _MATCHER.match(part)
        if pair is None:
            raise ValueError(f'alert {alert}: label matcher {part!r} is not label="value"')
        matchers[pair[1]] = pair[2]
    return Rule(alert, metric, matchers, aggregate, match["op"], float(match["threshold"]))


def documented_rules() -> dict[str, Rule]:
    """The rules of the Prometheus rule file shown in docs/operations.md, by alert name."""
    blocks = re.findall(r"```yaml\n(.*?)```", OPERATIONS.read_text(), flags=re.S)
    [rule_file] = [yaml.safe_load(b) for b in blocks if b.lstrip().startswith("groups:")]
    rules = [rule for group in rule_file["groups"] for rule in group["rules"]]
    return {rule["alert"]: parse_rule(rule["alert"], rule["expr"]) for rule in rules}


def rule_on(metric: str) -> Rule:
    [rule] = [r for r in documented_rules().values() if r.metric == metric]
    return rule


def firing(client: Client) -> set[str]:
    """Scrape ``metrics_view`` and evaluate every documented rule on what it served."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    ]
    return {alert for alert, rule in documented_rules().items() if rule.fires(samples)}


def test_the_documented_rules_watch_the_outbox_and_the_deliveries() -> None:
    watched = {rule.metric for rule in documented_rules().values()}
    assert watched == {
        "django_uow_outbox_lag_seconds",
        "django_uow_outbox_failed",
        "django_uow_deliveries_failed",
        "django_uow_consumer_lag_seconds",
    }


def test_the_evaluator_reads_label_matchers_and_both_operators() -> None:
    samples = [("m", {"database": "default"}, 2.0), ("m", {"database": "other"}, 0.0)]
    assert parse_rule("a", 'm{database="other"} > 0').fires(samples) is False
    assert parse_rule("a", 'max(m{database="default"}) >= 2').fires(samples) is True
    assert parse_rule("a", "max(m) > 2").fires(samples) is False
    assert parse_rule("a", "m > 1.5").fires(samples) is True
    assert parse_rule("a", "max(absent) > 0").fires(samples) is False
    with pytest.raises(ValueError, match="rate"):
        parse_rule("a", "rate(m[5m]) > 0")


Scenario = Callable[[], None]


def healthy() -> None:
    outbox_event("dispatched")
    delivery("succeeded", published_ago=3600)  # long handled: no lag
    delivery("published", published_ago=2)  # a worker is about to take it
    delivery("discarded", published_ago=7200)  # given up on by an operator


def handler_dead_letter() -> None:
    outbox_event("dispatched")  # the relay's part went fine ...
    delivery("failed", published_ago=30)  # ... the handler's did not


def consumers_behind() -> None:
    over = rule_on("django_uow_consumer_lag_seconds").threshold + 60
    delivery("published", published_ago=over)


def blocked_behind() -> None:
    over = rule_on("django_uow_consumer_lag_seconds").threshold + 60
    delivery("blocked", published_ago=over)


def inline_retrying_behind() -> None:
    over = rule_on("django_uow_consumer_lag_seconds").threshold + 60
    delivery("retrying", published_ago=None, first_attempt_ago=over)  # inline: never published


def consumers_behind_within_the_threshold() -> None:
    under = rule_on("django_uow_consumer_lag_seconds").threshold / 2
    delivery("published", published_ago=under)
    delivery("blocked", published_ago=under)


def outbox_dead_letter() -> None:
    outbox_event("failed")


def relay_late() -> None:
    outbox_event("pending", due_ago=rule_on("django_uow_outbox_lag_seconds").threshold + 60)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (healthy, set()),
        (handler_dead_letter, {"HandlerDeadLetters"}),
        (consumers_behind, {"ConsumersBehind"}),
        (blocked_behind, {"ConsumersBehind"}),
        (inline_retrying_behind, {"ConsumersBehind"}),
        (consumers_behind_within_the_threshold, set()),
        (outbox_dead_letter, {"OutboxDeadLetters"}),
        (relay_late, {"OutboxRelayLate"}),
    ],
    ids=lambda value: getattr(value, "__name__", None) or ",".join(sorted(value)) or "silent",
)
@pytest.mark.django_db
def test_each_documented_alert_fires_exactly_in_its_scenario(
    client: Client, scenario: Scenario, expected: set[str]
) -> None:
    assert firing(client) == set()  # empty tables: nothing fires
    scenario()
    assert firing(client) == expected


# ----------------------------------------------------------------------- backlog


@pytest.mark.django_db
def test_a_backlog_is_the_consumer_lag_of_health_gauges_and_outbox_status(client: Client) -> None:
    delivery("published", published_ago=40)
    delivery("published", published_ago=5)
    delivery("retrying", published_ago=30)
    delivery("retrying", published_ago=None, first_attempt_ago=60)  # inline: never published
    oldest = delivery("blocked", published_ago=90)  # an ordered handler's, stuck longest
    delivery("blocked", published_ago=10)
    delivery("failed", published_ago=500)  # a dead letter: counted, not waiting
    delivery("succeeded", published_ago=1000)  # handled: neither
    delivery("discarded", published_ago=2000)

    numbers = outbox_health()
    owed_blocked_failed = (
        numbers.deliveries_owed,
        numbers.deliveries_blocked,
        numbers.deliveries_failed,
    )
    assert owed_blocked_failed == (4, 2, 1)
    assert numbers.consumer_lag_seconds == pytest.approx(90, abs=1)
    assert numbers.oldest_unhandled_published_at == oldest.published_at

    with override_settings(DJANGO_UOW={**INLINE, "HEALTH": {"MAX_CONSUMER_LAG": 60}}):
        response = client.get("/health/outbox/")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    [problem] = body["problems"]
    assert re.fullmatch(
        r"consumer lag (\d+\.\d)s is over MAX_CONSUMER_LAG 60s "
        r"\(4 handler deliveries owed, 2 blocked\)",
        problem,
    )
    assert (body["deliveries_owed"], body["deliveries_blocked"], body["deliveries_failed"]) == (
        4,
        2,
        1,
    )
    assert body["consumer_lag_seconds"] == pytest.approx(90, abs=1)
    with override_settings(DJANGO_UOW={**INLINE, "HEALTH": {"MAX_CONSUMER_LAG": 120}}):
        assert client.get("/health/outbox/").status_code == 200

    scraped = gauges()
    assert scraped["django_uow_consumer_lag_seconds"] == pytest.approx(90, abs=1)
    assert scraped["django_uow_deliveries_owed"] == 4
    assert scraped["django_uow_deliveries_blocked"] == 2
    assert scraped["django_uow_deliveries_failed"] == 1

    status = status_json()
    lag = status["consumer_lag"]
    assert (lag["owed"], lag["blocked"], lag["failed"]) == (4, 2, 1)
    assert status["handler_failures"]["count"] == 1
    assert lag["age_seconds"] == pytest.approx(90, abs=1)
    assert lag["oldest_published_at"] == body["oldest_unhandled_published_at"]

    # The blocked one runs at last: the lag is the next oldest, the inline delivery's first
    # attempt (it was never published).
    ProcessedEvent.objects.filter(pk=oldest.pk).update(status="succeeded")
    assert outbox_health().consumer_lag_seconds == pytest.approx(60, abs=1)
    assert status_json()["consumer_lag"]["age_seconds"] == pytest.approx(60, abs=1)
    assert gauges()["django_uow_consumer_lag_seconds"] == pytest.approx(60, abs=1)


@pytest.mark.django_db
def test_max_failed_counts_failed_events_and_failed_handler_deliveries(client: Client) -> None:
    delivery("failed", published_ago=30)
    with override_settings(DJANGO_UOW={**INLINE, "HEALTH": {"MAX_FAILED": 1}}):
        assert client.get("/health/outbox/").status_code == 200  # one dead letter is allowed
        outbox_event("failed")
        response = client.get("/health/outbox/")
    assert response.status_code == 503
    assert response.json()["problems"] == [
        "2 dead letter(s) (1 failed event(s), 1 failed handler delivery(ies)) is over MAX_FAILED 1"
    ]


# ----------------------------------------------------------------------- one statement


@pytest.mark.django_db
def test_health_and_a_scrape_are_still_one_statement_each(
    client: Client, django_assert_num_queries: Any
) -> None:
    healthy()
    handler_dead_letter()
    blocked_behind()
    with django_assert_num_queries(1) as captured:
        response = client.get("/health/outbox/")
    assert response.status_code == 200
    assert response.json()["deliveries_failed"] == 1
    [query] = captured.captured_queries
    assert "django_uow_processedevent" in query["sql"]
    assert "django_uow_outboxevent" in query["sql"]
    with django_assert_num_queries(1):
        assert gauges()["django_uow_deliveries_blocked"] == 1


# ----------------------------------------------------------------------- inline mode


@pytest.mark.django_db
def test_inline_mode_dead_letter_and_retries_show_in_the_gauges(
    settings: Any, client: Client
) -> None:
    settings.DJANGO_UOW = {**INLINE, "HEALTH": {"MAX_FAILED": 1}, "BACKOFF": (30.0, 60.0)}
    dead, retried = place_order(), place_order()
    handlers.BEHAVIOUR[dead.pk] = "permanent"
    handlers.BEHAVIOUR[retried.pk] = "raise"
    relay_batch()
    statuses = dict(ProcessedEvent.objects.values_list("aggregate_id", "status"))
    assert statuses == {str(dead.pk): "failed", str(retried.pk): "retrying"}
    # Inline, nothing is published: the retrying delivery is owed since its first attempt.
    ProcessedEvent.objects.filter(aggregate_id=str(retried.pk)).update(first_attempt_at=later(-45))

    scraped = gauges()
    # Inline, a handler's dead letter fails its event too: both gauges see it.
    assert scraped["django_uow_outbox_failed"] == 1
    assert scraped["django_uow_deliveries_failed"] == 1
    assert scraped["django_uow_deliveries_owed"] == 1
    assert scraped["django_uow_consumer_lag_seconds"] == pytest.approx(45, abs=1)
    response = client.get("/health/outbox/")
    assert response.status_code == 503
    assert response.json()["problems"] == [
        "2 dead letter(s) (1 failed event(s), 1 failed handler delivery(ies)) is over MAX_FAILED 1"
    ]
    assert firing(client) == {"OutboxDeadLetters", "HandlerDeadLetters"}


# ----------------------------------------------------------------------- a real worker


def start_worker(behaviour: str) -> subprocess.Popen[bytes]:
    """A real Celery worker on the test database whose OrderPlaced handler does ``behaviour``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.worker_subprocess",
            connection.settings_dict["NAME"],
            "--pool=threads",
            "--concurrency=2",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
        ],
        env={**os.environ, "UOW_HANDLER_BEHAVIOUR": behaviour},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture
def celery_app() -> Iterator[Any]:
    require_server("Redis", "127.0.0.1", 6379)
    from tests.celery_app import app

    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()  # UOW_REDIS_DB is this run's own database
    yield app
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_handler_dead_letter_under_celery_fails_health_and_the_gauge(
    celery_app: Any, client: Client
) -> None:
    worker = start_worker(behaviour="permanent")
    try:
        with override_settings(DJANGO_UOW={**CELERY, "HEALTH": {"MAX_FAILED": 0}}):
            order = place_order()
            assert relay_pending(publishers=[CeleryPublisher(celery_app)]).relayed == 1
            assert wait_for(
                lambda: ProcessedEvent.objects.filter(status="failed").exists(), timeout=60
            ), "the worker did not record the handler's failure"
            response = client.get("/health/outbox/")
            alerts = firing(client)
    finally:
        stop(worker)
    event = OutboxEvent.objects.get()
    assert event.status == "dispatched"  # the relay's part went fine: the outbox looks healthy
    [dead] = ProcessedEvent.objects.all()
    assert (dead.event_id, dead.handler, dead.status) == (
        event.event_id,
        "testapp.record_placed",
        "failed",
    )
    assert dead.last_error == f"PermanentFailure: order {order.pk} can never be handled"

    assert response.status_code == 503
    body = response.json()
    assert (body["failed"], body["deliveries_failed"]) == (0, 1)
    assert body["problems"] == [
        "1 dead letter(s) (0 failed event(s), 1 failed handler delivery(ies)) is over MAX_FAILED 0"
    ]
    scraped = gauges()
    assert scraped["django_uow_deliveries_failed"] == 1
    assert scraped["django_uow_outbox_failed"] == 0
    assert alerts == {"HandlerDeadLetters"}
    assert status_json()["consumer_lag"]["failed"] == 1
