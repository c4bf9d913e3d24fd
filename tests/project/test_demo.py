"""The example project's demo runs end to end and its numbers add up.

The demo runs as a subprocess (``manage.py demo --json``) with the example project's
own settings, on a fresh SQLite file, and on PostgreSQL in the PostgreSQL pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import django
import pytest

ROOT = Path(__file__).resolve().parents[2]
THREADS = 3
RUSH_ROUNDS = 2


def run_demo(database_url: str, *extra: str, redis_url: str = "") -> dict[str, Any]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"REDIS_URL", "CELERY_BROKER_URL", "DEMO_SERVICES", "DJANGO_SETTINGS_MODULE"}
    }
    env["DATABASE_URL"] = database_url
    if redis_url:
        env["REDIS_URL"] = redis_url
    command = [sys.executable, "manage.py", "demo", "--json", "--orders", "16"]
    command += ["--threads", str(THREADS), "--rush-rounds", str(RUSH_ROUNDS), *extra]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, f"demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def assert_consistent(report: dict[str, Any]) -> None:
    assert report["problems"] == []
    assert report["errors"] == []
    placed, paid, cancelled = (
        report["orders_placed"],
        report["orders_paid"],
        report["orders_cancelled"],
    )
    assert placed > 0 and paid > 0 and cancelled > 0
    assert report["orders_attempted"] == placed + report["orders_rejected"]
    # Every state change recorded exactly one event, and every event is accounted for.
    assert report["events_written"] == placed + paid + cancelled
    assert report["events_written"] == (
        report["events_relayed"] + report["events_failed"] + report["events_pending"]
    )
    assert report["events_relayed"] == report["events_written"]
    assert report["events_relayed"] == report["relayed_on_commit"] + report["relayed_by_sweep"]
    # Each handler had its effect exactly once per event, redeliveries included.
    assert report["placed_orders_with_one_notification"] == placed
    assert report["notifications"] == {
        "order_placed": placed,
        "order_paid": paid,
        "order_cancelled": cancelled,
    }
    assert (
        report["processed_rows"]
        == report["expected_processed_rows"]
        == 2 * (placed + paid + cancelled)
    )
    assert report["redelivered"] == 5
    assert report["effects_after_redelivery"] == report["effects_before_redelivery"]
    # A restock sent with the ETag of a page loaded before a sale is refused.
    assert (report["stale_restock_status"], report["fresh_restock_status"]) == (412, 200)
    assert report["stock_matches_projection"] is True
    assert report["revenue_matches_payments"] is True
    if report["rush_collides"]:
        # Each rush round: all buyers read the stock before anyone writes, so all but one
        # retry (on SQLite without IMMEDIATE transactions, mostly after "database is locked").
        retried = report["conflicts_retried"] + report["lock_waits_retried"]
        assert retried >= RUSH_ROUNDS * (THREADS - 1)
    else:
        # SQLite with IMMEDIATE transactions: writers queue for the lock, nobody is refused.
        assert report["lock_waits_retried"] == 0
    # Lock waits are counted apart from optimistic-locking conflicts.
    assert not any("locked" in error for error in report["conflicts_by_error"])
    assert report["gave_up"] == 0


# The SQLite runs do not depend on the suite's database: run them once, in the SQLite pass.
sqlite_pass_only = pytest.mark.skipif(
    os.environ.get("UOW_DB", "sqlite") != "sqlite", reason="runs in the SQLite pass"
)


@sqlite_pass_only
def test_demo_on_sqlite(tmp_path: Path) -> None:
    report = run_demo(f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    assert report["database"].startswith("sqlite")
    assert_consistent(report)
    assert report["rush_collides"] is (django.VERSION < (5, 1))


@sqlite_pass_only
def test_demo_resets_the_database_on_each_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.sqlite3'}"
    first = run_demo(url, "--rush-rounds", "1", "--orders", "6")
    second = run_demo(url, "--rush-rounds", "1", "--orders", "6")
    # Without the reset the second run would fail creating the catalog (unique SKUs)
    # and count the first run's orders.
    assert second["events_written"] == (
        second["orders_placed"] + second["orders_paid"] + second["orders_cancelled"]
    )
    assert second["orders_attempted"] == first["orders_attempted"]
    assert second["problems"] == []


def drop_database(db: dict[str, Any], name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.mark.postgres
def test_demo_on_postgres() -> None:
    from django.conf import settings

    db = settings.DATABASES["default"]
    name = f"{db['TEST']['NAME']}_demo"
    try:
        report = run_demo(f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}")
    finally:
        drop_database(db, name)
    assert report["database"].startswith("postgresql")
    assert_consistent(report)
    # On PostgreSQL a stale versioned UPDATE matches no row: the conflict is a ConcurrencyError.
    assert report["conflicts_by_error"].get("ConcurrencyError", 0) >= RUSH_ROUNDS * (THREADS - 1)


@pytest.mark.postgres
def test_demo_with_a_celery_worker_and_beat(redis_server: str) -> None:
    """With a broker the demo starts a real worker and beat, and the numbers still add up."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    name = f"{db['TEST']['NAME']}_demo_celery"
    try:
        report = run_demo(
            f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}", redis_url=redis_server
        )
    finally:
        drop_database(db, name)
    assert report["relay_mode"] == "through celery"
    assert_consistent(report)


def test_the_example_projects_own_tests_pass(tmp_path: Path) -> None:
    """``manage.py test example_project.shop``: views, errors, ETags, the page, the admin."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.postgresql":
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['TEST']['NAME']}_shop"
    else:
        url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CELERY_BROKER_URL"}}
    env.update(DATABASE_URL=url, DEMO_SERVICES="0")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "manage.py", "test", "example_project.shop", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ran = re.search(r"^Ran (\d+) tests?", done.stderr, re.M)
    assert ran is not None and int(ran.group(1)) >= 9, done.stderr[-2000:]
    assert re.search(r"^OK$", done.stderr, re.M), done.stderr[-2000:]
