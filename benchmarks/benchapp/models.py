"""Models of the benchmark: plain baselines, a hand-written outbox, and django-uow's."""

from __future__ import annotations

import time
import uuid

from django.db import models

from django_uow import AggregateRoot, VersionedModel

from .events import AccountCredited, WalletDeposited, WalletTouched


class PlainRow(models.Model):
    """The business row of the baselines: no outbox, no version."""

    name = models.CharField(max_length=50)
    value = models.IntegerField(default=0)


class HandOutbox(models.Model):
    """A hand-written outbox table, the way one writes it without a library."""

    event_id = models.UUIDField(default=uuid.uuid4, unique=True)
    event_type = models.CharField(max_length=255)
    aggregate_id = models.CharField(max_length=255)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True)


class Account(AggregateRoot):
    """django-uow's aggregate: versioned, records events."""

    name = models.CharField(max_length=50)
    value = models.IntegerField(default=0)

    def credit(self, amount: int) -> None:
        self.value += amount
        self.record_event(AccountCredited(account_id=self.pk, amount=amount))


class PlainCounter(models.Model):
    name = models.CharField(max_length=50)
    value = models.IntegerField(default=0)


class VersionedCounter(VersionedModel):
    name = models.CharField(max_length=50)
    value = models.IntegerField(default=0)


class Wallet(AggregateRoot):
    """The hot aggregate and the soak's accounts: ``balance`` is the sum of its deposits."""

    name = models.CharField(max_length=50)
    balance = models.BigIntegerField(default=0)
    touches = models.BigIntegerField(default=0)

    def touch(self, token: str) -> None:
        self.touches += 1
        self.record_event(WalletTouched(wallet_id=self.pk, token=token))

    def deposit(self, amount: int) -> None:
        self.balance += amount
        self.record_event(WalletDeposited(wallet_id=self.pk, amount=amount))


class DepositApplied(models.Model):
    """The soak handler's effect, one row per event: ``runs`` counts the handler's runs."""

    event_id = models.UUIDField(unique=True)
    wallet_id = models.BigIntegerField()
    amount = models.BigIntegerField()
    runs = models.IntegerField(default=1)
    applied_at = models.DateTimeField()


class WalletLedger(models.Model):
    """The balance as the soak handler sees it; must equal ``Wallet.balance`` after a drain."""

    wallet_id = models.BigIntegerField(unique=True)
    balance = models.BigIntegerField(default=0)
    deposits = models.BigIntegerField(default=0)


class ConsumerEffect(models.Model):
    """What the consumer-throughput handler and the plain Celery task write: one row each.

    ``source`` says which of them wrote it; ``at`` (wall clock, seconds) when.
    """

    source = models.CharField(max_length=16)
    batch = models.CharField(max_length=32)
    seq = models.IntegerField()
    at = models.FloatField()


def write_effect(source: str, batch: str, seq: int) -> None:
    """The effect both consumers have: one INSERT, as a Django developer writes it."""
    ConsumerEffect.objects.create(source=source, batch=batch, seq=seq, at=time.time())
