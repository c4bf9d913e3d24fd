"""``manage.py relay_outbox`` and ``prune_outbox``: options, summary, exit status, signals."""

from __future__ import annotations

import datetime
import io
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_uow import UnitOfWork
from django_uow.models import OutboxEvent
from tests.support.relay import make_rows
from tests.testapp.models import Effect, Order

ROOT = Path(__file__).resolve().parents[2]
UOW = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}


def run(*args: str, stdout: Any = None) -> str:
    out = stdout or io.StringIO()
    call_command("relay_outbox", *args, stdout=out)
    return str(out.getvalue())


@pytest.mark.django_db
def test_once_drains_and_prints_a_summary() -> None:
    make_rows([("1", "a"), ("1", "b"), ("2", "c")])
    assert run("--once").strip() == "relayed 3, failed 0, left 0"
    assert Effect.objects.count() == 3


@pytest.mark.django_db
def test_limit_and_batch_size() -> None:
    make_rows([("1", "a"), ("2", "b"), ("3", "c")])
    assert run("--once", "--limit", "2", "--batch-size", "1").strip() == (
        "relayed 2, failed 0, left 1"
    )


@pytest.mark.django_db
def test_failures_are_counted_in_the_summary() -> None:
    make_rows([("1", "x")], event_type="gone.Event")
    assert run("--once").strip() == "relayed 0, failed 1, left 0"


@pytest.mark.django_db
def test_progress_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    make_rows([("1", "a"), ("2", "b")])
    assert "\r" not in run("--once", "--batch-size", "1")
    make_rows([("3", "c"), ("4", "d")])
    shown = run("--once", "--batch-size", "1", stdout=Tty())
    assert "\rrelayed 1, failed 0" in shown and "\rrelayed 2, failed 0" in shown
    assert shown.rstrip().endswith("relayed 2, failed 0, left 0")


@pytest.mark.django_db
def test_prune_option_and_command() -> None:
    rows = make_rows([("1", "a"), ("2", "b")])
    OutboxEvent.objects.filter(id=rows[0].id).update(
        status="dispatched", dispatched_at=timezone.now() - datetime.timedelta(days=30)
    )
    assert run("--once", "--prune").strip() == "relayed 1, failed 0, left 0, pruned 1"
    OutboxEvent.objects.update(dispatched_at=timezone.now() - datetime.timedelta(hours=2))
    out = io.StringIO()
    call_command("prune_outbox", "--older-than", "3600", stdout=out)
    assert out.getvalue().strip() == "pruned 1 event(s), 0 inbox row(s)"
    assert not OutboxEvent.objects.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--interval", "0"], "--interval must be a positive number"),
    ],
)
def test_bad_options_are_command_errors(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("--once", *args)


@pytest.mark.django_db
def test_unreachable_broker_is_a_command_error() -> None:
    make_rows([("1", "a")])
    with (
        override_settings(
            DJANGO_UOW={
                **UOW,
                "PUBLISHERS": ["django_uow.publishers.RedisStreamPublisher"],
                "REDIS_URL": "redis://127.0.0.1:1/0",
            }
        ),
        pytest.raises(CommandError, match="Could not reach the broker"),
    ):
        run("--once")
    assert OutboxEvent.objects.get().attempts == 0


def test_unreachable_database_exits_non_zero() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "UOW_DB": "postgres",
        "UOW_PG_PORT": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "django", "relay_outbox", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Cannot connect to database 'default'" in done.stderr


# ----------------------------------------------------------------------- the loop


def relay_loop(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.relay_subprocess", connection.settings_dict["NAME"], *args],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
    return proc.returncode, out, err


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_loop_relays_and_exits_cleanly_on_sigterm() -> None:
    make_rows([("1", "a"), ("2", "b")])
    proc = relay_loop("--interval", "0.2", "--no-listen")
    try:
        assert wait_until(lambda: OutboxEvent.objects.filter(status="dispatched").count() == 2)
        make_rows([("3", "c")])
        assert wait_until(lambda: OutboxEvent.objects.filter(status="dispatched").count() == 3)
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "relayed 3, failed 0, left 0"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_listen_notify_wakes_the_loop_long_before_its_interval(settings: Any) -> None:
    proc = relay_loop("--interval", "60")
    try:
        listening = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = 'LISTEN django_uow_outbox'"
        )

        def is_listening() -> bool:
            with connection.cursor() as cursor:
                cursor.execute(listening)
                return bool(cursor.fetchone()[0])

        assert wait_until(is_listening), "the relay never started listening"
        settings.DJANGO_UOW = {**UOW, "NOTIFY": True}
        with UnitOfWork():
            order = Order.objects.create(total=Decimal("3"))
            order.place()
            order.save()
        # Without the NOTIFY the loop would sleep for its 60 s interval.
        assert wait_until(lambda: OutboxEvent.objects.filter(status="dispatched").exists())
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert "relayed 1" in out


@pytest.mark.django_db
def test_loop_survives_a_broker_outage_and_carries_on() -> None:
    from django_uow.relay import RelayLoop
    from tests.support.relay import RecordingPublisher

    class FlakyBroker(RecordingPublisher):
        def publish(self, envelopes: Any) -> Any:
            if self.calls == 0:
                self.calls += 1
                raise ConnectionRefusedError(111, "Connection refused")
            return super().publish(envelopes)

    make_rows([("1", "a"), ("2", "b")])
    broker = FlakyBroker()
    loop = RelayLoop(interval=0.01, limit=2, listen=False, publishers=[broker])
    watchdog = threading.Timer(20, loop.stop)  # a broken loop fails the test, never hangs it
    watchdog.start()
    try:
        total = loop.run()
    finally:
        watchdog.cancel()
    assert (total.relayed, broker.calls) == (2, 2)
    assert broker.reasons() == ["a", "b"]


def test_the_relay_docs_name_real_tasks_and_options() -> None:
    import re

    import django_uow.tasks  # noqa: F401 - registers the tasks
    from django_uow.management.commands import (
        outbox_status,
        prune_outbox,
        redeliver,
        relay_outbox,
    )
    from tests.celery_app import app

    text = (ROOT / "docs" / "relay.md").read_text()
    tasks = set(re.findall(r'"task": "([\w.]+)"', text))
    assert tasks == {"django_uow.tasks.relay_outbox", "django_uow.tasks.prune_outbox"}
    assert tasks <= set(app.tasks)
    known = set()
    commands = ((relay_outbox, "relay_outbox"), (prune_outbox, "prune_outbox"))
    for module, name in (*commands, (redeliver, "redeliver"), (outbox_status, "outbox_status")):
        parser = module.Command().create_parser("manage.py", name)
        known |= {opt for action in parser._actions for opt in action.option_strings}
    documented = set(re.findall(r"`(--[a-z-]+)", text))
    assert documented and documented <= known, documented - known


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_a_drain_keeps_its_connection_across_batches() -> None:
    from django_uow.relay import RelayLoop

    make_rows([("1", "a"), ("2", "b"), ("3", "c")])
    connection.close()
    seen: list[int] = []
    loop = RelayLoop(
        once=True,
        batch_size=1,
        listen=False,
        on_batch=lambda batch, summary: seen.append(id(connection.connection)),
    )
    assert loop.run().relayed == 3
    assert len(seen) == 3 and len(set(seen)) == 1  # CONN_MAX_AGE=0: one connect per round
