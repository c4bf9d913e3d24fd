"""``manage.py outbox_status``: counts per status and relay lag, as text or JSON."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from django_uow.status import outbox_status


class Command(BaseCommand):
    help = "Show how many outbox events are pending, dispatched and failed, and the relay lag."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")
        parser.add_argument(
            "--database", default=DEFAULT_DB_ALIAS, help="Database alias (default: %(default)s)."
        )
        parser.add_argument(
            "--exact",
            action="store_true",
            help="Count dispatched rows exactly (reads the whole table) instead of up to a cap.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"]
        if using not in connections:
            raise CommandError(f"Unknown database alias {using!r}; see settings.DATABASES.")
        kwargs: dict[str, Any] = {"dispatched_cap": None} if options["exact"] else {}
        try:
            status = outbox_status(using, **kwargs)
        except DatabaseError as exc:
            raise CommandError(f"Could not read the outbox on database {using!r}: {exc}") from exc
        if options["json"]:
            self.stdout.write(json.dumps(status, sort_keys=True))
            return
        counts = status["counts"]
        plus = "+" if status["dispatched_capped"] else ""
        self.stdout.write(
            f"pending: {counts['pending']}  failed: {counts['failed']}  "
            f"dispatched: {counts['dispatched']}{plus}"
        )
        oldest = status["oldest_pending_created_at"] or "-"
        self.stdout.write(f"relay lag: {status['lag_seconds']:.1f}s (oldest pending: {oldest})")
