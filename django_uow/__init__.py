"""django-uow: a Unit of Work and a transactional outbox for the Django ORM.

Model classes are exported lazily, so ``import django_uow`` works before
``django.setup()`` while ``from django_uow import AggregateRoot`` works in a models.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import moved
from .delivery.handlers import event_handler
from .events.base import DomainEvent, Envelope, event_context
from .exceptions import (
    ConcurrencyError,
    EventDecodeError,
    EventSerializationError,
    HandlerFailed,
    HandlerTimeout,
    NoActiveUnitOfWork,
    PermanentFailure,
    PredecessorPending,
    RelayError,
    RetryAfter,
    UnitOfWorkContextError,
    UnitOfWorkError,
    UnitOfWorkTimeout,
    UnknownEventType,
)
from .locking.fields import VersionField
from .uow.decorator import unit_of_work
from .uow.unit_of_work import Repository, UnitOfWork, current_uow

if TYPE_CHECKING:
    from .models import AggregateRoot, OutboxEvent, ProcessedEvent, VersionedModel

__version__ = "0.1.0.dev0"

__all__ = [
    "AggregateRoot",
    "ConcurrencyError",
    "DomainEvent",
    "Envelope",
    "EventDecodeError",
    "EventSerializationError",
    "HandlerFailed",
    "HandlerTimeout",
    "NoActiveUnitOfWork",
    "OutboxEvent",
    "PermanentFailure",
    "PredecessorPending",
    "ProcessedEvent",
    "RelayError",
    "Repository",
    "RetryAfter",
    "UnitOfWork",
    "UnitOfWorkContextError",
    "UnitOfWorkError",
    "UnitOfWorkTimeout",
    "UnknownEventType",
    "VersionField",
    "VersionedModel",
    "current_uow",
    "event_context",
    "event_handler",
    "unit_of_work",
]

_LAZY = {
    "AggregateRoot": "django_uow.models",
    "OutboxEvent": "django_uow.models",
    "ProcessedEvent": "django_uow.models",
    "VersionedModel": "django_uow.models",
}


moved.install()  # the earlier module paths still import, with a DeprecationWarning


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'django_uow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
