"""``manage.py prune_outbox``: delete dispatched events and succeeded handler deliveries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_uow.relay import prune


def _age(options: dict[str, Any], name: str) -> timedelta | None:
    seconds = options[name]
    if seconds is None:
        return None
    if seconds < 0:
        raise CommandError(f"--{name.replace('_', '-')} must not be negative.")
    return timedelta(seconds=seconds)


class Command(BaseCommand):
    help = (
        "Delete dispatched outbox events older than DJANGO_UOW['RETENTION'] and succeeded "
        "handler deliveries older than DJANGO_UOW['INBOX_RETENTION'], in bounded batches. "
        "Pending and failed events, and owed or failed deliveries, are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default", help="Database alias.")
        parser.add_argument(
            "--older-than",
            type=float,
            default=None,
            help="Age of events in seconds (default: the RETENTION setting).",
        )
        parser.add_argument(
            "--inbox-older-than",
            type=float,
            default=None,
            help="Age of succeeded deliveries in seconds (default: INBOX_RETENTION).",
        )
        parser.add_argument("--batch-size", type=int, default=None, help="Rows per DELETE.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        pruned = prune(
            using=options["database"],
            older_than=_age(options, "older_than"),
            inbox_older_than=_age(options, "inbox_older_than"),
            batch_size=options["batch_size"],
        )
        self.stdout.write(str(pruned))
