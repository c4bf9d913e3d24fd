"""``manage.py prune_outbox``: delete dispatched events older than RETENTION."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_uow.relay import prune_outbox


class Command(BaseCommand):
    help = (
        "Delete dispatched outbox events older than DJANGO_UOW['RETENTION'] in bounded batches. "
        "Pending and failed events are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default="default", help="Database alias.")
        parser.add_argument(
            "--older-than",
            type=float,
            default=None,
            help="Age in seconds (default: the RETENTION setting).",
        )
        parser.add_argument("--batch-size", type=int, default=None, help="Rows per DELETE.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        older = options["older_than"]
        if older is not None and older < 0:
            raise CommandError("--older-than must not be negative.")
        deleted = prune_outbox(
            using=options["database"],
            older_than=None if older is None else timedelta(seconds=older),
            batch_size=options["batch_size"],
        )
        self.stdout.write(f"pruned {deleted}")
