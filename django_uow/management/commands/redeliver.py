"""``manage.py redeliver``: run handler deliveries again (one, an event's, or every failed one)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_uow.relay.redelivery import deliveries_to_redeliver, redeliver


class Command(BaseCommand):
    help = (
        "Run handler deliveries again: --event ID (its handlers, or --handler NAME), or "
        "--failed (every failed delivery, optionally of one --handler). With CeleryPublisher "
        "configured the tasks are published again (unless --inline); otherwise the handlers "
        "run here. Idempotent handlers skip deliveries that already succeeded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--event", default=None, help="Event id (UUID).")
        parser.add_argument("--handler", default=None, help="Handler name.")
        parser.add_argument(
            "--failed", action="store_true", help="Every failed delivery (of --handler)."
        )
        parser.add_argument(
            "--inline", action="store_true", help="Run the handlers here even with Celery."
        )
        parser.add_argument("--database", default="default", help="Database alias.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["event"] is None and not options["failed"]:
            raise CommandError("Name an event with --event ID, or pass --failed.")
        using = options["database"]
        counts: dict[str, int] = {}
        try:
            pairs = list(
                deliveries_to_redeliver(
                    using=using,
                    event_id=options["event"],
                    handler=options["handler"],
                    failed=options["failed"],
                )
            )
            for event_id, handler in pairs:
                result = redeliver(
                    event_id, handler, using=using, inline=True if options["inline"] else None
                )
                counts[result.outcome] = counts.get(result.outcome, 0) + 1
                self.stdout.write(str(result))
        except (LookupError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        self.stdout.write(f"redelivered {len(pairs)}" + (f": {summary}" if summary else ""))
