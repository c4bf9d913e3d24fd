"""The peer libraries, measured by ``benchmarks.peer_runner`` in the peer environment.

Each peer runs in its own subprocess, settings and database; its figures are compared
with the hand-written baselines of this run. Without the peer environment (quick mode,
or ``make bench-env`` not run) every peer row says why it was not measured.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from ..harness import Config, Results, Row, bench_env

ROOT = Path(__file__).resolve().parents[2]

SECTIONS = {
    # what: (workload, baseline key, size (full), reps)
    "write": ("write", "write.b", 1000),
    "versioned": ("versioned", "versioned.plain", 2000),
    "relay": ("relay", "relay.hand", 1000),
}

EXPECTED = {
    "write": [
        ("peer.write.celery_outbox", "(e) django-celery-outbox", "tx/s"),
        ("peer.write.jaiminho", "(e) django-jaiminho", "tx/s"),
        ("peer.write.outbox_pattern", "(e) django-outbox-pattern", "tx/s"),
    ],
    "versioned": [("peer.versioned.concurrency", "django-concurrency save()", "saves/s")],
    "relay": [
        ("peer.relay.celery_outbox", "django-celery-outbox relay", "events/s"),
        ("peer.relay.jaiminho", "django-jaiminho relay", "events/s"),
        ("peer.relay.outbox_pattern", "django-outbox-pattern relay", "events/s"),
    ],
}


def _run(cfg: Config, what: str, n: int) -> dict[str, Any]:
    assert cfg.peers_python
    proc = subprocess.run(
        [cfg.peers_python, "-m", "benchmarks.peer_runner", what, "--n", str(n),
         "--reps", str(cfg.reps)],
        env=bench_env(), capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run_peers(cfg: Config, results: Results) -> None:
    for what, (workload, baseline, n) in SECTIONS.items():
        if not cfg.peers_python:
            reason = (
                "quick mode measures django-uow and the hand-written baselines only"
                if cfg.quick
                else "the peer environment is missing (run `make bench-env`)"
            )
            for key, label, unit in EXPECTED[what]:
                results.add(Row(workload, key, label, unit, not_measured=reason))
            continue
        try:
            out = _run(cfg, what, n)
        except Exception as error:
            for key, label, unit in EXPECTED[what]:
                results.add(Row(workload, key, label, unit, not_measured=str(error)[:200]))
            continue
        results.meta.setdefault("peer_versions", {}).update(out["versions"])
        for r in out["rows"]:
            note = r.get("note", "")
            if r["value"] is not None:
                note = f"{note}; " if note else ""
                note += f"{n:,} per repetition, own process and database"
            row = Row(
                workload,
                r["key"],
                r["label"],
                r["unit"],
                r["value"],
                r["samples"],
                baseline=baseline,
                note=note,
                not_measured=r["not_measured"],
            )
            if "queries" in r:
                results.meta[f"{r['key']}.queries"] = r["queries"]
            results.add(row)
