"""How many times the flaky handler has run for an event, kept outside its transaction.

A handler's own writes roll back with it, so the count lives in a Redis server of the
trial's own that is never restarted (``UOW_CHAOS_COUNTER``, a URL); the broker's Redis
is restarted on purpose and would forget it.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from uuid import UUID

COUNTER_ENV = "UOW_CHAOS_COUNTER"
KEY = "uow:chaos:runs:{}"
#: Counts outlive a trial by this long (seconds) at most.
TTL = 86_400

_client: list[Any] = []
_lock = threading.Lock()


def _redis() -> Any:
    with _lock:
        if not _client:
            url = os.environ.get(COUNTER_ENV)
            if not url:
                raise RuntimeError(
                    f"The chaos trial's flaky handler counts its runs in Redis: set {COUNTER_ENV} "
                    "to the URL of the trial's counter server (tests.chaos.trial does)."
                )
            import redis

            _client.append(redis.Redis.from_url(url, socket_timeout=5))
        return _client[0]


def count_run(event_id: UUID) -> int:
    """Count one more run for ``event_id``; returns the runs so far, this one included."""
    key = KEY.format(event_id)
    pipe = _redis().pipeline()
    pipe.incr(key)
    pipe.expire(key, TTL)
    runs, _ = pipe.execute()
    return int(runs)


def runs_of(client: Any, event_ids: list[UUID]) -> dict[UUID, int]:
    """The runs counted for each of ``event_ids`` (0 when never run), read with ``client``."""
    if not event_ids:
        return {}
    values = client.mget([KEY.format(e) for e in event_ids])
    return {e: int(v or 0) for e, v in zip(event_ids, values, strict=True)}
