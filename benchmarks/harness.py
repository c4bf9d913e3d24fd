"""Repetitions, medians, ratios and the result rows every workload reports."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One measured figure (or one that could not be measured, with the reason)."""

    workload: str
    key: str
    label: str
    unit: str
    value: float | None = None
    samples: list[float] = field(default_factory=list)
    baseline: str | None = None
    ratio: float | None = None
    note: str = ""
    not_measured: str = ""
    higher_is_better: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Target:
    key: str
    description: str
    measured: str
    passed: bool | None
    why: str = ""

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "NOT MEASURED"
        return "PASS" if self.passed else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


@dataclass
class Config:
    quick: bool
    reps: int
    only: set[str]
    peers_python: str | None
    full_drain: bool = False
    soak_seconds: float | None = None
    soak_rate: float | None = None

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.targets: list[Target] = []
        self.meta: dict[str, Any] = {}

    def add(self, row: Row) -> Row:
        if row.baseline and row.value is not None:
            base = self.rows.get(row.baseline)
            if base is not None and base.value:
                row.ratio = row.value / base.value
        self.rows[row.key] = row
        print(_format_row(row), flush=True)
        return row

    def finalize(self) -> None:
        """Compute every ratio against its baseline once all rows are in."""
        for row in self.rows.values():
            base = self.rows.get(row.baseline or "")
            if base is not None and base.value and row.value is not None:
                row.ratio = row.value / base.value

    def value(self, key: str) -> float | None:
        row = self.rows.get(key)
        return None if row is None else row.value

    def target(
        self,
        key: str,
        description: str,
        measured: str,
        passed: bool | None,
        why: str = "",
    ) -> None:
        target = Target(key, description, measured, passed, "" if passed else why)
        self.targets.append(target)
        print(f"  target {target.verdict:>12}: {description} — {measured}", flush=True)


def _format_row(row: Row) -> str:
    if row.not_measured:
        return f"  {row.label:<58} not measured: {row.not_measured}"
    ratio = f"{row.ratio:6.2f}×" if row.ratio is not None else "       "
    return f"  {row.label:<58} {row.value:>12,.1f} {row.unit:<9} {ratio}"


def median_rate(
    run: Callable[[], int],
    reps: int,
    setup: Callable[[], None] | None = None,
) -> tuple[float, list[float]]:
    """Run ``run`` (which returns how many operations it did) ``reps`` times; ops/s."""
    samples = []
    for _ in range(reps):
        if setup is not None:
            setup()
        start = time.perf_counter()
        count = run()
        elapsed = time.perf_counter() - start
        samples.append(count / elapsed)
    return statistics.median(samples), samples


def median_time(
    run: Callable[[], Any], reps: int, setup: Callable[[], None] | None = None
) -> tuple[float, list[float]]:
    """Median wall time of ``run`` in milliseconds."""
    samples = []
    for _ in range(reps):
        if setup is not None:
            setup()
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), samples


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def load_average() -> float:
    """The 1-minute load average: how busy the shared machine was around a measurement."""
    return round(os.getloadavg()[0], 1)


def bench_env() -> dict[str, str]:
    """Environment for subprocesses: the benchmark's settings, the repository on the path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env
