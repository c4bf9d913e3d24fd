"""``python -m tests.chaos [--seed N] [--minutes M] [--database NAME]``: one chaos trial.

Runs on PostgreSQL (``tests.settings`` with ``UOW_DB=postgres``) in the database NAME
(default ``uow_chaos``), created and migrated when missing and emptied before the trial;
never a test database of the suite. Prints the plan, the report (every violated check
with its evidence, the fault counts) and the fault log; exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from typing import Any


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="replay this seed")
    parser.add_argument(
        "--minutes", type=float, default=None, help="the whole trial's length (default: CI size)"
    )
    parser.add_argument("--database", default="uow_chaos", help="PostgreSQL database name")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override a field of the plan (tests.chaos.plan.Plan), e.g. clock_skew=0 or "
        "faults=[] (checking the trial itself; the seed still draws the rest)",
    )
    return parser.parse_args(argv)


def ensure_database(settings: dict[str, object], name: str) -> None:
    import psycopg

    with psycopg.connect(
        host=str(settings["HOST"]),
        port=int(str(settings["PORT"])),
        user=str(settings["USER"]),
        dbname="postgres",
        autocommit=True,
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def with_changes(plan: Any, changes: list[str]) -> Any:
    """``plan`` with ``FIELD=JSON`` overrides (``knobs.FIELD`` for its settings); a new
    ``chaos_seconds`` reschedules the faults (unless ``faults`` is given too)."""
    import random

    from .plan import Fault, schedule

    values: dict[str, Any] = {}
    knobs: dict[str, Any] = {}
    for change in changes:
        name, _, text = change.partition("=")
        target, key = (knobs, name[6:]) if name.startswith("knobs.") else (values, name)
        owner = plan.knobs if target is knobs else plan
        if key not in {f.name for f in dataclasses.fields(owner)}:
            raise SystemExit(f"--set {change!r}: no field {key!r} in {type(owner).__name__}.")
        try:
            value = json.loads(text)
        except ValueError:
            raise SystemExit(f"--set {change!r}: {text!r} is not JSON.") from None
        if key == "faults":  # a list of {"at": s, "kind": ..., "target": ..., "hold": s}
            value = [Fault(**fault) for fault in value]
        target[key] = tuple(value) if isinstance(value, list) else value
    if knobs:
        values["knobs"] = dataclasses.replace(plan.knobs, **knobs)
    if "chaos_seconds" in values and "faults" not in values:
        values["faults"] = schedule(random.Random(plan.seed), values["chaos_seconds"], plan.knobs)
    return dataclasses.replace(plan, **values)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a CI timeout, the benchmark stopping) unwinds: the trial stops its children."""
    raise SystemExit(128 + signum)


def log(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if os.environ.setdefault("UOW_DB", "postgres") != "postgres":
        print("The chaos trial runs on PostgreSQL: unset UOW_DB or set UOW_DB=postgres.")
        return 2
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    if args.database.startswith("test_"):
        print(f"{args.database!r} looks like a test database of the suite: name another one.")
        return 2
    import tests.settings as settings

    settings.DATABASES["default"]["NAME"] = args.database
    ensure_database(settings.DATABASES["default"], args.database)
    import django

    django.setup()
    from django.core.management import call_command

    from .plan import Plan, seed_from_env
    from .trial import reset_tables, run_trial

    call_command("migrate", verbosity=0, interactive=False)
    reset_tables()
    plan = Plan.make(args.seed if args.seed is not None else seed_from_env(), minutes=args.minutes)
    plan = with_changes(plan, args.set)
    report = run_trial(plan, args.database, log=log)
    log(report.text())
    log("-- faults")
    log(report.faults_text())
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
