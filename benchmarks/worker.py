"""Subprocesses of the benchmark: relays, writers. Each prints one JSON line at the end.

``python -m benchmarks.worker relay --publisher redis|celery|null [--go KEY]``
``python -m benchmarks.worker write --go KEY --stop KEY``
``python -m benchmarks.worker soakwrite --seconds S --rate R --wallets 1,2,3 --seed N``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from typing import Any


class NullPublisher:
    """Accepts every batch: isolates the relay's own cost (claim, envelopes, acknowledge)."""

    def publish(self, envelopes: Any) -> None:
        return None


def make_publisher(name: str) -> Any:
    from django_uow.publishers import CeleryPublisher, RedisStreamPublisher

    if name == "redis":
        return RedisStreamPublisher()
    if name == "celery":
        from benchmarks.celery_app import app

        return CeleryPublisher(app=app)
    return NullPublisher()


def wait_for(client: Any, key: str) -> None:
    client.blpop([key], timeout=60)


def relay(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.db import redis_client
    from django_uow.relay import relay_pending

    publisher = make_publisher(args.publisher)
    client = redis_client()
    if args.go:
        from django.db import connection

        connection.ensure_connection()
        client.rpush(f"{args.go}:ready", "1")
        wait_for(client, args.go)
    start = time.time()
    summary = relay_pending(publishers=[publisher], batch_size=args.batch_size, limit=args.limit)
    end = time.time()
    return {
        "relayed": summary.relayed,
        "failed": summary.failed,
        "left": summary.left,
        "start": start,
        "end": end,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def write(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.db import redis_client
    from benchmarks.workloads.write import tx_uow

    client = redis_client()
    tx_uow(0)
    wait_for(client, args.go)
    count, start = 0, time.perf_counter()
    while not client.exists(args.stop):
        for _ in range(20):
            tx_uow(count)
            count += 1
    return {"count": count, "elapsed": time.perf_counter() - start}


def soak_write(args: argparse.Namespace) -> dict[str, Any]:
    """Deposit into random wallets at a steady rate for ``--seconds``, then stop by itself."""
    from django.db import DatabaseError

    from benchmarks.benchapp.models import Wallet
    from django_uow import ConcurrencyError, unit_of_work

    rng = random.Random(args.seed)
    wallets = [int(w) for w in args.wallets.split(",")]
    attempts = [0]

    @unit_of_work(retries=10)
    def deposit(wallet_id: int, amount: int) -> None:
        attempts[0] += 1
        wallet = Wallet.objects.get(pk=wallet_id)
        wallet.deposit(amount)
        wallet.save()

    if args.go:  # started beside the worker: wait until it is up (bounded)
        from benchmarks.db import redis_client

        redis_client().blpop([args.go], timeout=120)
    committed = gave_up = errors = amount_total = 0
    most = int(args.rate * args.seconds) + 1  # a bound in count as well as in time
    start = time.monotonic()
    end = start + args.seconds
    for i in range(most):
        now = time.monotonic()
        if now >= end:
            break
        due = start + i / args.rate
        if due > now:
            time.sleep(min(due - now, end - now))
        amount = rng.randint(1, 100)
        try:
            deposit(rng.choice(wallets), amount)
        except ConcurrencyError:
            gave_up += 1
            continue
        except DatabaseError:
            errors += 1
            continue
        committed += 1
        amount_total += amount
    return {
        "committed": committed,
        "attempts": attempts[0],
        "gave_up": gave_up,
        "errors": errors,
        "amount": amount_total,
        "elapsed": time.monotonic() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay")
    r.add_argument("--publisher", choices=["redis", "celery", "null"], default="redis")
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--go", default=None)
    r.add_argument("--limit", type=int, default=None)
    w = sub.add_parser("write")
    w.add_argument("--go", required=True)
    w.add_argument("--stop", required=True)
    s = sub.add_parser("soakwrite")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--rate", type=float, required=True, help="commits per second")
    s.add_argument("--wallets", required=True, help="comma-separated wallet ids")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--go", default=None, help="Redis list to BLPOP before writing")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    commands = {"relay": relay, "write": write, "soakwrite": soak_write}
    out = commands[args.cmd](args)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
