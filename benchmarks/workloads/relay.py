"""Workload 3: draining pending events to Redis, and concurrent relays."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection
from django.test.utils import override_settings

from ..db import OUTBOX, redis_client, seed_outbox, truncate, vacuum
from ..harness import Config, Results, Row, bench_env, interleaved, paired_row
from .relay_hand import HAND_STREAM, hand_relay_drain, send_task_loop

UOW_STREAM = "django_uow:benchapp.account"
AGGREGATE_SHARE = 2  # events per aggregate in the seeded backlog


def relay_available() -> str:
    """Empty when django-uow's relay can be imported, else why not."""
    try:
        from django_uow import publishers, relay  # noqa: F401
    except ImportError as error:
        return f"django_uow.relay is not importable yet ({error})"
    return ""


def reset_backlog(n: int) -> None:
    truncate(OUTBOX)
    seed_outbox(n, aggregates=max(1, n // AGGREGATE_SHARE))
    vacuum(OUTBOX)
    redis = redis_client()
    redis.delete(UOW_STREAM, HAND_STREAM.format("benchapp.account"), "celery")


def pending() -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {OUTBOX} WHERE status = 'pending'")
        return int(cursor.fetchone()[0])


def drained(n: int, relayed: int) -> int:
    left = pending()
    if left:
        raise RuntimeError(f"{left} of {n} events still pending after the drain")
    return n if relayed is None else relayed


def run_relay(cfg: Config, results: Results) -> None:
    n = cfg.scale(20_000, 1_000)
    # One Celery message per event: a smaller backlog gives the same per-event rate.
    n_celery = count = cfg.scale(5_000, 500)
    reps = min(cfg.reps, 3)  # drains are long: three repetitions
    results.meta["relay_n"] = n
    redis = redis_client()
    runs: dict[str, Callable[[], int]] = {
        "relay.hand": lambda: drained(n, hand_relay_drain()),
        "relay.send_task": lambda: send_task_loop(count),
    }
    sizes = {
        "relay.hand": n,
        "relay.uow.redis": n,
        "relay.uow.redis.none": n,
        "relay.uow.celery": n_celery,
    }
    reason = relay_available()
    if not reason:
        from django_uow.publishers import CeleryPublisher, RedisStreamPublisher
        from django_uow.relay import relay_pending

        from ..celery_app import app

        def uow_drain(publisher: Any, count: int) -> int:
            summary = relay_pending(publishers=[publisher], batch_size=500)
            return drained(count, summary.relayed)

        def unordered_drain() -> int:
            # What the per-aggregate ordering check costs: the same drain without it.
            with override_settings(DJANGO_UOW={**settings.DJANGO_UOW, "ORDERING": "none"}):
                return uow_drain(RedisStreamPublisher(), n)

        runs["relay.uow.redis"] = lambda: uow_drain(RedisStreamPublisher(), n)
        runs["relay.uow.redis.none"] = unordered_drain
        runs["relay.uow.celery"] = lambda: uow_drain(CeleryPublisher(app=app), n_celery)

    counted: dict[str, int] = {}
    last: list[str] = []

    def setup(key: str | None) -> None:
        """Count what the previous run left (stream entries, Celery messages), then reset."""
        if last == ["relay.uow.redis"]:
            counted["relay.uow.redis"] = int(redis.xlen(UOW_STREAM))
        elif last == ["relay.uow.celery"]:
            counted["relay.uow.celery"] = int(redis.llen("celery"))
        last[:] = [key] if key else []
        redis.delete("celery")
        if key in sizes:
            reset_backlog(sizes[key])

    # Interleaved: each round drains with the hand-written relay, sends with send_task,
    # then drains with django-uow's relay and each publisher.
    samples = interleaved(runs, reps, setup)
    setup(None)
    for key, label, unit in (
        ("relay.hand", "hand-written SKIP LOCKED relay, pipelined XADD", "events/s"),
        ("relay.send_task", "plain Celery send_task() loop (Redis broker)", "msgs/s"),
    ):
        results.add(paired_row("relay", key, label, unit, samples, "relay.hand"))
    if reason:
        for key, label in (
            ("relay.uow.redis", "django-uow relay, RedisStreamPublisher"),
            ("relay.uow.celery", "django-uow relay, CeleryPublisher (enqueue)"),
        ):
            results.add(Row("relay", key, label, "events/s", not_measured=reason))
        return
    results.add(
        paired_row(
            "relay",
            "relay.uow.redis",
            "django-uow relay, RedisStreamPublisher",
            "events/s",
            samples,
            "relay.hand",
            note=f"{counted.get('relay.uow.redis')} stream entries for {n} events",
        )
    )
    results.add(
        paired_row(
            "relay",
            "relay.uow.redis.none",
            "django-uow relay, RedisStreamPublisher, ORDERING='none'",
            "events/s",
            samples,
            "relay.hand",
            note="no per-aggregate order: what the ordering check in the claim costs",
        )
    )
    results.add(
        paired_row(
            "relay",
            "relay.uow.celery",
            "django-uow relay, CeleryPublisher (enqueue)",
            "events/s",
            samples,
            "relay.hand",
            note=f"{counted.get('relay.uow.celery')} Celery messages queued for {n_celery} events",
        )
    )


def spawn_relays(k: int, publisher: str = "redis") -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.worker",
                "relay",
                "--publisher",
                publisher,
                "--batch-size",
                "500",
                "--go",
                "uow_bench:go",
            ],
            env=bench_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(k)
    ]


def collect(procs: list[subprocess.Popen[str]], timeout: float = 300) -> list[dict[str, Any]]:
    out = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        if proc.returncode:
            raise RuntimeError(f"relay subprocess exited with {proc.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def stream_ids(key: str) -> list[str]:
    redis = redis_client()
    ids: list[str] = []
    last = "-"
    while True:
        chunk = redis.xrange(key, min=last, max="+", count=10_000)
        if last != "-":
            chunk = chunk[1:]
        if not chunk:
            return ids
        for _entry_id, fields in chunk:
            ids.append(json.loads(fields[b"message"])["event_id"])
        last = chunk[-1][0].decode()


def run_concurrency(cfg: Config, results: Results) -> None:
    n = cfg.scale(20_000, 1_000)
    reason = relay_available()
    levels = (1, 2, 4)
    if reason:
        for k in levels:
            results.add(
                Row(
                    "concurrency",
                    f"conc.{k}",
                    f"django-uow, {k} relay process(es)",
                    "events/s",
                    not_measured=reason,
                )
            )
        return
    redis = redis_client()
    samples: dict[str, list[float]] = {f"conc.{k}": [] for k in levels}
    dupes: dict[int, list[tuple[int, int]]] = {k: [] for k in levels}
    # Interleaved: each round runs 1, 2, then 4 relay processes on the same backlog.
    for _ in range(1 if cfg.quick else min(cfg.reps, 3)):
        for k in levels:
            reset_backlog(n)
            redis.delete("uow_bench:go", "uow_bench:go:ready")
            procs = spawn_relays(k)
            try:
                for _ in range(k):  # every relay has imported Django and connected
                    if not redis.blpop(["uow_bench:go:ready"], timeout=60):
                        raise RuntimeError("a relay subprocess did not start within 60 s")
                go = time.time()
                redis.rpush("uow_bench:go", *["go"] * k)
                outs = collect(procs)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(timeout=10)
            end = max(o["end"] for o in outs)
            drained(n, sum(o["relayed"] for o in outs))
            samples[f"conc.{k}"].append(n / (end - go))
            ids = stream_ids(UOW_STREAM)
            dupes[k].append((len(ids), len(set(ids))))
    for k in levels:
        total, unique = dupes[k][-1]
        dup_count = sum(t - u for t, u in dupes[k])
        results.add(
            paired_row(
                "concurrency",
                f"conc.{k}",
                f"django-uow, {k} relay process(es), Redis",
                "events/s",
                samples,
                "conc.1",
                note=f"{total} entries / {unique} unique ids; {dup_count} duplicates "
                f"over {len(dupes[k])} run(s)",
            )
        )
        results.meta[f"conc_{k}_duplicates"] = dup_count
