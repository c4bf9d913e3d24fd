"""``manage.py redeliver``: run handler deliveries again (one, an event's, or every failed
one), or backfill a handler over the retained events, with progress on stderr."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import dateparse, timezone

from django_uow.relay.redelivery import deliveries_to_redeliver, redeliver

#: A progress line every this many deliveries (and at most every PROGRESS_SECONDS).
PROGRESS_EVERY = 100
PROGRESS_SECONDS = 5.0


class Command(BaseCommand):
    help = (
        "Run handler deliveries again: --event ID (its handlers, or --handler NAME); "
        "--handler NAME alone (backfill it over every retained event of its type it has not "
        "handled, in order), --event-type / --since (dispatched events); or "
        "--failed (failed deliveries, narrowed by the other options). With CeleryPublisher "
        "configured the tasks are published again (unless --inline); otherwise the handlers "
        "run here. Idempotent handlers skip deliveries that already succeeded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--event", default=None, help="Event id (UUID).")
        parser.add_argument("--handler", default=None, help="Handler name.")
        parser.add_argument(
            "--failed", action="store_true", help="Every failed delivery (of --handler)."
        )
        parser.add_argument("--event-type", default=None, help="Events of this type.")
        parser.add_argument(
            "--since",
            default=None,
            help="Events created (with --failed: last tried) at or after this ISO 8601 time.",
        )
        parser.add_argument(
            "--inline", action="store_true", help="Run the handlers here even with Celery."
        )
        parser.add_argument("--database", default="default", help="Database alias.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not (
            options["event"]
            or options["failed"]
            or options["event_type"]
            or options["since"]
            or options["handler"]
        ):
            raise CommandError(
                "Name an event with --event ID, a handler to backfill with --handler NAME, "
                "select events with --event-type and/or --since, or pass --failed."
            )
        since = None
        if options["since"] is not None:
            try:
                since = dateparse.parse_datetime(options["since"])
            except ValueError:
                since = None
            if since is None:
                raise CommandError(f"--since {options['since']!r} is not an ISO 8601 date-time.")
            if timezone.is_naive(since):
                since = timezone.make_aware(since)
        using = options["database"]
        counts: dict[str, int] = {}
        try:
            pairs = list(
                deliveries_to_redeliver(
                    using=using,
                    event_id=options["event"],
                    handler=options["handler"],
                    failed=options["failed"],
                    event_type=options["event_type"],
                    since=since,
                )
            )
            total = len(pairs)
            shown_at = time.monotonic()
            for done, (event_id, handler) in enumerate(pairs, start=1):
                result = redeliver(
                    event_id, handler, using=using, inline=True if options["inline"] else None
                )
                counts[result.outcome] = counts.get(result.outcome, 0) + 1
                self.stdout.write(str(result))
                now = time.monotonic()
                if (
                    done == total
                    or done % PROGRESS_EVERY == 0
                    or now - shown_at >= PROGRESS_SECONDS
                ):
                    shown_at = now
                    self.stderr.write(f"progress: {done}/{total} ({100 * done // total}%)")
        except (LookupError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        self.stdout.write(f"redelivered {len(pairs)}" + (f": {summary}" if summary else ""))
