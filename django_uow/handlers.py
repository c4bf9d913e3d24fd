"""Event handlers: the ``@event_handler`` registry.

A handler is a function taking the typed event (and the ``Envelope`` when it has a
parameter named ``envelope``). This module only registers handlers, so it is safe to
import from any app's ``handlers.py``; running one (with its inbox row) is
``django_uow.inbox``. Handler modules named ``handlers`` in installed apps are imported
when Django is ready (``AppConfig.ready()``), so every process knows every handler and
the event classes those modules import.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules

from .events import DomainEvent, event_type_of

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
    #: Re-runs of the handler's unit on a conflict before the attempt counts as failed.
    retries: int = 0
    #: Runs the events of one aggregate in version order (``django_uow.ordering``).
    ordered: bool = False

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
    retries: int = 0,
    ordered: bool = False,
) -> Callable[[F], F]:
    """Register the decorated function as a consumer of ``event_class`` events.

    ``retries=N`` re-runs the handler's unit of work on a conflict (``ConcurrencyError``,
    a deadlock, a serialization failure) up to N times before the delivery attempt
    counts as failed.

    ``ordered=True`` runs the events of one aggregate in ``aggregate_version`` order,
    however many workers take them: a delivery waits until the previous event of its
    aggregate that this handler handles has succeeded (see ``django_uow.ordering``).
    """
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"@event_handler(retries={retries!r}): retries must be 0 or more.")
    if not isinstance(ordered, bool):
        raise TypeError(f"@event_handler(ordered={ordered!r}): ordered must be True or False.")
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
            retries=retries,
            ordered=ordered,
        )
        registry.register(handler)
        func.event_handler = handler  # type: ignore[attr-defined]
        return func

    return decorator


def handlers_for(event_type: str) -> list[Handler]:
    """The handlers registered for a stored event type name."""
    return registry.for_type(event_type)
