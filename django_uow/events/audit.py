"""Who caused an event: the acting user and the request, carried in every event's headers.

``EventContextMiddleware`` opens an attribution for each request; ``inbox.run_handler``
opens one from the delivered event's headers, so the events a handler records carry the
same ``actor`` and ``request_id`` (a chain of effects stays attributable to the person
who started it). Outside both, ``actor`` is ``None`` and there is no ``request_id``.

The actor is resolved lazily, on the first event recorded: a request that records no
event never loads its user for this.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_UNSET = object()


class Attribution:
    """The actor (resolved once, on demand) and the request id of what runs now."""

    def __init__(
        self,
        actor: Any = _UNSET,
        request_id: str | None = None,
        *,
        load_actor: Callable[[], Any] | None = None,
    ) -> None:
        self._actor = actor
        self._load_actor = load_actor
        self.request_id = request_id

    @property
    def actor(self) -> Any:
        if self._actor is _UNSET:
            self._actor = self._load_actor() if self._load_actor is not None else None
        return self._actor


_current: contextvars.ContextVar[Attribution | None] = contextvars.ContextVar(
    "django_uow_attribution", default=None
)


@contextmanager
def attributed_to(
    *,
    actor: Any = None,
    request_id: str | None = None,
    load_actor: Callable[[], Any] | None = None,
) -> Iterator[Attribution]:
    """Attribute the events recorded inside to ``actor`` (or ``load_actor()``) and a request."""
    attribution = Attribution(
        _UNSET if load_actor is not None else actor, request_id, load_actor=load_actor
    )
    token = _current.set(attribution)
    try:
        yield attribution
    finally:
        _current.reset(token)


def audit_headers() -> dict[str, Any]:
    """The headers every recorded event carries: ``actor`` always, ``request_id`` if any."""
    attribution = _current.get()
    if attribution is None:
        return {"actor": None}
    headers: dict[str, Any] = {"actor": attribution.actor}
    if attribution.request_id:
        headers["request_id"] = attribution.request_id
    return headers
