"""Measures the peer libraries, in the peer environment, in their own process and database.

``.venv-bench/bin/python -m benchmarks.peer_runner {write,versioned,relay} --n N --reps R``
prints one JSON object on its last line: ``{"rows": [...], "versions": {...}}``; each row
is ``{"key", "label", "unit", "value", "samples", "not_measured", "note"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

PEERS = ["django-celery-outbox", "django-jaiminho", "django-outbox-pattern", "django-concurrency"]


def setup() -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.peer_settings"
    import django
    from django.conf import settings

    from benchmarks.db import ensure_database

    ensure_database(settings.DATABASES["default"]["NAME"])
    django.setup()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0, interactive=False)


def rate(
    run: Callable[[], int], reps: int, before: Callable[[], None] | None = None
) -> list[float]:
    samples = []
    for _ in range(reps):
        if before:
            before()
        start = time.perf_counter()
        count = run()
        samples.append(count / (time.perf_counter() - start))
    return samples


def row(key: str, label: str, unit: str, samples: list[float], note: str = "") -> dict[str, Any]:
    return {
        "key": key,
        "label": label,
        "unit": unit,
        "value": statistics.median(samples),
        "samples": samples,
        "note": note,
        "not_measured": "",
    }


def missing(key: str, label: str, unit: str, reason: str) -> dict[str, Any]:
    return {
        "key": key,
        "label": label,
        "unit": unit,
        "value": None,
        "samples": [],
        "note": "",
        "not_measured": reason,
    }


def guarded(key: str, label: str, unit: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception as error:  # reported as "not measured", never a made-up number
        return missing(key, label, unit, f"{type(error).__name__}: {error}"[:200])


def truncate(*tables: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")


# -- write path -------------------------------------------------------------------------


def bench_write(n: int, reps: int) -> list[dict[str, Any]]:
    from django.db import transaction

    from benchmarks.peerapp.models import PeerOrder, PeerRow

    def celery_outbox() -> dict[str, Any]:
        from benchmarks.peer_celery import app

        truncate("celery_outbox", "peerapp_peerrow")

        def loop() -> int:
            for i in range(n):
                with transaction.atomic():
                    r = PeerRow.objects.create(name="e", value=i)
                    app.send_task("benchmarks.noop", kwargs={"account_id": r.pk, "amount": i})
            return n

        loop()
        return row(
            "peer.write.celery_outbox",
            "(e) django-celery-outbox: send_task() in atomic()",
            "tx/s",
            rate(loop, reps),
        )

    def jaiminho() -> dict[str, Any]:
        from benchmarks.peerapp.outbox import publish_account_credited

        truncate("jaiminho_event", "peerapp_peerrow")

        def loop() -> int:
            for i in range(n):
                with transaction.atomic():
                    r = PeerRow.objects.create(name="e", value=i)
                    publish_account_credited({"account_id": r.pk, "amount": i})
            return n

        loop()
        return row(
            "peer.write.jaiminho",
            "(e) django-jaiminho: @save_to_outbox call in atomic()",
            "tx/s",
            rate(loop, reps),
            note="keep-order strategy",
        )

    def outbox_pattern() -> dict[str, Any]:
        truncate("published", "peerapp_peerorder")

        def loop() -> int:
            for i in range(n):
                with transaction.atomic():
                    PeerOrder(name="e", value=i).save()
            return n

        loop()
        return row(
            "peer.write.outbox_pattern",
            "(e) django-outbox-pattern: @publish model save() in atomic()",
            "tx/s",
            rate(loop, reps),
        )

    return [
        guarded("peer.write.celery_outbox", "(e) django-celery-outbox", "tx/s", celery_outbox),
        guarded("peer.write.jaiminho", "(e) django-jaiminho", "tx/s", jaiminho),
        guarded("peer.write.outbox_pattern", "(e) django-outbox-pattern", "tx/s", outbox_pattern),
    ]


# -- versioned save ---------------------------------------------------------------------


def bench_versioned(n: int, reps: int) -> list[dict[str, Any]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from benchmarks.peerapp.models import ConcurrencyCounter

    def concurrency() -> dict[str, Any]:
        truncate("peerapp_concurrencycounter")
        obj = ConcurrencyCounter.objects.create(name="v")

        def loop() -> int:
            for _ in range(n):
                obj.value += 1
                obj.save()
            return n

        loop()
        samples = rate(loop, reps)
        with CaptureQueriesContext(connection) as ctx:
            obj.value += 1
            obj.save()
        result = row(
            "peer.versioned.concurrency",
            "django-concurrency IntegerVersionField save()",
            "saves/s",
            samples,
        )
        result["queries"] = [q["sql"] for q in ctx.captured_queries]
        result["note"] = f"{len(ctx.captured_queries)} queries per save"
        return result

    return [
        guarded("peer.versioned.concurrency", "django-concurrency save()", "saves/s", concurrency)
    ]


# -- relays -----------------------------------------------------------------------------


def bench_relay(n: int, reps: int) -> list[dict[str, Any]]:
    import redis as redis_lib
    from django.conf import settings
    from django.db import transaction

    client = redis_lib.Redis.from_url(settings.REDIS_URL)

    def celery_outbox() -> dict[str, Any]:
        from django_celery_outbox.models import CeleryOutbox
        from django_celery_outbox.relay import Relay, RelayConfig

        from benchmarks.peer_celery import app

        def seed() -> None:
            truncate("celery_outbox")
            client.delete("celery")
            with transaction.atomic():
                for i in range(n):
                    app.send_task("benchmarks.noop", kwargs={"account_id": i, "amount": 1})

        relay = Relay(app=app, config=RelayConfig.init(batch_size=500, idle_time=0.0))

        def drain() -> int:
            while CeleryOutbox.objects.exists():
                relay._processing()  # one claim-publish-delete cycle, as its loop runs it
            return n

        samples = rate(drain, reps, before=seed)
        client.delete("celery")
        return row(
            "peer.relay.celery_outbox",
            "django-celery-outbox relay (Celery on Redis)",
            "events/s",
            samples,
            note="batch 500, publish_concurrency 1",
        )

    def jaiminho() -> dict[str, Any]:
        from jaiminho.models import Event
        from jaiminho.relayer import EventRelayer

        from benchmarks.peerapp.outbox import publish_account_credited

        def seed() -> None:
            truncate("jaiminho_event")
            client.delete("uow_bench:jaiminho")
            with transaction.atomic():
                for i in range(n):
                    publish_account_credited({"account_id": i, "amount": 1})

        def drain() -> int:
            EventRelayer().relay()
            left = Event.objects.filter(sent_at__isnull=True).count()
            if left:
                raise RuntimeError(f"jaiminho relay left {left} events unsent")
            return n

        samples = rate(drain, reps, before=seed)
        sent = client.xlen("uow_bench:jaiminho")
        client.delete("uow_bench:jaiminho")
        return row(
            "peer.relay.jaiminho",
            "django-jaiminho events_relay (XADD to Redis)",
            "events/s",
            samples,
            note=f"{sent} stream entries",
        )

    rows = [
        guarded(
            "peer.relay.celery_outbox", "django-celery-outbox relay", "events/s", celery_outbox
        ),
        guarded("peer.relay.jaiminho", "django-jaiminho relay", "events/s", jaiminho),
        missing(
            "peer.relay.outbox_pattern",
            "django-outbox-pattern publish relay",
            "events/s",
            "its relay sends only over STOMP, and no STOMP broker listens on this machine",
        ),
    ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["write", "versioned", "relay"])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    setup()
    bench = {"write": bench_write, "versioned": bench_versioned, "relay": bench_relay}[args.what]
    rows = bench(args.n, args.reps)
    versions = {}
    for name in PEERS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    sys.stdout.write("\n" + json.dumps({"rows": rows, "versions": versions}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
