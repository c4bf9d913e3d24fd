"""Events that only ``tests.testapp.handlers`` imports.

A fresh process knows them only if handler modules are discovered when the app is
ready: nothing else (models, admin, settings) imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from django_uow import DomainEvent


@dataclass(frozen=True)
class AuditRequested(DomainEvent):
    event_type = "audit.requested"

    order_id: int
