"""The history of full runs: one small JSON file per run, aggregated on the results page.

Every full-mode run that writes its results (``python -m benchmarks``, ``--merge``
included) adds ``benchmarks/results/history/<UTC time>.json`` with the rows and targets
it measured itself: each row's median, ratio and per-round spread, each target's verdict
and figure. The page then says, for each target, how many of the last runs that measured
it passed, with the median and the range of its figure over them. Quick runs (CI) and
``--render`` never write here.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import Config, Results

#: How many of the most recent runs the page aggregates (fewer when fewer exist).
RUNS = 5


def history_dir(root: Path) -> Path:
    return root / "benchmarks" / "results" / "history"


def _commit(root: Path) -> str:
    """The checked-out commit, with ``+changes`` when the library or benchmarks differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "django_uow", "benchmarks/workloads",
             "benchmarks/benchapp", "benchmarks/harness.py"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head}+changes" if dirty else head


def entry(results: Results, cfg: Config, root: Path) -> dict[str, Any]:
    """What this invocation measured itself (a ``--merge`` run: only its own workloads)."""
    rows: dict[str, Any] = {}
    for key in sorted(results.fresh_rows):
        row = results.rows.get(key)
        if row is None or row.value is None:
            continue
        rows[key] = {
            "value": round(row.value, 4),
            "unit": row.unit,
            "ratio": None if row.ratio is None else round(row.ratio, 4),
            "spread": None if row.spread is None else [round(v, 4) for v in row.spread],
            "rounds": len(row.ratios),
        }
    targets: dict[str, Any] = {}
    for target in results.targets:
        fresh = target.key in results.fresh_targets and all(
            key in results.fresh_rows for key in target.inputs
        )
        if not fresh or target.passed is None:
            continue
        targets[target.key] = {
            "description": target.description,
            "passed": target.passed,
            "value": None if target.value is None else round(float(target.value), 4),
            "unit": target.unit,
            "measured": target.measured,
        }
    invocation = results.meta.get("invocation", {})
    return {
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "started": invocation.get("started", results.meta.get("started")),
        "commit": _commit(root),
        "workloads": invocation.get("workloads", sorted(cfg.only)),
        "reps": cfg.reps,
        "load_average": invocation.get("load_average"),
        "rows": rows,
        "targets": targets,
    }


def record(results: Results, cfg: Config, root: Path) -> Path | None:
    """Write this run's entry (full runs only); returns its path."""
    if cfg.quick:
        return None
    data = entry(results, cfg, root)
    if not data["rows"] and not data["targets"]:
        return None
    folder = history_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ".json")
    path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def load(root: Path) -> list[dict[str, Any]]:
    """Every recorded run, oldest first."""
    folder = history_dir(root)
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


@dataclass
class Summary:
    """One figure over the last runs that measured it."""

    runs: int
    passed: int
    median: float | None
    low: float | None
    high: float | None
    unit: str

    def figures(self) -> str:
        """The median and the range over the runs, e.g. ``190 ms (150-420)``."""
        if self.median is None or self.low is None or self.high is None:
            return "—"
        ratio = self.unit == "×"
        unit = self.unit if ratio else f" {self.unit}"
        low, high = _num(self.low, ratio), _num(self.high, ratio)
        return f"{_num(self.median, ratio)}{unit} ({low}–{high})"


def _num(value: float, ratio: bool = False) -> str:
    if ratio:
        return f"{value:.2f}"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _summary(found: list[tuple[bool, float | None]], unit: str) -> Summary:
    values = [v for _, v in found if v is not None]
    return Summary(
        runs=len(found),
        passed=sum(1 for ok, _ in found if ok),
        median=statistics.median(values) if values else None,
        low=min(values) if values else None,
        high=max(values) if values else None,
        unit=unit,
    )


def target_summary(history: list[dict[str, Any]], key: str, runs: int = RUNS) -> Summary | None:
    """Verdicts and figure of target ``key`` over the last ``runs`` runs that measured it."""
    found = [h["targets"][key] for h in history if key in h.get("targets", {})][-runs:]
    if not found:
        return None
    return _summary([(bool(t["passed"]), t.get("value")) for t in found], found[-1]["unit"])


def row_summary(history: list[dict[str, Any]], key: str, runs: int = RUNS) -> Summary | None:
    """A row's ratio to its baseline over the last ``runs`` runs that measured it."""
    found = [
        h["rows"][key]["ratio"]
        for h in history
        if key in h.get("rows", {}) and h["rows"][key].get("ratio") is not None
    ][-runs:]
    if not found:
        return None
    return _summary([(True, r) for r in found], "×")
