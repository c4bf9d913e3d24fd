"""``manage.py demo``: reset the example database, run the shop scenario, print a report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError, connections

from example_project.shop.demo import DemoConfig, run_scenario

PROJECT_ROOT = Path(settings.BASE_DIR).parent


class Command(BaseCommand):
    help = (
        "Reset the example database, place, pay and cancel orders from several threads, "
        "relay the events and print a consistency report."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--orders", type=int, default=60, help="orders in the traffic phase")
        parser.add_argument("--threads", type=int, default=4, help="concurrent buyers")
        parser.add_argument("--rush-rounds", type=int, default=3, help="simultaneous-buyer rounds")
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument(
            "--keep", action="store_true", help="keep the existing database (no reset)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["threads"] < 2:
            raise CommandError("--threads must be at least 2: the demo is about concurrency.")
        if options["orders"] < 1:
            raise CommandError("--orders must be at least 1.")
        config = DemoConfig(
            orders=options["orders"],
            threads=options["threads"],
            rush_rounds=options["rush_rounds"],
            seed=options["seed"],
            timeout=settings.DEMO_TIMEOUT.total_seconds(),
        )
        quiet = options["json"]
        say = (lambda text: None) if quiet else (lambda text: self.stdout.write(text))
        if not options["keep"]:
            reset_database(say)
        say("Migrating...")
        call_command("migrate", verbosity=0, interactive=False)
        with services(say):
            report = run_scenario(config, progress=say)
        if quiet:
            self.stdout.write(json.dumps(report.as_dict(), indent=2, default=str))
        else:
            self.stdout.write("")
            self.stdout.write(report.render())
        if report.problems():
            raise CommandError(f"The demo found {len(report.problems())} inconsistency(ies).")


def reset_database(say: Any) -> None:
    """Start from an empty database: delete the SQLite file, or flush PostgreSQL."""
    db = settings.DATABASES["default"]
    connections.close_all()
    if db["ENGINE"] == "django.db.backends.sqlite3":
        name = str(db["NAME"])
        if name != ":memory:" and "mode=memory" not in name:
            say(f"Resetting {name}")
            for suffix in ("", "-journal", "-wal", "-shm"):
                with suppress(FileNotFoundError):
                    os.remove(name + suffix)
        return
    ensure_postgres_database(db)
    say(f"Resetting database {db['NAME']!r} on {db.get('HOST') or 'localhost'}")
    call_command("migrate", verbosity=0, interactive=False)
    call_command("flush", verbosity=0, interactive=False)


def ensure_postgres_database(db: dict[str, Any]) -> None:
    """Create the example database if the server does not have it yet."""
    if db["ENGINE"] != "django.db.backends.postgresql":
        return
    try:
        connections["default"].ensure_connection()
        return
    except OperationalError as error:
        if "does not exist" not in str(error):
            raise CommandError(
                f"Cannot connect to PostgreSQL at {db.get('HOST')}:{db.get('PORT')}: {error}. "
                "Start it, or unset DATABASE_URL / DEMO_SERVICES to run on SQLite."
            ) from error
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=db.get("HOST") or None,
        port=db.get("PORT") or None,
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
    connections.close_all()


# --------------------------------------------------------------------- Celery services


@contextmanager
def services(say: Any) -> Iterator[None]:
    """With a broker configured, run a Celery worker and beat for the scenario's duration."""
    if not getattr(settings, "USE_CELERY", False):
        yield
        return
    from example_project.celery import app

    try:
        app.control.purge()  # tasks left by an earlier run point at rows that are gone
    except Exception as error:
        raise CommandError(
            f"Cannot reach the Celery broker {settings.CELERY_BROKER_URL}: {error}. Start it, "
            "or unset REDIS_URL / CELERY_BROKER_URL / DEMO_SERVICES to run without one."
        ) from error
    with tempfile.TemporaryDirectory(prefix="uow-demo-") as tmp:
        celery = [sys.executable, "-m", "celery", "-A", "example_project"]
        name = f"demo-{os.getpid()}@%h"
        worker_log, beat_log = Path(tmp) / "worker.log", Path(tmp) / "beat.log"
        worker = start(
            [*celery, "worker", "-l", "WARNING", "-P", "threads", "-n", name], worker_log
        )
        beat = start([*celery, "beat", "-l", "WARNING", "-s", str(Path(tmp) / "beat")], beat_log)
        try:
            say("Started a Celery worker and beat; waiting for the worker...")
            wait_for_worker(app, worker, worker_log)
            yield
        finally:
            for process in (beat, worker):
                stop(process)


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() ends its children too
        )


def wait_for_worker(
    app: Any, worker: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise CommandError(f"The Celery worker exited:\n{log.read_text()[-2000:]}")
        if app.control.ping(timeout=0.5):
            return
    raise CommandError(f"The Celery worker did not answer within {timeout:.0f} s.")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
