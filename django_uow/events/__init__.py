"""Events: ``DomainEvent`` and its type registry, the ``Envelope``, and the payload codecs.

``base`` holds the event classes and the envelope; ``encoding`` refuses at
``record_event()`` what some database would not store, ``decoding`` rebuilds typed events
from stored payloads; ``scheduling`` turns ``delay``/``deliver_at`` into a due time;
``audit`` and ``redaction`` carry who caused an event and hide what must not be shown.
The names below are this package's face (``from django_uow.events import Envelope``).
"""

from __future__ import annotations

from .base import (
    DomainEvent,
    Envelope,
    EventRegistry,
    StagedEvent,
    event_context,
    event_type_of,
    registry,
)

__all__ = [
    "DomainEvent",
    "Envelope",
    "EventRegistry",
    "StagedEvent",
    "event_context",
    "event_type_of",
    "registry",
]
