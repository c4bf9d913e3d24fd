"""What the soak reads from the database: one sample per second, and the final check.

Relay lag is the age of the oldest pending outbox row. Consumer lag is the number (and
the oldest age) of handler deliveries published but not handled: read from the inbox's
status column where django-uow has one, else as dispatched deposit events whose handler
effect row is missing (the deposit handler is the only handler of that event type). The
second reading is also kept beside the first as the ground truth it can be checked against.
"""

from __future__ import annotations

from typing import Any

from django.db import connection

from ..db import OUTBOX

EVENT_TYPE = "benchapp.WalletDeposited"
HANDLER = "bench.deposit"
EFFECT = "benchapp_depositapplied"
LEDGER = "benchapp_walletledger"
WALLET = "benchapp_wallet"


def inbox_table() -> str:
    from django_uow.models import ProcessedEvent

    return str(ProcessedEvent._meta.db_table)


def inbox_status_columns() -> tuple[str, str] | None:
    """(status column, published-at column) of the inbox, when it records deliveries."""
    from django_uow.models import ProcessedEvent

    fields = {f.name: f for f in ProcessedEvent._meta.get_fields() if hasattr(f, "column")}
    if "status" not in fields:
        return None
    for name in ("published_at", "first_attempt_at", "created_at", "processed_at"):
        if name in fields:
            return fields["status"].column, fields[name].column  # type: ignore[union-attr]
    return None


TRUTH_SQL = (
    f"SELECT count(*), extract(epoch FROM now() - min(o.dispatched_at)) FROM {OUTBOX} o "
    f"WHERE o.status = 'dispatched' AND o.event_type = '{EVENT_TYPE}' "
    f"AND NOT EXISTS (SELECT 1 FROM {EFFECT} d WHERE d.event_id = o.event_id)"
)


def consumer_lag_sql() -> tuple[str, str]:
    """The SQL of (count, oldest age in s) of unhandled deliveries, and how it is measured."""
    columns = inbox_status_columns()
    if columns is not None:
        status, since = columns
        return (
            f"SELECT count(*), extract(epoch FROM now() - min({since})) FROM {inbox_table()} "
            f"WHERE handler = '{HANDLER}' AND {status} IN ('published', 'retrying')",
            "inbox rows of the deposit handler with status published or retrying "
            "(what django-uow reports)",
        )
    return (
        TRUTH_SQL,
        "dispatched deposit events whose handler effect row is missing "
        "(this django-uow's inbox records no delivery status)",
    )


def sample(consumer_sql: str) -> dict[str, Any]:
    """One reading of lags and counts, in one statement (one snapshot)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT p.n, p.age, c.n, c.age, t.n, t.age, "
            f"(SELECT count(*) FROM {OUTBOX} WHERE event_type = %s), "
            f"(SELECT count(*) FROM {EFFECT}) "
            f"FROM (SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age "
            f"FROM {OUTBOX} WHERE status = 'pending') p, ({consumer_sql}) AS c (n, age), "
            f"({TRUTH_SQL}) AS t (n, age)",
            [EVENT_TYPE],
        )
        row = cursor.fetchone()
    pending, relay_lag, unhandled, age, truth, truth_age, committed, handled = row
    return {
        "pending": int(pending),
        "relay_lag_s": round(float(relay_lag or 0.0), 2),
        "consumer_lag": int(unhandled),
        "consumer_age_s": round(float(age or 0.0), 2),
        "unhandled": int(truth),
        "unhandled_age_s": round(float(truth_age or 0.0), 2),
        "committed": int(committed),
        "handled": int(handled),
    }


def handled_count() -> int:
    return int(_one(f"SELECT count(*) FROM {EFFECT}")[0])


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _one(sql: str, params: list[Any] | None = None) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchone()


def consistency(writers_committed: int | None) -> dict[str, Any]:
    """Exactly once per committed event, and balances that add up, from the tables."""
    committed = int(_one(f"SELECT count(*) FROM {OUTBOX} WHERE event_type = %s", [EVENT_TYPE])[0])
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT status, count(*) FROM {OUTBOX} WHERE event_type = %s GROUP BY status",
            [EVENT_TYPE],
        )
        by_status = {status: int(n) for status, n in cursor.fetchall()}
    missing = int(
        _one(
            f"SELECT count(*) FROM {OUTBOX} o WHERE o.event_type = %s AND NOT EXISTS "
            f"(SELECT 1 FROM {EFFECT} d WHERE d.event_id = o.event_id)",
            [EVENT_TYPE],
        )[0]
    )
    orphans = int(
        _one(
            f"SELECT count(*) FROM {EFFECT} d WHERE NOT EXISTS "
            f"(SELECT 1 FROM {OUTBOX} o WHERE o.event_id = d.event_id)"
        )[0]
    )
    twice, most_runs = _one(f"SELECT count(*) FILTER (WHERE runs > 1), max(runs) FROM {EFFECT}")
    leased, lease_left = _one(
        f"SELECT count(*), extract(epoch FROM max(claimed_until) - now()) FROM {OUTBOX} "
        "WHERE event_type = %s AND status = 'pending' AND claimed_until > now()",
        [EVENT_TYPE],
    )
    status = inbox_status_columns()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {status[0] if status else quote('succeeded')}, count(*) "
            f"FROM {inbox_table()} WHERE handler = %s GROUP BY 1",
            [HANDLER],
        )
        inbox = {str(s): int(n) for s, n in cursor.fetchall()}
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT w.id, w.balance, coalesce(l.balance, 0), coalesce(s.total, 0) "
            f"FROM {WALLET} w LEFT JOIN {LEDGER} l ON l.wallet_id = w.id "
            f"LEFT JOIN (SELECT (payload->>'wallet_id')::bigint AS wallet, "
            f"sum((payload->>'amount')::bigint) AS total FROM {OUTBOX} "
            f"WHERE event_type = %s GROUP BY 1) s ON s.wallet = w.id ORDER BY w.id",
            [EVENT_TYPE],
        )
        wallets = cursor.fetchall()
    unbalanced = [
        {"wallet": w, "balance": b, "ledger": led, "events": ev}
        for w, b, led, ev in wallets
        if not b == led == ev
    ]
    exactly_once = missing == 0 and not twice and orphans == 0
    # The writers' own count of commits (warm-up included) must match the outbox.
    writes_match = writers_committed is None or writers_committed == committed
    return {
        "committed_events": committed,
        "writers_committed": writers_committed,
        "by_status": by_status,
        "missing_effects": missing,
        "pending_leased": int(leased),
        "lease_left_s": round(float(lease_left or 0.0), 1),
        "handled_twice": int(twice or 0),
        "max_runs": int(most_runs or 0),
        "orphan_effects": orphans,
        "inbox_rows": inbox.get("succeeded", 0),
        "inbox_by_status": inbox,
        "wallets": len(wallets),
        "total_balance": sum(int(b) for _, b, _, _ in wallets),
        "total_ledger": sum(int(led) for _, _, led, _ in wallets),
        "unbalanced": unbalanced[:5],
        "unbalanced_count": len(unbalanced),
        "exactly_once": exactly_once,
        "balances_ok": not unbalanced,
        "writes_match": writes_match,
        "passed": exactly_once and not unbalanced and writes_match,
    }
