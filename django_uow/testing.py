"""Test helpers for projects using django-uow (pytest plugin and plain functions).

Enable the fixtures with ``pytest_plugins = ["django_uow.testing"]`` in a conftest.py.

- ``capture_events()``: a context manager collecting the events written to the outbox
  inside it (``events_staged``), as typed events plus the outbox rows.
- ``drain_outbox(using=...)``: relay everything due now, in this process, with the
  ``InlinePublisher`` (handlers run synchronously); returns the ``RelayResult``.
- ``simulate_conflict(instance)``: bump the stored version of a versioned row behind the
  instance's back, so its next save raises ``ConcurrencyError``.
- ``override_handler(handler, func)``: a context manager running ``func`` as a
  registered handler (given by name, or as the decorated function): same name, event
  type and options; the original is back on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from .delivery.handlers import Handler
from .delivery.handlers import registry as handler_registry
from .events.base import DomainEvent
from .locking.fields import version_field_of
from .signals import events_staged


@dataclass
class CapturedEvents:
    """What ``capture_events`` saw: typed events in record order, and their outbox rows."""

    rows: list[Any] = field(default_factory=list)

    @property
    def events(self) -> list[DomainEvent]:
        return [row.to_envelope().to_event() for row in self.rows]

    @property
    def types(self) -> list[str]:
        return [row.event_type for row in self.rows]

    def of_type(self, event_class: type[DomainEvent]) -> list[DomainEvent]:
        return [e for e in self.events if isinstance(e, event_class)]

    def __len__(self) -> int:
        return len(self.rows)


@contextmanager
def capture_events(using: str | None = None) -> Iterator[CapturedEvents]:
    """Collect the events staged inside the block (rolled-back ones included, if staged)."""
    captured = CapturedEvents()

    def receiver(sender: Any, events: Any, using: str | None = None, **kwargs: Any) -> None:
        if target is None or using == target:
            captured.rows.extend(events)

    target = using
    events_staged.connect(receiver, weak=False, dispatch_uid=f"django_uow_capture_{id(captured)}")
    try:
        yield captured
    finally:
        events_staged.disconnect(dispatch_uid=f"django_uow_capture_{id(captured)}")


def drain_outbox(using: str = "default", *, limit: int | None = None) -> Any:
    """Relay every due event now with the ``InlinePublisher``; return the ``RelayResult``."""
    # Imported here: pytest loads this plugin before django.setup(), so no models yet.
    from .publishers import InlinePublisher
    from .relay import relay_pending

    return relay_pending(using=using, limit=limit, publishers=[InlinePublisher()])


def simulate_conflict(instance: models.Model, *, by: int = 1) -> None:
    """Make ``instance`` stale: bump its row's version in the database, not in memory."""
    model = type(instance)
    using = instance._state.db or "default"
    name = version_field_of(model).attname
    updated = (
        model._base_manager.using(using)
        .filter(pk=instance.pk)
        .update(**{name: models.F(name) + by})
    )
    if not updated:
        raise LookupError(
            f"simulate_conflict: {model._meta.label} pk={instance.pk!r} is not in the database; "
            "save it first."
        )


@contextmanager
def override_handler(
    handler: str | Callable[..., Any], func: Callable[..., Any]
) -> Iterator[Handler]:
    """Run ``func`` as a registered handler inside the block; yield the original ``Handler``.

    ``handler`` is the handler's name or the function ``@event_handler`` registered. The
    name stays, so inbox rows and task ids are those of the real handler; swapping by name
    is not a second registration, which the naming rules would refuse.
    """
    name = handler if isinstance(handler, str) else _registered_name(handler)
    original = handler_registry.get(name)
    handler_registry.unregister(name)
    handler_registry.register(original.with_func(func))
    try:
        yield original
    finally:
        handler_registry.unregister(name)
        handler_registry.register(original)


def _registered_name(func: Callable[..., Any]) -> str:
    registered = getattr(func, "event_handler", None)
    if not isinstance(registered, Handler):
        raise TypeError(
            f"override_handler() takes a handler name or a function registered with "
            f"@event_handler; {func!r} is not one. Pass the handler's name instead "
            "(manage.py check lists them, django_uow.I100)."
        )
    return registered.name


# ----------------------------------------------------------------------- pytest plugin

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixtures
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def uow_events() -> Iterator[CapturedEvents]:
        """Events staged during the test."""
        with capture_events() as captured:
            yield captured

    @pytest.fixture
    def uow_drain() -> Any:
        """``drain_outbox`` as a fixture: call it to relay what the test committed."""
        return drain_outbox
