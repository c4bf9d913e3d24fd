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


@dataclass(frozen=True)
class WalletTouched(DomainEvent):
    """Hot-aggregate probe: ``token`` names the commit, so the handler's time can be matched."""

    wallet_id: int
    token: str


@dataclass(frozen=True)
class ConsumerProbe(DomainEvent):
    """Consumer throughput: its handler writes one ``ConsumerEffect`` row, as the plain task."""

    batch: str
    seq: int


@dataclass(frozen=True)
class WalletDeposited(DomainEvent):
    """Soak event: its idempotent handler applies ``amount`` to the wallet's ledger."""

    wallet_id: int
    amount: int
