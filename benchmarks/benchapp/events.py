from __future__ import annotations

from dataclasses import dataclass

from django_uow import DomainEvent


@dataclass(frozen=True)
class AccountCredited(DomainEvent):
    account_id: int
    amount: int


@dataclass(frozen=True)
class AccountOpened(DomainEvent):
    name: str
    amount: int


@dataclass(frozen=True)
class LatencyProbe(DomainEvent):
    """Carries the wall-clock time of its commit, so the handler can measure the delay."""

    account_id: int
    committed_at: float
