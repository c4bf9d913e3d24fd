"""``python -m benchmarks [--quick] [--only WORKLOAD ...] [--reps N] [--minutes M]``.

Runs every workload against the real PostgreSQL (database ``uow_bench``) and Redis
(DB 6), prints a table (medians, ratios to the hand-written baseline measured in the
same interleaved rounds, and their spread), and writes ``benchmarks/results/latest.json``,
one history entry per full run (``benchmarks/results/history/``), the generated section
of ``docs/benchmarks.md`` and ``docs/img/benchmarks.png``.

``--only chaos [--minutes M]`` runs the test suite's chaos trial (``tests/chaos``) instead:
a ledger check under faults, not a measurement; it runs only when asked for and writes
nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = [
    "write",
    "versioned",
    "relay",
    "concurrency",
    "rabbitmq",
    "consumer",
    "latency",
    "hotagg",
    "asyncview",
    "soak",
    "scale",
    "peers",
    "chaos",
]
#: What a run without --only runs: every workload but the chaos trial (a trial, not a figure).
DEFAULT_WORKLOADS = [name for name in WORKLOADS if name != "chaos"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, no peers (CI)")
    parser.add_argument(
        "--only", nargs="+", choices=WORKLOADS, default=None, help="run only these workloads"
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (median of them)")
    parser.add_argument(
        "--peers-python",
        default=str(ROOT / ".venv-bench" / "bin" / "python"),
        help="interpreter of the peer environment (make bench-env)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not write JSON/Markdown/PNG"
    )
    parser.add_argument(
        "--full-drain",
        action="store_true",
        help="scale: relay the whole 1M backlog (default: its first 100,000 events)",
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=None,
        help="soak: seconds of steady writes (default 180, 18 with --quick)",
    )
    parser.add_argument(
        "--soak-rate",
        type=float,
        default=None,
        help="soak: commits per second of all writers together (default 20)",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="chaos: the trial's whole length in minutes (default: the CI size, about 4)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="re-run the --only workloads and replace their rows in the latest results",
    )
    parser.add_argument(
        "--history-runs",
        type=int,
        default=None,
        metavar="N",
        help="the page aggregates the last N full runs of each target (default 5)",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="measure nothing: rewrite the page and chart from an earlier run's JSON",
    )
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a CI timeout) unwinds like an error: every workload stops its subprocesses."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    sys.path.insert(0, str(ROOT))
    if args.render:
        from .harness import Config
        from .report import load_results, write_outputs

        write_outputs(
            load_results(Path(args.render)),
            Config(False, 0, set(), None),
            ROOT,
            record=False,
            history_runs=args.history_runs,
        )
        return 0

    import django
    from django.conf import settings

    from .db import ensure_database

    settings.DATABASES  # noqa: B018 - load settings before creating the database
    ensure_database()
    django.setup()

    from . import celery_app  # noqa: F401 - the benchmark's app becomes celery.current_app
    from .db import migrate
    from .harness import Config, Results, load_average
    from .report import write_outputs
    from .workloads import registry

    migrate()
    peers_python = args.peers_python if Path(args.peers_python).exists() else None
    cfg = Config(
        quick=args.quick,
        reps=args.reps or (3 if args.quick else 5),
        only=set(args.only or DEFAULT_WORKLOADS),
        peers_python=None if args.quick else peers_python,
        full_drain=args.full_drain,
        soak_seconds=args.soak_seconds,
        soak_rate=args.soak_rate,
        minutes=args.minutes,
    )
    if cfg.only == {"chaos"}:
        args.no_write = True  # a trial alone: nothing to add to the results or the page
    results = Results()
    latest = (
        ROOT / "benchmarks" / "results" / ("latest-quick.json" if args.quick else "latest.json")
    )
    if args.merge and latest.exists():
        from .report import load_results
        from .targets import CROSS

        results = load_results(latest)
        rerun = [
            k
            for k, r in results.rows.items()
            if (r.workload in cfg.only and not k.startswith("peer."))
            or (k.startswith("peer.") and "peers" in cfg.only)
        ]
        for key in rerun:
            del results.rows[key]
        results.targets = [
            t for t in results.targets if t.key.split(".")[0] not in cfg.only and t.key not in CROSS
        ]
        results.meta.pop("versions", None)
        results.meta["rerun"] = (
            f"{', '.join(w for w in WORKLOADS if w in cfg.only)} re-run at "
            + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        )
    started_at = results.meta.get("started")
    results.meta.update(
        mode="quick" if args.quick else "full",
        reps=cfg.reps,
        started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )
    if args.merge and started_at:
        results.meta["started"] = started_at
    results.meta["invocation"] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "workloads": [w for w in WORKLOADS if w in cfg.only],
        "load_average": [load_average()],
    }
    started = time.perf_counter()
    failures: list[str] = []
    for name in WORKLOADS:
        if name not in cfg.only:
            continue
        run: Callable[[object, object], None] = registry[name]
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            run(cfg, results)
        except Exception:
            traceback.print_exc()
            failures.append(name)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    results.finalize()
    from .targets import check

    print("\n== targets across workloads", flush=True)
    check(results)
    if not args.merge:
        results.meta["duration_s"] = round(time.perf_counter() - started, 1)
    results.meta["failed_workloads"] = failures
    results.meta["invocation"]["load_average"].append(load_average())
    if not args.no_write:
        write_outputs(results, cfg, ROOT, history_runs=args.history_runs)
    print(f"\nDone in {results.meta['duration_s']} s.", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
