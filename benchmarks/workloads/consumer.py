"""Workload: consumer throughput under Celery, handler effects per second.

A real Celery worker subprocess (prefork, two processes: a small deployment) on the Redis
broker runs, in interleaved rounds, a batch of plain Celery tasks (the baseline: one
``send_task`` per event, the task does one ORM ``create()``) and a batch of django-uow
events (one unit of work records them, ``relay_pending()`` with ``CeleryPublisher``
publishes one handler task per event and handler; the handler does the same
``create()``, behind the default idempotent inbox). Each effect row records when it was
written; a batch's rate is its effects over the time from its first to its last effect,
so neither the enqueueing nor the relay is counted: only the worker's work.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

from django.conf import settings
from django.db import connection
from django.test.utils import override_settings

from django_uow import UnitOfWork

from ..benchapp.events import ConsumerProbe
from ..db import OUTBOX, redis_client, truncate
from ..harness import Config, Results, Row, bench_env, load_average, paired_row, ratio_text
from ..procs import Service, services
from .relay import relay_available

EFFECTS = "benchapp_consumereffect"
INBOX = "django_uow_processedevent"
POOL = os.environ.get("UOW_BENCH_CONSUMER_POOL", "prefork")
CONCURRENCY = 2
PLAIN, UOW, BATCHED = "consumer.plain", "consumer.uow", "consumer.uow.batched"
#: HANDLER_BATCH of the batched row: deliveries of one handler per Celery task.
BATCH = 50


def worker_cmd() -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
        "--pool", POOL, "--concurrency", str(CONCURRENCY), "--loglevel", "warning",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def effects(source: str, batch: str) -> tuple[int, float | None, float | None]:
    """How many effects of ``batch`` were written, and the first and last one's time."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), min(at), max(at) FROM {EFFECTS} WHERE source = %s AND batch = %s",
            [source, batch],
        )
        count, first, last = cursor.fetchone()
    return int(count), first, last


def wait_for(source: str, batch: str, n: int, worker: Service, timeout: float) -> float:
    """Effects per second of one batch, from its first effect to its last."""
    deadline = time.monotonic() + timeout
    while True:
        count, first, last = effects(source, batch)
        if count >= n:
            break
        if not worker.alive():
            raise RuntimeError(f"the Celery worker exited: {worker.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{source}: {count} of {n} effects within {timeout:.0f} s")
        time.sleep(0.05)
    if count > n:
        raise RuntimeError(f"{source}: {count} effects for {n} events (a task ran twice)")
    assert first is not None and last is not None
    return (n - 1) / (last - first) if last > first else float("nan")


def plain_batch(n: int, worker: Service, timeout: float) -> float:
    from ..celery_app import app

    batch = uuid.uuid4().hex
    for seq in range(n):
        app.send_task("benchmarks.plain_effect", args=[batch, seq])
    return wait_for("plain", batch, n, worker, timeout)


def uow_batch(n: int, worker: Service, timeout: float, handler_batch: int = 1) -> float:
    from django_uow.publishers import CeleryPublisher
    from django_uow.relay import relay_pending

    from ..celery_app import app

    batch = uuid.uuid4().hex
    with UnitOfWork() as uow:  # one commit, one outbox INSERT: not what is measured
        for seq in range(n):
            uow.record_event(ConsumerProbe(batch=batch, seq=seq))
    with override_settings(DJANGO_UOW={**settings.DJANGO_UOW, "HANDLER_BATCH": handler_batch}):
        relayed = relay_pending(publishers=[CeleryPublisher(app=app)], batch_size=500).relayed
    if relayed != n:
        raise RuntimeError(f"the relay published {relayed} of {n} events")
    return wait_for("uow", batch, n, worker, timeout)


def run_consumer(cfg: Config, results: Results) -> None:
    n = cfg.scale(400, 40)
    reps = min(cfg.reps, 3)
    reason = relay_available()
    if reason:
        results.add(
            Row("consumer", UOW, "django-uow handler tasks", "events/s", not_measured=reason)
        )
        return
    truncate(EFFECTS, OUTBOX, INBOX)
    redis = redis_client()
    redis.delete("celery")
    timeout = 60 + n * 0.5
    load = [load_average()]
    samples: dict[str, list[float]] = {PLAIN: [], UOW: [], BATCHED: []}
    with services(Service("worker", worker_cmd(), bench_env())) as (worker,):
        worker.start()
        # Warm-up: the worker is up, its processes connected, both task kinds imported.
        plain_batch(2 * CONCURRENCY, worker, 120)
        uow_batch(2 * CONCURRENCY, worker, 120)
        # Interleaved: each round runs a plain batch, then a django-uow batch.
        for _ in range(reps):
            samples[PLAIN].append(plain_batch(n, worker, timeout))
            samples[UOW].append(uow_batch(n, worker, timeout))
            samples[BATCHED].append(uow_batch(n, worker, timeout, BATCH))
    load.append(load_average())
    redis.delete("celery")
    results.meta["consumer"] = {"n": n, "pool": f"{POOL} ×{CONCURRENCY}", "load_average": load}
    where = f"{n} events per round, Celery worker ({POOL} ×{CONCURRENCY}) on Redis"
    results.add(
        paired_row(
            "consumer",
            PLAIN,
            "plain Celery task per event: one ORM create()",
            "events/s",
            samples,
            PLAIN,
            note=where,
        )
    )
    results.add(
        paired_row(
            "consumer",
            UOW,
            "django-uow handler task per event: the same create(), idempotent inbox",
            "events/s",
            samples,
            PLAIN,
            note="relayed with CeleryPublisher before the clock starts; one handler per event",
        )
    )
    results.add(
        paired_row(
            "consumer",
            BATCHED,
            f"django-uow, HANDLER_BATCH = {BATCH}: the same handler, {BATCH} deliveries per task",
            "events/s",
            samples,
            PLAIN,
            note="each delivery its own unit of work and inbox row, as above",
        )
    )
    batched = results.ratio(BATCHED)
    results.target(
        "consumer.batched",
        f"Handler tasks with HANDLER_BATCH = {BATCH} ≥ 0.8 × a plain Celery task doing the "
        "same write",
        ratio_text(results.rows[BATCHED]),
        batched is not None and batched >= 0.8,
        "Batched deliveries still pay one unit of work and inbox upsert each.",
        value=batched,
        inputs=[BATCHED, PLAIN],
    )
    ratio = results.ratio(UOW)
    results.target(
        "consumer.throughput",
        "Handler tasks ≥ 0.8 × a plain Celery task doing the same write (events/s, worker "
        f"{POOL} ×{CONCURRENCY})",
        ratio_text(results.rows[UOW]),
        ratio is not None and ratio >= 0.8,
        "A handler task sends BEGIN, the inbox row's INSERT … ON CONFLICT (it marks the "
        "delivery succeeded, in the handler's transaction), the effect's INSERT and COMMIT: "
        "four round trips where the plain task's autocommit INSERT is one, plus the envelope "
        "and the typed event rebuilt from the message (median "
        f"{statistics.median(samples[UOW]):.0f} vs {statistics.median(samples[PLAIN]):.0f} "
        "events/s). Celery's Django fix-up also closes the database connection after every "
        "task, so each task opens a new PostgreSQL connection whose first touch of the inbox "
        "table (six indexes) loads their catalog entries again. HANDLER_BATCH (row below) "
        f"pays that once per {BATCH} deliveries: {batched or float('nan'):.2f}× here.",
        value=ratio,
        inputs=[UOW, PLAIN],
    )
