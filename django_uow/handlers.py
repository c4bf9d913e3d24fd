"""Event handlers: the ``@event_handler`` registry and idempotent execution.

A handler is a function taking the typed event (and the ``Envelope`` when it has a
parameter named ``envelope``). An idempotent handler (the default) runs in its own
transaction that first inserts ``(event_id, handler)`` into ``ProcessedEvent``; a
redelivered event finds the row and is skipped, so its effect happens once. Handler
modules named ``handlers`` in installed apps are imported on first use.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from .events import DomainEvent, Envelope, event_context, event_type_of
from .tracing import span

logger = logging.getLogger("django_uow.handlers")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Handler:
    """A registered handler; ``name`` is its stable identity (task ids, ``ProcessedEvent``)."""

    func: Callable[..., Any]
    event_class: type[DomainEvent]
    name: str
    idempotent: bool
    queue: str | None
    wants_envelope: bool

    @property
    def event_type(self) -> str:
        return event_type_of(self.event_class)


class HandlerRegistry:
    def __init__(self) -> None:
        self._by_name: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._discovered = False

    def register(self, handler: Handler) -> None:
        with self._lock:
            existing = self._by_name.get(handler.name)
            if existing is not None and not _same_function(existing.func, handler.func):
                raise ImproperlyConfigured(
                    f"Two event handlers are named {handler.name!r}: "
                    f"{_qualname(existing.func)} and {_qualname(handler.func)}. Pass a unique "
                    "name=... to @event_handler (the name identifies the handler in task ids "
                    "and in ProcessedEvent, so keep it stable)."
                )
            self._by_name[handler.name] = handler

    def unregister(self, name: str) -> None:
        with self._lock:
            self._by_name.pop(name, None)

    def autodiscover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        from django.utils.module_loading import autodiscover_modules

        autodiscover_modules("handlers")

    def for_type(self, event_type: str) -> list[Handler]:
        self.autodiscover()
        return [h for h in self._by_name.values() if h.event_type == event_type]

    def get(self, name: str) -> Handler:
        self.autodiscover()
        try:
            return self._by_name[name]
        except KeyError:
            raise LookupError(
                f"No event handler is registered under the name {name!r}. Make sure the "
                "module defining it is imported in this process (a `handlers.py` module in an "
                "installed app is imported automatically), or that it was not renamed."
            ) from None

    def all(self) -> list[Handler]:
        self.autodiscover()
        return list(self._by_name.values())


def _qualname(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    # A re-imported module (autoreload) defines the same function again: the newest wins.
    return a is b or _qualname(a) == _qualname(b)


registry = HandlerRegistry()


def event_handler(
    event_class: type[DomainEvent],
    *,
    idempotent: bool = True,
    name: str | None = None,
    queue: str | None = None,
) -> Callable[[F], F]:
    """Register the decorated function as a consumer of ``event_class`` events."""
    if not (isinstance(event_class, type) and issubclass(event_class, DomainEvent)):
        raise TypeError(
            f"@event_handler takes a DomainEvent subclass, got {event_class!r}; "
            "write @event_handler(OrderPlaced)."
        )

    def decorator(func: F) -> F:
        params = inspect.signature(func).parameters
        handler = Handler(
            func=func,
            event_class=event_class,
            name=name or _qualname(func),
            idempotent=idempotent,
            queue=queue,
            wants_envelope="envelope" in params
            or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()),
        )
        registry.register(handler)
        func.event_handler = handler  # type: ignore[attr-defined]
        return func

    return decorator


def handlers_for(event_type: str) -> list[Handler]:
    """The handlers registered for a stored event type name."""
    return registry.for_type(event_type)


def _claim_processed(handler: Handler, envelope: Envelope, using: str) -> bool:
    """Insert the inbox row; False when this (event, handler) already had its effect."""
    from .models import ProcessedEvent

    connection = connections[using]
    # INSERT ... ON CONFLICT DO NOTHING RETURNING: PostgreSQL, SQLite 3.35+.
    if connection.vendor == "postgresql" or (
        connection.vendor == "sqlite" and connection.features.can_return_rows_from_bulk_insert
    ):
        table = connection.ops.quote_name(ProcessedEvent._meta.db_table)
        field = ProcessedEvent._meta.get_field("event_id")
        processed_at = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (event_id, handler, processed_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (event_id, handler) DO NOTHING RETURNING id",
                [
                    field.get_db_prep_value(envelope.event_id, connection),
                    handler.name,
                    processed_at,
                ],
            )
            return cursor.fetchone() is not None
    try:
        with transaction.atomic(using=using):
            ProcessedEvent.objects.using(using).create(
                event_id=envelope.event_id, handler=handler.name
            )
    except IntegrityError:
        return False
    return True


def run_handler(handler: Handler, envelope: Envelope, *, using: str | None = None) -> bool:
    """Call ``handler`` for ``envelope``; return False when skipped as already processed.

    Runs inside ``event_context`` so events the handler records point back to this one.
    An idempotent handler runs inside a ``UnitOfWork`` that also holds its inbox row:
    if it raises, neither its effect nor the row is kept and a redelivery runs it again.
    """
    from .models import ProcessedEvent
    from .unit_of_work import UnitOfWork

    event = envelope.to_event()
    kwargs = {"envelope": envelope} if handler.wants_envelope else {}
    context = event_context(
        correlation_id=envelope.correlation_id or str(envelope.event_id),
        causation_id=str(envelope.event_id),
    )
    trace = span(
        f"handle {envelope.event_type}",
        envelope.headers,
        kind="consumer",
        handler=handler.name,
        event_id=str(envelope.event_id),
        aggregate_type=envelope.aggregate_type or None,
        aggregate_id=envelope.aggregate_id or None,
    )
    with context, trace:
        if not handler.idempotent:
            handler.func(event, **kwargs)
            return True
        db = using or router.db_for_write(ProcessedEvent)
        with UnitOfWork(using=db):
            if not _claim_processed(handler, envelope, db):
                logger.info(
                    "Skipped event %s (%s) of %s %s for handler %s: already processed",
                    envelope.event_id,
                    envelope.event_type,
                    envelope.aggregate_type,
                    envelope.aggregate_id,
                    handler.name,
                )
                return False
            handler.func(event, **kwargs)
    return True
