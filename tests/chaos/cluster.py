"""The processes a trial runs beside its own process: two relays and a Celery worker.

Relays run ``manage.py relay_outbox`` (``tests.relay_subprocess``) and the worker
``tests.worker_subprocess``; every one of them publishes to, or consumes from, the
trial's own broker, reads the DJANGO_UOW settings of the plan, and names its PostgreSQL
connections (``application_name``) so a fault can terminate them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from django.db import connections

from .children import Child
from .plan import Plan
from .servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
RELAYS = ("relay-a", "relay-b")
WORKER = "worker"
#: The skewed clock runs in this relay.
SKEWED = "relay-b"


def application_name(child: str) -> str:
    return f"uow-chaos-{child}"


class Cluster:
    def __init__(self, plan: Plan, database: str, broker: RedisServer, counter: RedisServer):
        self.plan = plan
        self.database = database
        knobs = plan.knobs
        settings = knobs.django_uow()
        lease = settings.pop("LEASE")
        base = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "UOW_CELERY_BROKER": broker.url,
            "UOW_CHAOS_COUNTER": counter.url,
            "UOW_EXTRA": json.dumps(settings),
            "UOW_LEASE": str(lease),
            "UOW_LOG": "WARNING",
        }
        for knob in ("UOW_CLOCK_SKEW", "UOW_RECORD_ARRIVALS", "UOW_HANDLER_SLEEP"):
            base.pop(knob, None)
        python = sys.executable
        self.children: dict[str, Child] = {}
        for name in RELAYS:
            env = {**base, "UOW_PG_APPLICATION_NAME": application_name(name)}
            if name == SKEWED and plan.clock_skew:
                env["UOW_CLOCK_SKEW"] = str(plan.clock_skew)
            argv = [
                python, "-m", "tests.relay_subprocess", database,
                "--interval", str(knobs.sweep_interval),
            ]  # fmt: skip
            self.children[name] = Child(name, argv, env, str(ROOT))
        env = {
            **base,
            "UOW_PG_APPLICATION_NAME": application_name(WORKER),
            "UOW_RECORD_ARRIVALS": "1",
        }
        argv = [
            python, "-m", "tests.worker_subprocess", database,
            "--pool=prefork", "--concurrency=2", "--prefetch-multiplier=4",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel=WARNING",
        ]  # fmt: skip
        self.children[WORKER] = Child(WORKER, argv, env, str(ROOT))

    def __getitem__(self, name: str) -> Child:
        return self.children[name]

    def start(self) -> None:
        for child in self.children.values():
            child.start()

    def ensure_running(self) -> list[str]:
        """Resume stopped children and restart dead ones; what had to be done."""
        done = []
        for name, child in self.children.items():
            if child.stopped:
                child.resume()
                done.append(f"resumed {name}")
            if not child.alive():
                child.start()
                done.append(f"restarted {name}")
        return done

    def exited_by_themselves(self) -> list[str]:
        """Children that are dead though nobody killed them."""
        return [n for n, c in self.children.items() if c.starts and not c.alive() and not c.killed]

    def close(self, save_logs: Path | None = None) -> None:
        """Stop every child; keep their whole logs in ``save_logs`` when given."""
        for child in self.children.values():
            child.close(keep_log=True)
        if save_logs is not None:
            save_logs.mkdir(parents=True, exist_ok=True)
            for name, child in self.children.items():
                (save_logs / f"{name}.log").write_bytes(child.read_log())
        for child in self.children.values():
            child.log.close()

    def terminate_backends(self, target: str, using: str = "default") -> int:
        """``pg_terminate_backend`` every connection of ``target`` (a child, or "all")."""
        names = list(self.children) if target == "all" else [target]
        with connections[using].cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = ANY(%s)",
                [[application_name(n) for n in names]],
            )
            (count,) = cursor.fetchone()
        return int(count)
