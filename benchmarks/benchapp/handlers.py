"""Handlers of the benchmark. The latency probe pushes its delay to a Redis list."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings

from .events import AccountCredited, LatencyProbe

LATENCY_KEY = "uow_bench:latency"
_redis: Any = None

try:
    from django_uow.handlers import event_handler
except ImportError:  # the relay is not there yet
    event_handler = None

if event_handler is not None:

    @event_handler(LatencyProbe, idempotent=False, name="bench.latency")
    def record_latency(event: LatencyProbe) -> None:
        started = time.time()
        global _redis
        if _redis is None:
            import redis

            _redis = redis.Redis.from_url(settings.REDIS_URL)
        _redis.rpush(LATENCY_KEY, f"{started - event.committed_at:.6f}")

    @event_handler(AccountCredited, idempotent=False, name="bench.credited")
    def on_credited(event: AccountCredited) -> None:
        """Does nothing: the relay benchmarks measure enqueueing, not handling."""
