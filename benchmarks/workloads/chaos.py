"""Workload: the chaos trial of the test suite (``tests/chaos``), as long as ``--minutes``.

The trial needs the suite's settings and apps (its ledger handlers live in a test app),
so it runs as ``python -m tests.chaos`` in a child process, against the database
``uow_bench_chaos`` on the benchmark's PostgreSQL server (created when missing, emptied
before the trial). Its output is printed as it comes: the plan and seed, then the
report (every check, each violated one with its evidence, the fault counts) and the
fault log. It is a trial, not a measurement: it adds no row to the results and the
page; a violated check makes the benchmark run exit non-zero. ``UOW_CHAOS_SEED``
replays a seed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings

from ..harness import Config, Results

ROOT = Path(__file__).resolve().parents[2]
DATABASE = "uow_bench_chaos"


def chaos_cmd(minutes: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "tests.chaos", "--database", DATABASE]
    return cmd + (["--minutes", f"{minutes:g}"] if minutes else [])


def chaos_env() -> dict[str, str]:
    db = settings.DATABASES["default"]
    env = {**os.environ, "UOW_DB": "postgres", "UOW_PG_HOST": str(db["HOST"])}
    env["UOW_PG_PORT"] = str(db["PORT"])
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    return env


def run_chaos(cfg: Config, results: Results) -> None:
    lines: list[str] = []
    proc = subprocess.Popen(
        chaos_cmd(cfg.minutes),
        cwd=ROOT,
        env=chaos_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a SIGTERM of the benchmark stops the trial's group
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"  {line.rstrip()}", flush=True)
            lines.append(line.rstrip())
        code = proc.wait()
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    results.meta["chaos"] = summary(lines, code)
    if code != 0:
        raise RuntimeError(
            f"the chaos trial failed (exit status {code}): {results.meta['chaos']['verdict']}"
        )


def summary(lines: list[str], code: int) -> dict[str, Any]:
    """The trial's verdict, checks and fault counts, from its report."""
    verdict = next((ln for ln in reversed(lines) if ln.startswith("seed ")), "no verdict")
    return {
        "exit_status": code,
        "verdict": verdict,
        "failed_checks": [ln.split(None, 1)[1] for ln in lines if ln.startswith("  FAIL ")],
        "faults": next((ln for ln in lines if ln.startswith("faults injected:")), ""),
    }
