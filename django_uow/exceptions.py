"""The error hierarchy of django-uow.

Every leaf says in its docstring when it is raised; every message names the thing
that went wrong (model, pk, event type, field) and what to do about it.
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, OperationalError
from django.db.transaction import TransactionManagementError


class UnitOfWorkError(Exception):
    """Base class of every error django-uow raises on purpose."""


class ConcurrencyError(UnitOfWorkError, DatabaseError):
    """Raised when a versioned save or delete finds the row changed or deleted since it was read.

    Nothing was written. Reload the object and apply the change again, or let
    ``@unit_of_work(retries=N)`` re-run the whole operation.
    """

    def __init__(
        self,
        model_label: str,
        pk: Any,
        expected_version: int | None,
        *,
        actual_version: int | None = None,
        deleted: bool = False,
        operation: str = "save",
    ) -> None:
        self.model_label = model_label
        self.pk = pk
        self.expected_version = expected_version
        self.actual_version = actual_version
        self.deleted = deleted
        if deleted:
            found = "the row no longer exists"
        elif actual_version is not None:
            found = f"the row is at version {actual_version}"
        else:
            found = "the row was changed or deleted"
        super().__init__(
            f"Cannot {operation} {model_label} pk={pk!r}: expected version {expected_version}, "
            f"but {found} (someone else wrote it first). Nothing was written; reload the object "
            "and apply the change again, or use @unit_of_work(retries=N) to re-run the operation."
        )


class UnitOfWorkTimeout(UnitOfWorkError, OperationalError):
    """Raised when a unit of work ran past its time limit (``timeout=``); it was rolled back.

    The database stopped a statement or a lock wait that went past the limit, or the
    unit itself found its time spent when it was about to commit. Nothing was written.
    Not retried as a conflict unless ``@unit_of_work(retries=N, retry_on=(UnitOfWorkTimeout,))``.
    """

    def __init__(self, unit: str, limit: float, reason: str) -> None:
        self.unit = unit
        self.limit = limit
        super().__init__(
            f"{unit} ran past its time limit of {limit:g}s ({reason}) and was rolled back; "
            "nothing was written. Move slow work (HTTP calls, email) out of the unit, into "
            "an event handler, or give it a larger timeout=."
        )


class NoActiveUnitOfWork(UnitOfWorkError, TransactionManagementError):
    """Raised when events would be lost because no ``UnitOfWork`` is active.

    Typically an aggregate with pending events is saved outside ``with UnitOfWork():``
    or ``@unit_of_work``.
    """


class UnitOfWorkContextError(UnitOfWorkError, TransactionManagementError):
    """Raised when a unit of work is used from where its transaction is not.

    A unit's transaction lives on one connection, on one thread: an ``async with``
    unit's on a thread of its own, driven by the asyncio task that opened it. Refused:
    another task (``gather``, ``create_task``) using or nesting in that unit; a sync
    ``with UnitOfWork()`` inside a coroutine; a sync unit and an async one interleaved
    (one left open while the other is entered or finishes); a unit used from another
    thread than its own. Nothing was written by the refused call.
    """


class EventSerializationError(UnitOfWorkError, TypeError):
    """Raised by ``record_event`` when an event field cannot be stored as JSON.

    Also for values one database stores and another refuses or alters: NaN and
    infinities (float or Decimal), NUL characters and lone surrogates in strings or keys,
    dict keys that JSON writes alike (``1`` and ``"1"``); and for what a column refuses:
    an event type or aggregate id longer than its column, a NUL or lone surrogate in a
    header (a correlation id). ``field`` is the event's field (``""`` for the event type,
    aggregate id and headers); ``path`` leads to the value inside it, e.g. ``lines[2].sku``.
    """

    def __init__(
        self,
        event_type: str,
        field: str,
        value: Any,
        reason: str = "",
        *,
        path: str = "",
        problem: str = "",
        advice: str = "",
        subject: str = "",
    ) -> None:
        self.event_type = event_type
        self.field = field
        self.path = path or field
        self.value = value
        if not problem:
            detail = f" ({reason})" if reason else ""
            problem = f"holds a {type(value).__name__} that cannot be serialized to JSON{detail}"
        advice = advice or (
            "Store a JSON-friendly value instead (str, int, float, bool, None, Decimal, UUID, "
            "date/datetime, or a list/dict of those), e.g. the pk instead of a model instance."
        )
        where = f"field {field!r}" if self.path == field else f"field {field!r}, at {self.path!r},"
        where = subject or where  # not a field: its event type, aggregate id or a header
        super().__init__(
            f"Event {event_type!r}: {where} {problem}. {advice} The event was not recorded."
        )


class UnknownEventType(UnitOfWorkError, LookupError):
    """Raised when a stored ``event_type`` names no registered ``DomainEvent`` class."""

    def __init__(self, event_type: str) -> None:
        self.event_type = event_type
        super().__init__(
            f"No DomainEvent class is registered under event type {event_type!r}. Import the "
            "module that defines it (e.g. from your AppConfig.ready()), or keep a class with "
            f"event_type = {event_type!r} after renaming it."
        )


class RelayError(UnitOfWorkError):
    """Raised when the relay cannot reach the database or a broker; raised ``from`` the cause."""


class DeliveriesNotRecorded(ConnectionError):
    """The broker took a batch's handler tasks, but their delivery rows could not be written.

    A task the broker then lost would have no row for the deadline sweep to find, so the
    batch is not acknowledged: the relay hands it back, as after a broker outage, and
    publishes it again (idempotent handlers run each delivery once).
    """


class BlockedByEarlierFailure(Exception):
    """Reported for an event not published because an earlier event of its aggregate failed.

    Publishers return it for the later events of a failed aggregate in one batch; the
    relay hands such events back untouched: their attempt is not spent.
    """

    def __init__(self, envelope: Any) -> None:
        super().__init__(
            f"not published: an earlier event of {envelope.aggregate_type} "
            f"{envelope.aggregate_id!r} failed in the same batch"
        )


class HandlerFailed(UnitOfWorkError):
    """Raised (by ``InlinePublisher``) when handler code raised; the original is ``__cause__``.

    Whatever the original's class, even a ``ConnectionError`` from the handler's own
    dependency, it is a handler failure: an attempt is spent and the error is stored. Only
    a publisher's own transport errors pause the relay.
    """

    def __init__(
        self,
        handler: str,
        original: BaseException,
        *,
        final: bool | None = None,
        retry_in: float | None = None,
    ) -> None:
        self.handler = handler
        self.original = original
        #: The handler's own policy decided: True a dead letter, False due again after
        #: ``retry_in`` seconds; None leaves it to the relay's ``MAX_ATTEMPTS``/``BACKOFF``.
        self.final = final
        self.retry_in = retry_in
        super().__init__(f"handler {handler} raised {type(original).__name__}")
        self.__cause__ = original


class PermanentFailure(UnitOfWorkError):
    """Raise from a handler or publisher to dead-letter an event now, without more retries."""


class RetryAfter(UnitOfWorkError):
    """Raise from a handler or publisher to retry an event after ``seconds``.

    The attempt still counts towards ``MAX_ATTEMPTS``.
    """

    def __init__(self, seconds: float, reason: str = "") -> None:
        self.seconds = float(seconds)
        super().__init__(reason or f"retry requested in {self.seconds:g}s")


class PredecessorPending(UnitOfWorkError):
    """An ordered handler's delivery must wait: the previous event of its aggregate that
    this handler handles has not succeeded yet (``@event_handler(..., ordered=True)``).

    Not a failure: no attempt is spent. ``predecessor_status`` is that delivery's status,
    or ``""`` when it has no delivery row yet.
    """

    def __init__(
        self, handler: str, event_id: Any, predecessor_id: Any, predecessor_status: str
    ) -> None:
        self.handler = handler
        self.event_id = event_id
        self.predecessor_id = predecessor_id
        self.predecessor_status = predecessor_status
        state = predecessor_status or "not run yet"
        super().__init__(
            f"Handler {handler} runs in aggregate order: waiting for event {predecessor_id} "
            f"of the same aggregate ({state}) to succeed first."
        )


class HandlerTimeout(UnitOfWorkError, TimeoutError):
    """Raised when a handler with ``@event_handler(timeout=s)`` returned after ``s`` seconds.

    Its unit of work is rolled back (the effect and the success mark with it) and the
    attempt counts as failed, retried by the handler's policy. Under Celery a handler
    that hangs is stopped sooner, by the task's soft time limit.
    """

    def __init__(self, handler: str, limit: float, elapsed: float) -> None:
        self.handler = handler
        self.limit = limit
        self.elapsed = elapsed
        super().__init__(
            f"handler {handler} ran for {elapsed:.2f}s, past its timeout of {limit:g}s; its "
            "unit of work was rolled back. Make the slow call faster or bounded (a client "
            "timeout), give the handler a larger timeout=, or its own queue and worker."
        )


class EventDecodeError(PermanentFailure, ValueError):
    """Raised when a stored payload does not fit its event class's field annotations.

    A permanent failure: the relay dead-letters the event at once instead of retrying a
    payload that can never decode. ``detail`` names the field, e.g. "payload field
    'amount' is not a valid Decimal: 'abc'".
    """

    def __init__(self, event_type: str, detail: str) -> None:
        self.event_type = event_type
        self.detail = detail
        super().__init__(
            f"Event {event_type!r}: {detail}. The stored payload does not fit the event "
            "class, so it is not retried. Fix what wrote it, or make the class accept it "
            "(convert older payloads in upcast()), then retry the event from the admin."
        )
