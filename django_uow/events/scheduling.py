"""Scheduled events: turn ``record_event(delay=..., deliver_at=...)`` into a due time.

Checked when the event is recorded, before anything is staged, so a bad value fails the
call that passed it and leaves the unit of work (and its other events) as it was. A
``delay`` counts from the commit, on the database's clock (``outbox.Schedule``); the due
time computed here is the recording process's estimate of it.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from django.utils import timezone


def due_time(
    *, delay: Any = None, deliver_at: Any = None, now: datetime.datetime
) -> datetime.datetime | None:
    """The time the event is due, or ``None`` when it is due at once (an ordinary event).

    ``delay``: a ``timedelta`` or a number of seconds (``int``/``float``), never negative.
    ``deliver_at``: an aware ``datetime``; one in the past (or ``now``) is due at once,
    since time passes between computing a deadline and recording it. Not both.
    """
    if delay is not None and deliver_at is not None:
        raise TypeError(
            "record_event() got both delay and deliver_at; pass one of them: delay for "
            "'this long from now', deliver_at for 'at this time'."
        )
    if delay is not None:
        wait = seconds(delay)
        if wait < 0:
            raise ValueError(
                f"record_event() got a negative delay ({delay!r}): a delay is how long to "
                "wait from now and cannot be negative. Pass delay=0 (or no delay) for an "
                "event due at once, or deliver_at=<aware datetime> for a point in time "
                "(one already past is due at once)."
            )
        if wait == 0:
            return None
        try:
            return now + datetime.timedelta(seconds=wait)
        except OverflowError:
            raise ValueError(
                f"record_event() got delay={delay!r}, which ends past the largest date "
                "Python can hold; pass a shorter delay."
            ) from None
    if deliver_at is not None:
        if not isinstance(deliver_at, datetime.datetime):
            raise TypeError(
                "record_event() deliver_at must be an aware datetime.datetime, got "
                f"{type(deliver_at).__name__} ({deliver_at!r}). For a duration use delay=."
            )
        if timezone.is_naive(deliver_at):
            raise ValueError(
                f"record_event() got a naive deliver_at ({deliver_at.isoformat()}): without "
                "a time zone it could mean any instant. Pass an aware datetime, e.g. "
                "django.utils.timezone.make_aware(value) or datetime(..., tzinfo=UTC)."
            )
        return deliver_at if deliver_at > now else None
    return None


def seconds(delay: Any) -> float:
    """``delay`` in seconds; refuses what is not a duration (``bool``, strings, NaN...)."""
    if isinstance(delay, datetime.timedelta):
        return delay.total_seconds()
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise TypeError(
            "record_event() delay must be a datetime.timedelta or a number of seconds "
            f"(int or float), got {type(delay).__name__} ({delay!r}). For a point in time "
            "use deliver_at=<aware datetime>."
        )
    if not math.isfinite(delay):
        raise ValueError(
            f"record_event() got delay={delay!r}: a delay must be a finite number of "
            "seconds (or a datetime.timedelta)."
        )
    return float(delay)
