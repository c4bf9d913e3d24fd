"""Workload: an async view with a unit of work against the same sync view, one ASGI server.

Both views load an account, record one event and save it (a version-checked UPDATE and
the outbox INSERT) in a unit of work; the async one awaits the ORM inside
``@unit_of_work`` on an ``async def``. One uvicorn process serves both; a client in this
process keeps ``CONCURRENCY`` requests in flight. Rounds alternate (sync, async, sync,
...), so the machine's drift hits both alike; each round gives requests/s and the p95 of
its request latencies, and the async form's ratio to the sync one in the same round.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time

from ..benchapp.models import Account
from ..db import OUTBOX, truncate
from ..harness import Config, Results, Row, bench_env, paired_ratios, percentile
from ..procs import Service, services

CONCURRENCY = 8
ACCOUNTS = 64
TARGET = 0.9
KINDS = ("sync", "async")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, server: Service, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"the ASGI server exited: {server.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the ASGI server did not listen on {port} within {timeout} s")


async def _round(base: str, kind: str, pks: list[int], requests: int) -> tuple[float, list[float]]:
    """``requests`` requests to the ``kind`` view, ``CONCURRENCY`` at a time: req/s, ms each."""
    import httpx

    latencies: list[float] = []
    issued = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < requests:
                pk = pks[issued % len(pks)]
                issued += 1
                started = time.perf_counter()
                response = await client.post(f"/{kind}/{pk}/")
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 204:
                    raise RuntimeError(f"{kind} view answered {response.status_code}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    return requests / elapsed, latencies


def run_asyncview(cfg: Config, results: Results) -> None:
    try:
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        for kind in KINDS:
            results.add(
                Row(
                    "asyncview",
                    f"asyncview.{kind}",
                    f"{kind} view",
                    "req/s",
                    not_measured=str(error),
                )
            )
        return
    truncate(OUTBOX, Account._meta.db_table)
    pks = [Account.objects.create(name=f"async-{i}").pk for i in range(ACCOUNTS)]
    requests = cfg.scale(300, 150)
    port = _free_port()
    server = Service(
        "uvicorn", [sys.executable, "-m", "benchmarks.asgi_server", str(port)], bench_env()
    )
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    p95s: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with services(server):
        server.start()
        _wait_for_port(port, server)
        base = f"http://127.0.0.1:{port}"
        for kind in KINDS:  # warm-up: imports, first connections, the unit threads
            asyncio.run(_round(base, kind, pks, 50))
        for _ in range(cfg.reps):
            for kind in KINDS:
                rate, latencies = asyncio.run(_round(base, kind, pks, requests))
                rates[kind].append(rate)
                p95s[kind].append(percentile(latencies, 95))
    note = (
        f"{requests} requests a round, {CONCURRENCY} in flight, one uvicorn process, "
        f"CONN_MAX_AGE=0; load average {os.getloadavg()[0]:.1f}"
    )
    labels = {
        "sync": "sync view, @unit_of_work (ORM in the request's thread)",
        "async": "async view, @unit_of_work on async def (awaited ORM)",
    }
    for kind in KINDS:
        results.add(
            Row(
                "asyncview",
                f"asyncview.{kind}",
                f"{labels[kind]}, requests/s",
                "req/s",
                statistics.median(rates[kind]),
                rates[kind],
                baseline="asyncview.sync",
                note=note if kind == "sync" else "",
                ratios=paired_ratios(rates[kind], rates["sync"]) if kind == "async" else [],
            )
        )
    for kind in KINDS:
        results.add(
            Row(
                "asyncview",
                f"asyncview.{kind}_p95",
                f"{labels[kind]}, p95 latency",
                "ms",
                statistics.median(p95s[kind]),
                p95s[kind],
                baseline="asyncview.sync_p95",
                higher_is_better=False,
                ratios=paired_ratios(p95s[kind], p95s["sync"]) if kind == "async" else [],
            )
        )
    ratio = results.ratio("asyncview.async")
    results.target(
        "asyncview.ratio",
        f"an async view with a unit of work ≥ {TARGET}× the same sync view (requests/s, "
        "one ASGI server)",
        f"{ratio:.2f}×, p95 {statistics.median(p95s['async']):.1f} ms vs "
        f"{statistics.median(p95s['sync']):.1f} ms"
        if ratio is not None
        else "not measured",
        None if ratio is None else ratio >= TARGET,
        f"{ratio:.2f}× < {TARGET}×" if ratio is not None else "",
        value=ratio,
        inputs=["asyncview.sync", "asyncview.async"],
    )
