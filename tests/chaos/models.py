"""The chaos trial's tables: the aggregate writers change, and what consumers leave behind.

``Effect`` has no unique constraint on purpose: an effect that happens twice must be a
second row the ledger can count, not an error that hides it. ``Arrival`` records every
handler task a worker starts (``tests.chaos.arrivals``), so the ledger can tell how often
each delivery reached a consumer.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from django_uow import AggregateRoot

from .events import Flaky, Sequenced, Ticked


class Account(AggregateRoot):
    name = models.CharField(max_length=50, unique=True)
    units = models.IntegerField(default=0)

    def commit_unit(self, token: str, *, work_ms: int = 0, fail_times: int | None = None) -> int:
        """Count one unit and record its events; returns how many it recorded."""
        self.units += 1
        self.record_event(Ticked(account_id=self.pk, token=token, work_ms=work_ms))
        self.record_event(Sequenced(account_id=self.pk, token=token, seq=self.units))
        if fail_times is None:
            return 2
        self.record_event(Flaky(account_id=self.pk, token=token, fail_times=fail_times))
        return 3


class Effect(models.Model):
    """One handler effect; ``id`` order is the order the effects were written in."""

    event_id = models.UUIDField()
    handler = models.CharField(max_length=100)
    aggregate_id = models.CharField(max_length=50)
    aggregate_version = models.BigIntegerField(null=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["event_id", "handler"], name="chaos_effect_event_idx")]


class Arrival(models.Model):
    """A handler task a worker started: ``retries`` is Celery's count (0: a fresh publish)."""

    event_id = models.UUIDField()
    handler = models.CharField(max_length=100)
    retries = models.IntegerField(default=0)
    waits = models.IntegerField(default=0)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["event_id", "handler"], name="chaos_arrival_event_idx")]
