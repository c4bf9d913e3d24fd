"""``EventContextMiddleware``: attribute every event recorded during a request.

Add it after ``AuthenticationMiddleware``::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django_uow.middleware.EventContextMiddleware",
        ...,
    ]

Every event recorded while the request runs carries ``actor`` (the user's pk, or
``None`` for an anonymous user) and ``request_id`` in its headers. The request id is the
incoming ``X-Request-ID`` when it is well formed (1-128 characters of letters, digits and
``._:-``), otherwise a new UUID; it is set on ``request.request_id`` and sent back in
the response's ``X-Request-ID``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase

from .events.audit import attributed_to

__all__ = ["EventContextMiddleware", "request_id_of"]

#: What an incoming ``X-Request-ID`` may look like; anything else is replaced.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id_of(request: HttpRequest) -> str:
    """The incoming ``X-Request-ID`` when well formed, else a new UUID."""
    incoming = request.headers.get("X-Request-ID", "")
    if REQUEST_ID.fullmatch(incoming):
        return incoming
    return str(uuid.uuid4())


def _actor_of(request: HttpRequest) -> Any:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    return user.pk


class EventContextMiddleware:
    """Put the acting user and a request id into the headers of every event recorded."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_of(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        with attributed_to(request_id=request_id, load_actor=lambda: _actor_of(request)):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
