"""Workload 3, the baselines: a hand-written batch relay and a plain ``send_task`` loop."""

from __future__ import annotations

import json
from typing import Any

from django.db import connection, transaction

from ..db import OUTBOX, redis_client

CLAIM_SQL = f"""
SELECT id, event_id, event_type, aggregate_type, aggregate_id, aggregate_version,
       occurred_at, payload, headers
FROM {OUTBOX}
WHERE status = 'pending' AND available_at <= now()
ORDER BY available_at, id
LIMIT %s
FOR UPDATE SKIP LOCKED
"""
MARK_SQL = f"UPDATE {OUTBOX} SET status = 'dispatched', dispatched_at = now() WHERE id = ANY(%s)"
HAND_STREAM = "uow_bench:hand:{}"


def hand_relay_batch(redis: Any, batch_size: int = 500) -> int:
    """Claim one batch with SKIP LOCKED, XADD it in one pipeline, mark it with one UPDATE."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIM_SQL, [batch_size])
        rows = cursor.fetchall()
        if not rows:
            return 0
        pipe = redis.pipeline(transaction=False)
        for row in rows:
            message = {
                "event_id": str(row[1]),
                "event_type": row[2],
                "aggregate_type": row[3],
                "aggregate_id": row[4],
                "aggregate_version": row[5],
                "occurred_at": row[6].isoformat(),
                "payload": row[7] if isinstance(row[7], dict) else json.loads(row[7]),
                "headers": row[8] if isinstance(row[8], dict) else json.loads(row[8]),
            }
            pipe.xadd(HAND_STREAM.format(row[3]), {"message": json.dumps(message)})
        pipe.execute()
        cursor.execute(MARK_SQL, [[row[0] for row in rows]])
        return len(rows)


def hand_relay_drain(batch_size: int = 500) -> int:
    redis = redis_client()
    total = 0
    while True:
        done = hand_relay_batch(redis, batch_size)
        if not done:
            return total
        total += done


def send_task_loop(count: int) -> int:
    """What a relay publishing one Celery message at a time costs: ``send_task`` per event."""
    from ..celery_app import app

    for i in range(count):
        app.send_task("benchmarks.noop", args=[i], kwargs={"payload": {"account_id": i}})
    return count
