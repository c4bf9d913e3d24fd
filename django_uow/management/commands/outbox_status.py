"""``manage.py outbox_status``: outbox and delivery counts, lags and what blocks delivery,
as text or JSON."""

from __future__ import annotations

import json
import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from ...ops.policies import handler_policies, policy_text
from ...ops.status import outbox_report

#: Control characters (ESC included) that a terminal would act on, in stored error text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """The first line of ``text`` with control characters shown as ``?``."""
    first = text.splitlines()[0] if text else "-"
    return _CONTROL.sub("?", first)


class Command(BaseCommand):
    help = (
        "Show how many outbox events are pending, dispatched and failed, how many handler "
        "deliveries are owed, failed and blocked, the relay and consumer lags, why the "
        "oldest pending event waits, and which aggregates a failing event blocks."
    )

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
            status = outbox_report(using, **kwargs)
        except DatabaseError as exc:
            raise CommandError(f"Could not read the outbox on database {using!r}: {exc}") from exc
        status["handlers"] = handler_policies()
        if options["json"]:
            self.stdout.write(json.dumps(status, sort_keys=True))
            return
        counts, lag = status["counts"], status["consumer_lag"]
        plus = "+" if status["dispatched_capped"] else ""
        # Outbox and handler-delivery counts first, side by side: under CeleryPublisher a
        # handler's dead letter leaves its event dispatched, so the outbox alone looks fine.
        self.stdout.write(
            f"outbox events       pending: {counts['pending']}  failed: {counts['failed']}  "
            f"dispatched: {counts['dispatched']}{plus}  "
            f"discarded: {counts['discarded']}{'+' if status['discarded_capped'] else ''}"
        )
        self.stdout.write(
            f"handler deliveries  owed: {lag['owed']}  failed: {lag['failed']}  "
            f"blocked: {lag['blocked']}"
        )
        oldest = status["oldest_pending_created_at"] or "-"
        self.stdout.write(f"relay lag: {status['lag_seconds']:.1f}s (oldest pending: {oldest})")
        self.stdout.write(
            f"consumer lag: {lag['age_seconds']:.1f}s (oldest delivery not handled yet, "
            f"first published: {lag['oldest_published_at'] or '-'})"
        )
        if status["oldest_pending"]:
            pending = status["oldest_pending"]
            self.stdout.write(
                f"oldest pending: {pending['event_id']} ({one_line(pending['event_type'])}): "
                f"{one_line(pending['waiting_reason']['text'])}"
            )
        self.stdout.write(f"blocked aggregates: {status['blocked_aggregates']}")
        for head in status["blocking_heads"]:
            when = f", next try at {head['next_try_at']}" if head["next_try_at"] else ""
            error = one_line(head["last_error"])
            self.stdout.write(
                f"  {one_line(head['aggregate_type'])}:{one_line(head['aggregate_id'])}: "
                f"{head['waiting']} waiting behind {head['status']} event {head['event_id']} "
                f"({one_line(head['event_type'])}, {head['attempts']} attempts{when}): {error}"
            )
        failures = status["handler_failures"]
        self.stdout.write(f"failed handler deliveries: {failures['count']}")
        for failure in failures["recent"]:
            self.stdout.write(
                f"  {failure['event_id']} ({one_line(failure['event_type'])}) "
                f"{one_line(failure['handler'])}, {failure['attempts']} attempts: "
                f"{one_line(failure['last_error'])}"
            )
        self.stdout.write("handlers (* = the handler's own value, else the setting's):")
        for policy in status["handlers"]:
            types = ", ".join(one_line(t) for t in policy["event_types"])
            self.stdout.write(f"  {one_line(policy['name'])} ({types}): {policy_text(policy)}")
