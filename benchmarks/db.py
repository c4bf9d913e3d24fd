"""Create the benchmark database, migrate it, and empty tables and Redis between runs."""

from __future__ import annotations

from typing import Any

import psycopg
from django.conf import settings


def ensure_database(name: str | None = None) -> None:
    """Create the benchmark database when it is missing (never touches the test DBs)."""
    db = settings.DATABASES["default"]
    name = name or db["NAME"]
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def truncate(*tables: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")


def vacuum(*tables: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {table}")


def redis_client() -> Any:
    """A client whose socket timeout outlasts the benchmark's 60-s BLPOPs.

    redis-py 8 reads with a 5-s socket timeout by default, shorter than a BLPOP that
    waits for subprocesses to start on a loaded machine.
    """
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=90)


OUTBOX = "django_uow_outboxevent"

SEED_SQL = f"""
INSERT INTO {OUTBOX} (event_id, event_type, aggregate_type, aggregate_id,
    aggregate_version, occurred_at, payload, headers, status, attempts, last_error,
    available_at, created_at, dispatched_at, claimed_by, claimed_until)
SELECT gen_random_uuid(), 'benchapp.AccountCredited', 'benchapp.account', mod(g, %(aggs)s)::text,
    g, now(), jsonb_build_object('account_id', mod(g, %(aggs)s), 'amount', 1),
    '{{"schema_version": 1}}'::jsonb, %(status)s, 0, '',
    now() - interval '1 second', now(), %(dispatched_at)s, '', NULL
FROM generate_series(1, %(count)s) AS g
"""


def seed_outbox(
    count: int, *, status: str = "pending", aggregates: int = 1000, dispatched_days_ago: int = 0
) -> None:
    """Insert ``count`` outbox rows in one ``INSERT ... SELECT generate_series`` statement.

    Events are spread over ``aggregates`` aggregates with increasing versions, so the
    per-aggregate ordering rule has real work to do but never blocks a whole batch.
    """
    from django.db import connection

    dispatched_at = None
    if status == "dispatched":
        dispatched_at = f"now() - interval '{dispatched_days_ago} days'"
    sql = SEED_SQL.replace("%(dispatched_at)s", dispatched_at or "NULL")
    with connection.cursor() as cursor:
        cursor.execute(sql, {"count": count, "status": status, "aggs": aggregates})
