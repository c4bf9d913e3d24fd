"""Repetitions, medians, ratios and the result rows every workload reports.

A workload measures its baseline and its candidates interleaved (``interleaved``): one
round runs each of them once, in turn, and the next round again (A B A B ...), so a
shared machine's drift hits all of them alike. Each round gives one ratio per candidate
(its rate over the baseline's in the same round); a row's ratio is the median of those,
and its spread their minimum and maximum.
"""

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
    #: One ratio to the baseline per interleaved round (empty: the row was not paired).
    ratios: list[float] = field(default_factory=list)

    @property
    def spread(self) -> tuple[float, float] | None:
        """The smallest and largest per-round ratio, when the row was paired."""
        return (min(self.ratios), max(self.ratios)) if self.ratios else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Target:
    key: str
    description: str
    measured: str
    passed: bool | None
    why: str = ""
    #: The measured figure (a ratio unless ``unit`` says otherwise), for the history.
    value: float | None = None
    unit: str = "×"
    #: Row keys the target reads: a re-run (``--merge``) records it in the history only
    #: when all of them were measured by that run.
    inputs: list[str] = field(default_factory=list)

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
    #: chaos: the trial's whole length in minutes (None: the CI size).
    minutes: float | None = None

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.targets: list[Target] = []
        self.meta: dict[str, Any] = {}
        #: Keys of the rows and targets measured by this invocation (not loaded).
        self.fresh_rows: set[str] = set()
        self.fresh_targets: set[str] = set()

    def add(self, row: Row) -> Row:
        _set_ratio(row, self.rows.get(row.baseline or ""))
        self.rows[row.key] = row
        self.fresh_rows.add(row.key)
        print(_format_row(row), flush=True)
        return row

    def finalize(self) -> None:
        """Compute every ratio against its baseline once all rows are in."""
        for row in self.rows.values():
            _set_ratio(row, self.rows.get(row.baseline or ""))

    def ratio(self, key: str) -> float | None:
        row = self.rows.get(key)
        return None if row is None else row.ratio

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
        *,
        value: float | None = None,
        unit: str = "×",
        inputs: list[str] | None = None,
    ) -> None:
        inputs = inputs or []
        fresh = [name in self.fresh_rows for name in inputs]
        if any(fresh) and not all(fresh):  # a --merge re-run beside older rows
            measured += " (inputs from different runs)"
        target = Target(
            key, description, measured, passed, "" if passed else why, value, unit, inputs
        )
        self.targets = [t for t in self.targets if t.key != key]
        self.targets.append(target)
        self.fresh_targets.add(key)
        print(f"  target {target.verdict:>12}: {description} — {measured}", flush=True)


def _set_ratio(row: Row, base: Row | None) -> None:
    """Paired rows: the median of their per-round ratios; others: value over baseline."""
    if row.ratios:
        row.ratio = statistics.median(row.ratios)
    elif base is not None and base.value and row.value is not None:
        row.ratio = row.value / base.value


def _format_row(row: Row) -> str:
    if row.not_measured:
        return f"  {row.label:<58} not measured: {row.not_measured}"
    ratio = f"{row.ratio:6.2f}×" if row.ratio is not None else "       "
    spread = f" ({row.spread[0]:.2f}–{row.spread[1]:.2f})" if row.spread else ""
    return f"  {row.label:<58} {row.value:>12,.1f} {row.unit:<9} {ratio}{spread}"


def ratio_text(row: Row) -> str:
    """A row's ratio and, when paired, its spread: ``0.92x (0.88-0.95 over 5 rounds)``."""
    if row.ratio is None:
        return "not measured"
    spread = row.spread
    rounds = f" ({spread[0]:.2f}–{spread[1]:.2f} over {len(row.ratios)} round(s))" if spread else ""
    return f"{row.ratio:.2f}×{rounds}"


def interleaved(
    runs: dict[str, Callable[[], int]],
    reps: int,
    setup: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Run every entry of ``runs`` once per round, in turn, for ``reps`` rounds: ops/s each.

    Each callable returns how many operations it did; ``setup(key)``, when given, runs
    untimed before each of them (to reset a backlog, say).
    """
    samples: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(reps):
        for key, run in runs.items():
            if setup is not None:
                setup(key)
            start = time.perf_counter()
            count = run()
            samples[key].append(count / (time.perf_counter() - start))
    return samples


def paired_ratios(samples: list[float], base: list[float]) -> list[float]:
    """Round by round, ``samples[i] / base[i]`` (rates of the same interleaved round)."""
    return [s / b for s, b in zip(samples, base, strict=True) if b]


def paired_row(
    workload: str,
    key: str,
    label: str,
    unit: str,
    samples: dict[str, list[float]],
    baseline: str,
    *,
    scale: float = 1.0,
    note: str = "",
) -> Row:
    """A row for ``samples[key]`` (times ``scale``) with its per-round ratios to ``baseline``."""
    mine = [s * scale for s in samples[key]]
    return Row(
        workload,
        key,
        label,
        unit,
        statistics.median(mine),
        mine,
        baseline=baseline,
        note=note,
        ratios=paired_ratios(samples[key], samples[baseline]) if key != baseline else [],
    )


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
