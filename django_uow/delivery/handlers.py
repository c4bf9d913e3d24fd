"""Event handlers: the ``@event_handler`` registry.

A handler is a function taking the typed event (and the ``Envelope`` when it has a
parameter named ``envelope``). This module only registers handlers, so it is safe to
import from any app's ``handlers.py``; running one (with its inbox row) is
``django_uow.inbox``. Handler modules named ``handlers`` in installed apps are imported
when Django is ready (``AppConfig.ready()``), so every process knows every handler and
the event classes those modules import. The naming rules (what gets a default name, when
a name registered again replaces its handler) are ``django_uow.names``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from importlib import import_module
from typing import Any, TypeVar

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import module_has_submodule

from ..events.base import DomainEvent, event_type_of
from . import names

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
    #: False when ``name`` is the default ``module.qualname``: such a name stands for
    #: one function, so a second function made from the same code may not take it.
    explicit_name: bool = True

    @property
    def event_type(self) -> str:
        return event_type_of(self.event_class)

    def with_func(self, func: Callable[..., Any]) -> Handler:
        """This handler (same name, event type and options) running ``func`` instead."""
        return replace(self, func=func, wants_envelope=wants_envelope(func))


class HandlerRegistry:
    def __init__(self) -> None:
        self._by_name: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._discovered = False

    def register(self, handler: Handler) -> None:
        with self._lock:
            existing = self._by_name.get(handler.name)
            if existing is not None:
                problem = names.conflict(
                    handler.name,
                    (existing.func, existing.event_type),
                    (handler.func, handler.event_type),
                    explicit=handler.explicit_name,
                )
                if problem is not None:
                    raise ImproperlyConfigured(problem)
            self._by_name[handler.name] = handler

    def unregister(self, name: str) -> None:
        with self._lock:
            self._by_name.pop(name, None)

    def autodiscover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        # Every installed app's ``handlers`` module, but django-uow's own: its earlier
        # ``django_uow.handlers`` path now only answers with a deprecation warning.
        for config in apps.get_app_configs():
            if config.name != "django_uow" and module_has_submodule(config.module, "handlers"):
                import_module(f"{config.name}.handlers")

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

    ``name`` defaults to ``module.qualname`` for a function or class; lambdas,
    ``functools.partial`` objects, bound methods and callable objects need one
    (``ImproperlyConfigured`` otherwise), see ``django_uow.names``.
    """
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"@event_handler(retries={retries!r}): retries must be 0 or more.")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TypeError(
            f"@event_handler(name={name!r}): name must be a non-empty string, stable across "
            "deploys (it identifies the handler in task ids and ProcessedEvent rows)."
        )
    if not isinstance(ordered, bool):
        raise TypeError(f"@event_handler(ordered={ordered!r}): ordered must be True or False.")
    if not (isinstance(event_class, type) and issubclass(event_class, DomainEvent)):
        raise TypeError(
            f"@event_handler takes a DomainEvent subclass, got {event_class!r}; "
            "write @event_handler(OrderPlaced)."
        )

    def decorator(func: F) -> F:
        handler = Handler(
            func=func,
            event_class=event_class,
            name=name if name is not None else names.default_name(func, event_class.__name__),
            idempotent=idempotent,
            queue=queue,
            wants_envelope=wants_envelope(func),
            retries=retries,
            ordered=ordered,
            explicit_name=name is not None,
        )
        registry.register(handler)
        with suppress(AttributeError, TypeError):  # a bound method, an object with __slots__
            func.event_handler = handler  # type: ignore[attr-defined]
        return func

    return decorator


def wants_envelope(func: Callable[..., Any]) -> bool:
    """True when ``func`` takes the ``Envelope`` too (a parameter ``envelope`` or ``**kwargs``)."""
    params = inspect.signature(func).parameters
    return "envelope" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def handlers_for(event_type: str) -> list[Handler]:
    """The handlers registered for a stored event type name."""
    return registry.for_type(event_type)
