"""How the admin shows stored values: durations, capped text, JSON, errors, statuses.

Everything shown is escaped (a payload holding HTML shows as text) and capped, so one huge
value cannot make a page slow.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from ..delivery.lag import ConsumerLag

#: Characters of pretty-printed JSON shown on the change page; the rest via "raw JSON".
JSON_PREVIEW_CHARS = 20_000


#: Characters of a stored error shown on an event's page; the rest behind a link.
LAST_ERROR_PAGE_CHARS = 2_000


#: Characters of a stored error shown in a list; the event's page shows the rest.
ERROR_PREVIEW_CHARS = 300


#: Characters of a stored error, and of a traceback, shown on a page.
ERROR_PAGE_CHARS = 4_000


TRACEBACK_PAGE_CHARS = 16_000


def format_duration(seconds: float) -> str:
    """``3 d 4 h``, ``5 min 2 s``: two units are plenty for a lag."""
    seconds = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def cap_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis: a list row stays one row."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _when(value: Any) -> str:
    return date_format(timezone.localtime(value), "DATETIME_FORMAT") if value else "-"


def consumer_lag_context(lag: ConsumerLag) -> dict[str, Any]:
    """Consumer lag for a status box: owed deliveries, the oldest one's age, dead letters."""
    return {**lag.as_dict(), "age_display": format_duration(lag.age_seconds)}


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder)


def error_html(error: str, traceback: str = "") -> SafeString | str:
    """A stored error, escaped and cut, with its traceback folded in a ``<details>``."""
    if not error and not traceback:
        return "-"
    shown = format_html('<pre class="uow-error">{}</pre>', cap_text(error, ERROR_PAGE_CHARS))
    if not traceback:
        return shown
    return format_html(
        '{}<details class="uow-traceback"><summary>{}</summary><pre class="uow-error">{}</pre>'
        "</details>",
        shown,
        gettext("Traceback"),
        cap_text(traceback, TRACEBACK_PAGE_CHARS),
    )


def delivery_status_html(status: str, label: str) -> SafeString:
    return format_html('<span class="uow-status uow-delivery-{}">{}</span>', status, label)
