"""The fault driver: injects the plan's faults at their offsets, one after the other.

Process faults act on the cluster and the broker; operator faults run ``redeliver`` and
the admin's bulk actions while the worker runs. Each fault is recorded with its start
and end (wall clock, ``time.time()``), so the ledger can tell which deliveries lived
through one, and counted by kind.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass

from django.db import connection

from .cluster import Cluster
from .operators import Operator
from .plan import Fault, Plan
from .servers import RedisServer


@dataclass(frozen=True)
class FaultRecord:
    kind: str
    target: str
    start: float
    end: float
    detail: str = ""
    error: str = ""

    def describe(self, t0: float) -> str:
        what = f"{self.start - t0:7.1f}s +{self.end - self.start:4.1f}s {self.kind}"
        if self.target:
            what += f" {self.target}"
        if self.detail:
            what += f": {self.detail}"
        if self.error:
            what += f" [error: {self.error}]"
        return what


class FaultLog:
    """Every fault (and operator action) of a trial, from any thread."""

    def __init__(self) -> None:
        self.records: list[FaultRecord] = []
        self._lock = threading.Lock()

    def add(self, record: FaultRecord) -> None:
        with self._lock:
            self.records.append(record)

    def counts(self) -> Counter[str]:
        """Faults injected, by kind (the settle phase's operator duty left out)."""
        with self._lock:
            return Counter(r.kind for r in self.records if not r.kind.startswith("settle"))

    def windows(self) -> list[tuple[float, float]]:
        with self._lock:
            return sorted((r.start, r.end) for r in self.records)


class FaultDriver(threading.Thread):
    def __init__(
        self,
        plan: Plan,
        cluster: Cluster,
        broker: RedisServer,
        operator: Operator,
        log: FaultLog,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="chaos-faults", daemon=True)
        self.plan = plan
        self.cluster = cluster
        self.broker = broker
        self.operator = operator
        self.log = log
        self.stop = stop
        self.t0 = time.monotonic()
        self.crashed = ""

    def run(self) -> None:
        self.t0 = time.monotonic()  # fault offsets count from the start of the chaos phase
        try:
            for fault in self.plan.faults:
                wait = self.t0 + fault.at - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return
                if self.stop.is_set():
                    return
                self.inject(fault)
        except Exception:
            self.crashed = traceback.format_exc()
        finally:
            connection.close()

    def inject(self, fault: Fault) -> None:
        start = time.time()
        detail = error = ""
        try:
            detail = self._do(fault)
        except Exception as exc:  # an operator tool that failed (the broker is down...)
            error = f"{type(exc).__name__}: {exc}"[:300]
        self.log.add(FaultRecord(fault.kind, fault.target, start, time.time(), detail, error))

    def _hold(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def _do(self, fault: Fault) -> str:
        kind, op = fault.kind, self.operator
        if kind in ("relay_kill", "worker_kill"):
            child = self.cluster[fault.target]
            child.kill()
            self._hold(fault.hold)
            child.start()
            return "killed, restarted"
        if kind in ("relay_stop", "worker_stop"):
            child = self.cluster[fault.target]
            child.pause()
            self._hold(fault.hold)
            child.resume()
            return "stopped, continued"
        if kind == "redis_restart":
            self.broker.restart(fault.hold)
            return "restarted without persistence"
        if kind == "pg_terminate":
            return f"{self.cluster.terminate_backends(fault.target)} backend(s) terminated"
        if kind == "redeliver_event":
            return op.race(fault.count, lambda rows: op.redeliver([(e, h) for _, e, h in rows]))
        if kind == "redeliver_failed":
            return op.redeliver_failed()
        if kind == "admin_rerun":
            return op.race(fault.count, lambda rows: op.rerun([pk for pk, _, _ in rows]))
        if kind == "admin_rerun_failed":
            return op.rerun(op.failed_deliveries())
        if kind == "admin_retry_now":
            return op.retry_now(op.events_to_retry(fault.count))
        raise ValueError(f"Unknown fault kind {kind!r}: see tests.chaos.plan.KINDS.")
