"""The module paths of the earlier, flat layout, kept importable with a warning.

``import django_uow.handlers`` (or ``from django_uow.deliveries import consumer_lag``)
still works: a finder on ``sys.meta_path`` answers each old path with the module that
now holds the code, under both names, and raises a ``DeprecationWarning`` saying where it
went. One table instead of a shim file per module keeps the package's tree as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: Old module (under ``django_uow``) -> where it lives now.
MOVED: dict[str, str] = {
    "admin_deadletters": "admin.dead_letters",
    "admin_locking": "admin.locking",
    "admin_lookups": "admin.lookups",
    "audit": "events.audit",
    "brokers": "publishers.connections",
    "celery_batch": "publishers.celery_messages",
    "deadletters": "ops.deadletters",
    "decoding": "events.decoding",
    "decorator": "uow.decorator",
    "deliveries": "delivery.rows",
    "delivery_health": "delivery.lag",
    "encoding": "events.encoding",
    "fields": "locking.fields",
    "flush": "uow.flush",
    "handlers": "delivery.handlers",
    "health": "ops.health",
    "inbox": "delivery.running",
    "jetstream": "publishers.nats",
    "metrics": "contrib.prometheus",
    "names": "delivery.names",
    "ordering": "delivery.ordering",
    "rabbitmq": "publishers.rabbitmq",
    "redaction": "events.redaction",
    "relay.heartbeat": "relay.lease",
    "relay.rows": "relay.claimed",
    "relay.statements": "relay.claims",
    "scheduling": "events.scheduling",
    "status": "ops.status",
    "timeouts": "db.timeouts",
    "tracking": "uow.journal",
    "unit_of_work": "uow.unit_of_work",
    "waiting": "ops.holds",
}

PACKAGE = "django_uow"


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec: Any) -> ModuleType:
        warnings.warn(
            f"{self.old} moved to {self.new}; import it from there (the old path goes in "
            "a later release).",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        return None  # already executed under its new name


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of ``MOVED`` (and nothing else)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        prefix = PACKAGE + "."
        if not fullname.startswith(prefix) or fullname[len(prefix) :] not in MOVED:
            return None
        new = prefix + MOVED[fullname[len(prefix) :]]
        return importlib.util.spec_from_loader(fullname, _MovedLoader(fullname, new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
