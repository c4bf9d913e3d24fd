"""``manage.py relay_outbox``: relay pending outbox events (a thin wrapper of the library)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from django_uow.exceptions import RelayError
from django_uow.relay import RelayLoop, RelayResult, connection_alias_ok


class Command(BaseCommand):
    help = (
        "Relay pending outbox events to the configured publishers. Loops until SIGINT/SIGTERM "
        "(finishing the current batch); --once drains what is due and exits."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="Drain what is due, then exit.")
        parser.add_argument(
            "--interval", type=float, default=1.0, help="Seconds between polls (default 1)."
        )
        parser.add_argument("--batch-size", type=int, default=None, help="Events per batch.")
        parser.add_argument("--limit", type=int, default=None, help="Stop after this many events.")
        parser.add_argument("--database", default="default", help="Database alias.")
        parser.add_argument(
            "--prune", action="store_true", help="Also delete dispatched events past RETENTION."
        )
        parser.add_argument(
            "--no-listen",
            action="store_false",
            dest="listen",
            help="Poll only; do not LISTEN for commits on PostgreSQL.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("batch_size", "limit"):
            if options[name] is not None and options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1.")
        if options["interval"] <= 0:
            raise CommandError("--interval must be a positive number of seconds.")
        tty = self.stdout.isatty()

        def progress(batch: RelayResult, summary: RelayResult) -> None:
            if tty:
                self.stdout.write(
                    f"\rrelayed {summary.relayed}, failed {summary.failed}, "
                    f"retrying {summary.retried}",
                    ending="",
                )
                self.stdout.flush()

        try:
            connection_alias_ok(options["database"])
        except RelayError as exc:
            raise CommandError(str(exc)) from exc
        loop = RelayLoop(
            using=options["database"],
            interval=options["interval"],
            batch_size=options["batch_size"],
            limit=options["limit"],
            once=options["once"],
            prune=options["prune"],
            listen=options["listen"],
            on_batch=progress,
        )
        with loop.signals_handled():
            try:
                total = loop.run()
            except (RelayError, DatabaseError, ImproperlyConfigured) as exc:
                if tty:
                    self.stdout.write("")
                raise CommandError(str(exc)) from exc
        if tty:
            self.stdout.write("")
        line = str(total)
        if options["prune"]:
            line += f", pruned {loop.pruned}"
        self.stdout.write(line)
