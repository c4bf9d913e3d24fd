"""Handlers of the benchmark.

The latency probe pushes its delay to a Redis list; the hot-aggregate probe records the
time it ran per commit token; the soak's deposit handler (idempotent) applies each
deposit to a ledger and counts its own runs, so the end check can prove "exactly once";
the consumer-throughput handler writes one row, as the plain Celery task beside it does.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from .events import AccountCredited, ConsumerProbe, LatencyProbe, WalletDeposited, WalletTouched

LATENCY_KEY = "uow_bench:latency"
HOT_HANDLED_KEY = "uow_bench:hot:handled"
HOT_RUNS_KEY = "uow_bench:hot:runs"
_redis: Any = None


def redis_conn() -> Any:
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(settings.REDIS_URL)
    return _redis


try:
    from django_uow.delivery.handlers import event_handler
except ImportError:  # the relay is not there yet
    event_handler = None

if event_handler is not None:

    @event_handler(LatencyProbe, idempotent=False, name="bench.latency")
    def record_latency(event: LatencyProbe) -> None:
        started = time.time()
        redis_conn().rpush(LATENCY_KEY, f"{started - event.committed_at:.6f}")

    @event_handler(AccountCredited, idempotent=False, name="bench.credited")
    def on_credited(event: AccountCredited) -> None:
        """Does nothing: the relay benchmarks measure enqueueing, not handling."""

    @event_handler(ConsumerProbe, name="bench.consumer")
    def on_consumer_probe(event: ConsumerProbe) -> None:
        """Consumer throughput: the same write as the plain task, with the default inbox."""
        from .models import write_effect

        write_effect("uow", event.batch, event.seq)

    @event_handler(WalletTouched, idempotent=False, name="bench.hot")
    def on_touched(event: WalletTouched) -> None:
        """Record when this commit's handler first ran, and how many times it ran."""
        now = time.time()
        pipe = redis_conn().pipeline(transaction=False)
        pipe.hsetnx(HOT_HANDLED_KEY, event.token, f"{now:.6f}")
        pipe.hincrby(HOT_RUNS_KEY, event.token, 1)
        pipe.execute()

    @event_handler(WalletDeposited, name="bench.deposit")
    def on_deposited(event: WalletDeposited, envelope: Any) -> None:
        """Apply the deposit to the ledger; a second run of one event shows as runs = 2."""
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO benchapp_depositapplied (event_id, wallet_id, amount, runs, "
                "applied_at) VALUES (%s, %s, %s, 1, %s) ON CONFLICT (event_id) "
                "DO UPDATE SET runs = benchapp_depositapplied.runs + 1",
                [envelope.event_id, event.wallet_id, event.amount, timezone.now()],
            )
            cursor.execute(
                "INSERT INTO benchapp_walletledger (wallet_id, balance, deposits) "
                "VALUES (%s, %s, 1) ON CONFLICT (wallet_id) DO UPDATE SET "
                "balance = benchapp_walletledger.balance + EXCLUDED.balance, "
                "deposits = benchapp_walletledger.deposits + 1",
                [event.wallet_id, event.amount],
            )
