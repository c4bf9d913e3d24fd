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
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from importlib import import_module
from typing import Any, TypeVar

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import module_has_submodule

from ..events.base import DomainEvent, event_type_of
from ..events.base import registry as event_types
from ..exceptions import UnknownEventType
from . import names
from .policy import DEFAULT, Policy, build

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Handler:
    """A registered handler; ``name`` is its stable identity (task ids, ``ProcessedEvent``).

    It takes the events of each class in ``event_classes`` and of every subclass of
    one, including subclasses defined after it was registered.
    """

    func: Callable[..., Any]
    event_classes: tuple[type[DomainEvent], ...]
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
    #: Attempts, backoff, time limit and which errors to retry (``delivery.policy``).
    policy: Policy = DEFAULT

    @property
    def event_class(self) -> type[DomainEvent]:
        """The first event class it takes (the only one for most handlers)."""
        return self.event_classes[0]

    @property
    def event_type(self) -> str:
        """The stored type names of the classes it was declared for, comma-separated."""
        return ", ".join(self.declared_types())

    def declared_types(self) -> tuple[str, ...]:
        """The stored type names of the classes named in ``@event_handler(...)``."""
        return tuple(event_type_of(cls) for cls in self.event_classes)

    def handles_class(self, cls: type[DomainEvent]) -> bool:
        """True for an event class it takes: one it names, or a subclass of one."""
        return issubclass(cls, self.event_classes)

    def handles(self, event_type: str) -> bool:
        """True for a stored event type it takes (a type this process does not know is
        taken only when it names it)."""
        if event_type in self.declared_types():
            return True
        try:
            return self.handles_class(event_types.get(event_type))
        except UnknownEventType:
            return False

    def known_types(self) -> list[str]:
        """Every stored type name it takes that this process knows, sorted: its classes
        and their registered subclasses (what the outbox is searched for)."""
        known = {event_type_of(cls) for cls in event_types.classes() if self.handles_class(cls)}
        return sorted(known | set(self.declared_types()))

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
        """The handlers that take ``event_type``: named for it, or for a base class of it."""
        self.autodiscover()
        return [h for h in self._by_name.values() if h.handles(event_type)]

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
    *event_classes: type[DomainEvent] | Sequence[type[DomainEvent]],
    idempotent: bool = True,
    name: str | None = None,
    queue: str | None = None,
    retries: int = 0,
    ordered: bool = False,
    max_attempts: int | None = None,
    backoff: tuple[float, float] | None = None,
    timeout: float | None = None,
    retry_on: type[BaseException] | Sequence[type[BaseException]] = (),
    give_up_on: type[BaseException] | Sequence[type[BaseException]] = (),
) -> Callable[[F], F]:
    """Register the decorated function as a consumer of events of ``event_classes``.

    ``@event_handler(A)``, ``@event_handler(A, B, C)`` or ``@event_handler([A, B])``; a
    class also brings every subclass of it, including subclasses defined later.

    ``retries=N`` re-runs the handler's unit of work on a conflict (``ConcurrencyError``,
    a deadlock, a serialization failure) up to N times before the delivery attempt
    counts as failed.

    ``ordered=True`` runs the events of one aggregate in ``aggregate_version`` order,
    however many workers take them, across every event type the handler takes: a
    delivery waits until the previous such event of its aggregate has succeeded (see
    ``django_uow.delivery.ordering``).

    ``max_attempts``, ``backoff`` (base, cap seconds), ``timeout`` (seconds: Celery's
    soft time limit for the task, and the deadline of the handler's unit of work),
    ``retry_on`` and ``give_up_on`` (exception classes) are this handler's own delivery
    policy; left out, the settings ``MAX_ATTEMPTS`` and ``BACKOFF`` apply
    (``django_uow.delivery.policy``). ``queue`` is the Celery queue of its tasks
    (default ``CELERY_QUEUE``).

    ``name`` defaults to ``module.qualname`` for a function or class; lambdas,
    ``functools.partial`` objects, bound methods and callable objects need one
    (``ImproperlyConfigured`` otherwise), see ``django_uow.delivery.names``.
    """
    classes = _event_classes(event_classes)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"@event_handler(retries={retries!r}): retries must be 0 or more.")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TypeError(
            f"@event_handler(name={name!r}): name must be a non-empty string, stable across "
            "deploys (it identifies the handler in task ids and ProcessedEvent rows)."
        )
    if not isinstance(ordered, bool):
        raise TypeError(f"@event_handler(ordered={ordered!r}): ordered must be True or False.")
    if not isinstance(idempotent, bool):
        raise TypeError(
            f"@event_handler(idempotent={idempotent!r}): idempotent must be True or False."
        )
    if queue is not None and (not isinstance(queue, str) or not queue.strip()):
        raise TypeError(
            f"@event_handler(queue={queue!r}): queue is the name of a Celery queue (a "
            "non-empty string), or None for CELERY_QUEUE."
        )
    policy = build(
        max_attempts=max_attempts,
        backoff=backoff,
        timeout=timeout,
        retry_on=retry_on,
        give_up_on=give_up_on,
    )

    def decorator(func: F) -> F:
        if not callable(func):
            raise TypeError(
                f"@event_handler(...) decorates a callable (a function, a partial, an "
                f"object with __call__), got {func!r}."
            )
        handler = Handler(
            func=func,
            event_classes=classes,
            name=name if name is not None else names.default_name(func, classes[0].__name__),
            idempotent=idempotent,
            queue=queue,
            wants_envelope=wants_envelope(func),
            retries=retries,
            ordered=ordered,
            explicit_name=name is not None,
            policy=policy,
        )
        registry.register(handler)
        with suppress(AttributeError, TypeError):  # a bound method, an object with __slots__
            func.event_handler = handler  # type: ignore[attr-defined]
        return func

    return decorator


def _event_classes(given: tuple[Any, ...]) -> tuple[type[DomainEvent], ...]:
    """The event classes of ``@event_handler(A, B)`` or ``@event_handler([A, B])``."""
    if len(given) == 1 and isinstance(given[0], list | tuple | set | frozenset):
        given = tuple(given[0])
    if not given:
        raise TypeError(
            "@event_handler needs the event classes it takes: write @event_handler(OrderPlaced) "
            "or @event_handler(SeatsReserved, SeatsReleased)."
        )
    classes: list[type[DomainEvent]] = []
    for position, item in enumerate(given, 1):
        if not (isinstance(item, type) and issubclass(item, DomainEvent)):
            if callable(item) and not isinstance(item, type):
                hint = (
                    "; it looks like @event_handler was used without its event classes: "
                    "write @event_handler(OrderPlaced)"
                )
            elif isinstance(item, list | tuple | set | frozenset):
                hint = "; pass the classes one by one or as one list, not nested lists"
            else:
                hint = "; write @event_handler(OrderPlaced)"
            raise TypeError(
                f"@event_handler takes DomainEvent subclasses, got {item!r} (argument "
                f"{position}){hint}."
            )
        if item is DomainEvent:
            raise TypeError(
                "@event_handler(DomainEvent) would take every event of the project: name "
                "the event classes, or a base class of your own that they share."
            )
        if item not in classes:
            classes.append(item)
    return tuple(classes)


def wants_envelope(func: Callable[..., Any]) -> bool:
    """True when ``func`` takes the ``Envelope`` too (a parameter ``envelope`` or ``**kwargs``)."""
    params = inspect.signature(func).parameters
    return "envelope" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def handlers_for(event_type: str) -> list[Handler]:
    """The handlers registered for a stored event type name."""
    return registry.for_type(event_type)
