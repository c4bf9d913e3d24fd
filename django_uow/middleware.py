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

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
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
    """Put the acting user and a request id into the headers of every event recorded.

    In an async request (an async view under ASGI) events are recorded on the event
    loop's thread, where loading the user from the database is refused; there the user
    is loaded when the request starts (``request.auser()``, no query without a session),
    in a sync request at the first event.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        request_id = request_id_of(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        with attributed_to(request_id=request_id, load_actor=lambda: _actor_of(request)):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_id_of(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        auser = getattr(request, "auser", None)
        if auser is not None:
            user = await auser()
            actor = user.pk if user.is_authenticated else None
        else:  # Django < 5.0, or no AuthenticationMiddleware before this one
            actor = await sync_to_async(_actor_of)(request)
        with attributed_to(request_id=request_id, actor=actor):
            response: HttpResponseBase = await self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
