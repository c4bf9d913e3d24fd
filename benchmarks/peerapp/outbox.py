"""jaiminho's way: a decorated function whose calls are stored (pickled with dill)."""

from __future__ import annotations

import json
from typing import Any

from jaiminho.send import save_to_outbox

_redis: Any = None


def _client() -> Any:
    global _redis
    if _redis is None:
        import redis
        from django.conf import settings

        _redis = redis.Redis.from_url(settings.REDIS_URL)
    return _redis


@save_to_outbox
def publish_account_credited(payload: dict[str, Any]) -> None:
    """Sends one event to a Redis stream; the relay calls it once per stored event."""
    _client().xadd("uow_bench:jaiminho", {"message": json.dumps(payload)})
