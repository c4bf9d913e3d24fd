"""Workload: a bounded soak. Steady writers, a Celery worker, a looping relay, one kill each.

Two writer processes deposit into a few wallets at a steady rate for ``--soak-seconds``
(the relay is the only delivery path: no on-commit fast path). A real Celery worker
(prefork) runs the idempotent deposit handler, and ``manage.py relay_outbox`` loops with
LISTEN. At one third of the run the worker's process group is SIGKILLed, at two thirds
the relay's; each is restarted a few seconds later. Every second the benchmark samples
relay lag, consumer lag and the RSS of relay and worker (children included). After the
writers stop it waits for the drain, up to a bound, and checks that every committed
event's handler ran exactly once and that the balances add up.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from django.db import connection

from ..benchapp.models import Wallet
from ..db import OUTBOX, redis_client, truncate
from ..harness import Config, Results, Row, bench_env, load_average
from ..procs import Service, services
from . import soak_probe
from .latency import CELERY
from .relay import relay_available

WALLETS = 8
WRITERS = 2
GO = "uow_bench:soak:go"


def handler_deadline_supported() -> bool:
    from django_uow.conf import DEFAULTS

    return "HANDLER_DEADLINE" in DEFAULTS


class Plan:
    """Sizes and times of one soak run (full or quick)."""

    def __init__(self, cfg: Config) -> None:
        self.seconds = float(cfg.soak_seconds or cfg.scale(180, 18))
        self.rate = float(cfg.soak_rate or 20)
        self.restart_after = float(cfg.scale(5, 2))
        self.deadline = float(cfg.scale(20, 5)) if handler_deadline_supported() else None
        # Room for the deadline, one sweep after it, and the backlog the kills left.
        self.drain_bound = (self.deadline or 0.0) + float(cfg.scale(60, 6))
        self.kill_worker_at = self.seconds / 3
        self.kill_relay_at = 2 * self.seconds / 3
        self.hard_stop = self.seconds + self.drain_bound + 60


def soak_env(plan: Plan) -> dict[str, str]:
    env = bench_env()
    env["UOW_BENCH_PUBLISHERS"] = CELERY
    env["UOW_BENCH_RELAY_ON_COMMIT"] = "off"
    env["UOW_BENCH_NOTIFY"] = "1"
    env.pop("UOW_BENCH_HANDLER_DEADLINE", None)
    if plan.deadline is not None:
        env["UOW_BENCH_HANDLER_DEADLINE"] = str(plan.deadline)
    return env


def worker_cmd() -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
        "--pool", "prefork", "--concurrency", "2", "--loglevel", "warning",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def relay_cmd() -> list[str]:
    return [sys.executable, "-m", "django", "relay_outbox", "--interval", "1"]


def writer_cmd(plan: Plan, wallets: list[int], seed: int) -> list[str]:
    return [
        sys.executable, "-m", "benchmarks.worker", "soakwrite",
        "--seconds", str(plan.seconds), "--rate", str(plan.rate / WRITERS),
        "--wallets", ",".join(map(str, wallets)), "--seed", str(seed), "--go", GO,
    ]  # fmt: skip


def reset() -> list[int]:
    from django_uow.models import ProcessedEvent

    truncate(OUTBOX, ProcessedEvent._meta.db_table, "benchapp_wallet")
    truncate(soak_probe.EFFECT, soak_probe.LEDGER)
    # The broker's queue and the messages a killed worker of an earlier run left unacked.
    redis_client().delete("celery", "unacked", "unacked_index", "unacked_mutex", GO)
    return [Wallet.objects.create(name=f"soak-{i}").pk for i in range(WALLETS)]


def warm_up(wallet_id: int, worker: Service, relay: Service, bound: float = 90) -> None:
    """Commit one deposit and wait until it is handled: worker and relay are up."""
    from django_uow import unit_of_work

    with unit_of_work():
        wallet = Wallet.objects.get(pk=wallet_id)
        wallet.deposit(1)
        wallet.save()
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if soak_probe.handled_count() >= 1:
            return
        for service in (worker, relay):
            if not service.alive():
                raise RuntimeError(f"{service.name} exited at start-up: {service.tail()}")
        time.sleep(0.25)
    raise RuntimeError(
        f"warm-up deposit not handled in {bound:.0f} s; worker: {worker.tail(600)!r}; "
        f"relay: {relay.tail(600)!r}"
    )


def writer_result(writer: Service) -> dict[str, Any] | None:
    for line in reversed(writer.tail(4000).splitlines()):
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:
                return None
    return None


def run_soak(cfg: Config, results: Results) -> None:
    reason = relay_available()
    if reason:
        results.add(Row("soak", "soak.relay_lag", "soak", "s", not_measured=reason))
        return
    plan = Plan(cfg)
    consumer_sql, consumer_how = soak_probe.consumer_lag_sql()
    load_start = load_average()
    wallets = reset()
    env = soak_env(plan)
    worker = Service("worker", worker_cmd(), env)
    relay = Service("relay", relay_cmd(), env)
    writers = [Service(f"writer{i}", writer_cmd(plan, wallets, i), env) for i in range(WRITERS)]
    with services(worker, relay, *writers):
        worker.start()
        relay.start()
        for writer in writers:  # they import Django meanwhile, then wait for GO
            writer.start()
        warm_up(wallets[0], worker, relay)
        redis_client().rpush(GO, *["go"] * WRITERS)
        samples, marks, drained_at = timeline(plan, worker, relay, writers, consumer_sql)
        outcomes = [writer_result(w) for w in writers]
        writers_committed = (
            sum(int(o["committed"]) for o in outcomes if o) + 1
            if all(outcomes)
            else None  # a writer's summary is missing: compare with the outbox only
        )
        check = soak_probe.consistency(writers_committed)
        connection.close()
    load = (load_start, load_average())
    report(results, plan, samples, marks, drained_at, outcomes, check, consumer_how, load)


def timeline(
    plan: Plan,
    worker: Service,
    relay: Service,
    writers: list[Service],
    consumer_sql: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float | None]:
    """Sample once a second; kill and restart on schedule; stop once drained or bounded."""
    samples: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    start = time.monotonic()
    schedule = [
        (plan.kill_worker_at, "kill", worker),
        (plan.kill_relay_at, "kill", relay),
        (plan.kill_worker_at + plan.restart_after, "restart", worker),
        (plan.kill_relay_at + plan.restart_after, "restart", relay),
    ]
    schedule.sort(key=lambda item: item[0])
    drained_at: float | None = None
    writes_end: float | None = None
    for tick in range(int(plan.hard_stop) + 1):
        now = time.monotonic() - start
        while schedule and schedule[0][0] <= now:
            _, action, service = schedule.pop(0)
            service.kill() if action == "kill" else service.start()
            marks.append({"t": round(now, 1), "what": f"{action} {service.name}"})
        row = soak_probe.sample(consumer_sql)
        row["t"] = round(now, 1)
        row["rss_relay_mib"] = relay.rss_mib()
        row["rss_worker_mib"] = worker.rss_mib()
        samples.append(row)
        if writes_end is None and now >= plan.seconds and not any(w.alive() for w in writers):
            writes_end = now
            marks.append({"t": round(now, 1), "what": "writers done"})
        if writes_end is not None and not schedule:
            if row["pending"] == 0 and row["consumer_lag"] == 0 and row["unhandled"] == 0:
                drained_at = now - writes_end
                marks.append({"t": round(now, 1), "what": "drained"})
                break
            if now - writes_end > plan.drain_bound:
                marks.append({"t": round(now, 1), "what": "drain bound reached"})
                break
        for service in (worker, relay):
            if service.starts and not service.alive() and not _down_on_purpose(service, marks):
                marks.append({"t": round(now, 1), "what": f"{service.name} exited by itself"})
                service.start()
        next_tick = start + tick + 1
        time.sleep(max(0.0, next_tick - time.monotonic()))
    return samples, marks, drained_at


def _down_on_purpose(service: Service, marks: list[dict[str, Any]]) -> bool:
    """True between this service's scheduled kill and its restart."""
    for mark in reversed(marks):
        if mark["what"] == f"restart {service.name}":
            return False
        if mark["what"] == f"kill {service.name}":
            return True
    return False


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def report(
    results: Results,
    plan: Plan,
    samples: list[dict[str, Any]],
    marks: list[dict[str, Any]],
    drained_at: float | None,
    outcomes: list[dict[str, Any] | None],
    check: dict[str, Any],
    consumer_how: str,
    load: tuple[float, float],
) -> None:
    def series(key: str) -> list[float]:
        return [float(s[key]) for s in samples if s.get(key) is not None]

    summary = {
        "relay_lag_s": stats(series("relay_lag_s")),
        "consumer_lag": stats(series("consumer_lag")),
        "consumer_age_s": stats(series("consumer_age_s")),
        "unhandled": stats(series("unhandled")),
        "unhandled_age_s": stats(series("unhandled_age_s")),
        "rss_relay_mib": stats(series("rss_relay_mib")),
        "rss_worker_mib": stats(series("rss_worker_mib")),
    }
    committed = [o["committed"] for o in outcomes if o]
    soak = {
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": plan.seconds,
        "rate": plan.rate,
        "wallets": WALLETS,
        "writers": WRITERS,
        "restart_after_s": plan.restart_after,
        "handler_deadline_s": plan.deadline,
        "drain_bound_s": plan.drain_bound,
        "load_average": load,
        "drained_after_s": None if drained_at is None else round(drained_at, 1),
        "consumer_lag_measured_as": consumer_how,
        "writer_results": outcomes,
        "summary": summary,
        "marks": marks,
        "samples": samples,
        "consistency": check,
    }
    results.meta["soak"] = soak
    total = sum(committed)
    rate = total / plan.seconds if plan.seconds else 0.0
    for key, label, unit, name in (
        ("soak.relay_lag", "soak: relay lag (oldest pending event), max", "s", "relay_lag_s"),
        ("soak.consumer_lag", "soak: consumer lag (deliveries not handled), max", "deliveries",
         "consumer_lag"),
        ("soak.consumer_age", "soak: oldest unhandled delivery, max", "s", "consumer_age_s"),
        ("soak.unhandled", "soak: dispatched events without handler effect, max", "events",
         "unhandled"),
        ("soak.rss_relay", "soak: relay_outbox RSS, max", "MiB", "rss_relay_mib"),
        ("soak.rss_worker", "soak: Celery worker RSS (children included), max", "MiB",
         "rss_worker_mib"),
    ):  # fmt: skip
        s = summary[name]
        if s is None:
            results.add(Row("soak", key, label, unit, not_measured="no sample"))
            continue
        results.add(
            Row(
                "soak",
                key,
                label,
                unit,
                s["max"],
                [s["min"], s["median"], s["max"]],
                note=f"min {s['min']}, median {s['median']}",
                higher_is_better=False,
            )
        )
    results.add(
        Row(
            "soak",
            "soak.rate",
            "soak: commits/s of the writers",
            "commits/s",
            rate,
            note=f"{total} deposits in {plan.seconds:.0f} s into {WALLETS} wallets, "
            f"{WRITERS} writer processes",
        )
    )
    last = samples[-1] if samples else {}
    check["owed_at_end"] = last.get("consumer_lag")
    results.target(
        "soak.consistency",
        "Soak with one SIGKILL of the worker and of the relay: every committed event's "
        "idempotent handler ran exactly once, and the balances add up",
        verdict_text(check, drained_at),
        bool(check["passed"]),
        why_missed(check, plan),
        value=check["missing_effects"] + check["handled_twice"],
        unit="events lost or twice",
    )


def verdict_text(check: dict[str, Any], drained_at: float | None) -> str:
    drained = (
        f"drained {drained_at:.0f} s after the writes" if drained_at is not None else "not drained"
    )
    return (
        f"{check['committed_events']} events, {check['missing_effects']} never handled, "
        f"{check['handled_twice']} handled twice, {check['unbalanced_count']} of "
        f"{check['wallets']} wallets off; {drained}"
    )


def why_missed(check: dict[str, Any], plan: Plan) -> str:
    if check["passed"]:
        return ""
    parts = []
    if check["missing_effects"]:
        parts.append(
            f"{check['missing_effects']} events were never handled within {plan.drain_bound:.0f} "
            f"s after the writes"
        )
        if check.get("owed_at_end") == 0 and soak_probe.inbox_status_columns() is not None:
            parts.append(
                "django-uow's inbox listed none of them as owed (published or retrying) at "
                "the end, so no deadline sweep could find them"
            )
        if check["pending_leased"]:
            parts.append(
                f"{check['by_status'].get('pending', 0)} were still pending: "
                f"{check['pending_leased']} leased by the killed relay for "
                f"{check['lease_left_s']:g} s more, the others waiting behind them in "
                "their aggregates"
            )
        if plan.deadline is None:
            parts.append(
                "this django-uow has no HANDLER_DEADLINE: handler tasks the killed worker had "
                "prefetched stay unacknowledged in Redis until the broker's visibility "
                "timeout (1 h by default), and nothing publishes them again"
            )
    if check["handled_twice"]:
        parts.append(f"{check['handled_twice']} events' handler ran more than once")
    if check["unbalanced_count"]:
        parts.append(f"{check['unbalanced_count']} wallets' ledger differs from their balance")
    if not check["writes_match"]:
        parts.append(
            f"the writers reported {check['writers_committed']} commits, the outbox holds "
            f"{check['committed_events']} events"
        )
    if check["orphan_effects"]:
        parts.append(f"{check['orphan_effects']} handler effects without an outbox event")
    return "; ".join(parts)
