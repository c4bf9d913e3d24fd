"""Each registered handler with the delivery policy it runs under (``outbox_status``, the admin).

Read from the handler registry of this process and the settings, never the database:
what a worker started with the same code and settings would apply.
"""

from __future__ import annotations

from typing import Any

from ..conf import uow_settings
from ..delivery.handlers import Handler
from ..delivery.handlers import registry as handler_registry


def handler_policy(handler: Handler) -> dict[str, Any]:
    """One handler's options, the policy's values with the settings filled in."""
    return {
        "name": handler.name,
        "event_types": handler.known_types(),
        "queue": handler.queue or uow_settings.CELERY_QUEUE or None,
        "ordered": handler.ordered,
        "idempotent": handler.idempotent,
        "retries": handler.retries,
        **handler.policy.describe(),
    }


def handler_policies() -> list[dict[str, Any]]:
    """Every registered handler's ``handler_policy``, by name."""
    return [handler_policy(h) for h in sorted(handler_registry.all(), key=lambda h: h.name)]


def policy_text(policy: dict[str, Any]) -> str:
    """One line: ``max_attempts 3*, backoff 0.01-0.05s, ...``; ``*`` marks the handler's own
    values (the others are the settings')."""
    own = set(policy["own"])

    def mark(option: str) -> str:
        return "*" if option in own else ""

    base, cap = policy["backoff"]
    parts = [
        f"max_attempts {policy['max_attempts']}{mark('max_attempts')}",
        f"backoff {base:g}-{cap:g}s{mark('backoff')}",
        f"timeout {policy['timeout']:g}s*" if policy["timeout"] is not None else "no timeout",
    ]
    if policy["retry_on"]:
        parts.append(f"retry_on {', '.join(policy['retry_on'])}*")
    if policy["give_up_on"]:
        parts.append(f"give_up_on {', '.join(policy['give_up_on'])}*")
    if policy["queue"]:
        parts.append(f"queue {policy['queue']}")
    if policy["ordered"]:
        parts.append("ordered")
    return ", ".join(parts)
