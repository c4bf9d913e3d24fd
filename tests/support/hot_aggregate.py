"""Many writers on one aggregate: each commit's fast path finds the previous event in flight.

Used in-process on PostgreSQL, and as a child process on a file-based SQLite database:
``python -m tests.support.hot_aggregate <sqlite file> <writers> <events per writer>`` prints a JSON
summary (outbox statuses, the aggregate versions the handler saw in call order, errors).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any


def write_concurrently(order_id: int, writers: int, per_writer: int) -> list[str]:
    """``writers`` threads each commit ``per_writer`` ``OrderBumped`` events; return errors."""
    from django.db import connections

    from django_uow import unit_of_work
    from tests.testapp.events import OrderBumped
    from tests.testapp.models import Order

    @unit_of_work(retries=500, backoff=(0.001, 0.05))
    def bump(seq: int) -> None:
        order = Order.objects.get(pk=order_id)
        order.record_event(OrderBumped(order_id=order_id, seq=seq))
        order.save()

    errors: list[str] = []
    start = threading.Barrier(writers)

    def writer(number: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(per_writer):
                bump(number * per_writer + i)
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    errors += [f"writer {t.name} still running" for t in threads if t.is_alive()]
    return errors


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import tests.settings as settings

    path, writers, per_writer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    settings.DATABASES["default"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        # SQLite runs one writer at a time: writers queue (BEGIN IMMEDIATE, busy timeout)
        # instead of failing to upgrade a read lock; WAL lets readers run beside them.
        "OPTIONS": {
            "timeout": 60,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL",
        },
    }
    settings.DJANGO_UOW = {
        **settings.DJANGO_UOW,
        "RELAY_ON_COMMIT": "inline",
        "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
    }
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django_uow.models import OutboxEvent
    from tests.testapp import handlers
    from tests.testapp.models import Order

    order = Order.objects.create()
    errors = write_concurrently(order.pk, writers, per_writer)
    summary: dict[str, Any] = {
        "errors": errors,
        "statuses": sorted(OutboxEvent.objects.values_list("status", flat=True)),
        "versions": [v for a, v in handlers.BUMPED if a == str(order.pk)],
        "stored_versions": sorted(OutboxEvent.objects.values_list("aggregate_version", flat=True)),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
