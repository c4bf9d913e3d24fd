"""The chaos trial's events: each unit of work on an account records some of them."""

from __future__ import annotations

from dataclasses import dataclass

from django_uow import DomainEvent


@dataclass(frozen=True)
class Ticked(DomainEvent):
    """Handled by an idempotent handler that sleeps ``work_ms`` (a slow consumer) first."""

    event_type = "chaos.ticked"

    account_id: int
    token: str
    work_ms: int = 0


@dataclass(frozen=True)
class Sequenced(DomainEvent):
    """Handled by an ordered handler: its effects must follow the account's versions."""

    event_type = "chaos.sequenced"

    account_id: int
    token: str
    seq: int = 0


@dataclass(frozen=True)
class Flaky(DomainEvent):
    """Its handler raises on its first ``fail_times`` runs, then has its effect."""

    event_type = "chaos.flaky"

    account_id: int
    token: str
    fail_times: int = 0
