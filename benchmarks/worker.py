"""Subprocesses of the benchmark: relays, writers. Each prints one JSON line at the end.

``python -m benchmarks.worker relay --publisher redis|celery|null [--go KEY]``
``python -m benchmarks.worker write --go KEY --stop KEY``
"""

from __future__ import annotations

import argparse
import json
import os
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
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    out = relay(args) if args.cmd == "relay" else write(args)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
