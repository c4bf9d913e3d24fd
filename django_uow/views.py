"""``health``: a JSON health endpoint for load balancers and Kubernetes probes.

    # urls.py
    from django_uow.views import health
    urlpatterns = [path("health/outbox/", health)]

It answers 200 with the outbox and handler-delivery numbers
(``django_uow.health.outbox_health``: one statement), or 503 when a
``DJANGO_UOW["HEALTH"]`` threshold is crossed (``MAX_LAG`` seconds of relay lag,
``MAX_FAILED`` dead letters: failed events plus failed handler deliveries,
``MAX_CONSUMER_LAG`` seconds of consumer lag) or the database cannot be read. It shows
counts and ages only, never payloads; it needs no login.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .conf import uow_settings
from .ops.health import OutboxHealth, outbox_health
from .retry import describe

__all__ = ["health"]


def problems_of(numbers: OutboxHealth, thresholds: dict[str, Any]) -> list[str]:
    """What crosses the configured thresholds, in words; empty when healthy."""
    found = []
    max_lag = thresholds.get("MAX_LAG")
    if max_lag is not None and numbers.lag_seconds > max_lag:
        found.append(
            f"relay lag {numbers.lag_seconds:.1f}s is over MAX_LAG {max_lag:g}s "
            f"({numbers.pending} pending)"
        )
    max_failed = thresholds.get("MAX_FAILED")
    # A handler's dead letter leaves its event dispatched: count both kinds.
    if max_failed is not None and numbers.dead_letters > max_failed:
        found.append(
            f"{numbers.dead_letters} dead letter(s) ({numbers.failed} failed event(s), "
            f"{numbers.deliveries_failed} failed handler delivery(ies)) is over "
            f"MAX_FAILED {max_failed}"
        )
    max_consumer_lag = thresholds.get("MAX_CONSUMER_LAG")
    if max_consumer_lag is not None and numbers.consumer_lag_seconds > max_consumer_lag:
        found.append(
            f"consumer lag {numbers.consumer_lag_seconds:.1f}s is over MAX_CONSUMER_LAG "
            f"{max_consumer_lag:g}s ({numbers.deliveries_owed} handler deliveries owed, "
            f"{numbers.deliveries_blocked} blocked)"
        )
    return found


@never_cache
@require_safe
def health(request: HttpRequest, using: str = DEFAULT_DB_ALIAS) -> JsonResponse:
    """200 with the outbox and delivery numbers, or 503 past a ``HEALTH`` threshold or
    without a database."""
    try:
        numbers = outbox_health(using)
    except DatabaseError as exc:
        return JsonResponse(
            {
                "status": "unavailable",
                "database": using,
                "error": f"cannot read the outbox: {describe(exc, 500)}",
            },
            status=503,
        )
    problems = problems_of(numbers, uow_settings.HEALTH)
    return JsonResponse(
        {
            "status": "unhealthy" if problems else "ok",
            "database": using,
            "problems": problems,
            **numbers.as_dict(),
        },
        status=503 if problems else 200,
    )
