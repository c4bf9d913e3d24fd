"""Optimistic locking for Django REST framework generic views.

``VersionedAPIViewMixin`` does for a DRF ``GenericAPIView`` what
``django_uow.http.VersionedViewMixin`` does for Django's class-based views: a successful
response carries the object's ``ETag`` (after the view ran, so a PUT answers with the new
version); ``If-Match`` / ``If-None-Match`` are evaluated as RFC 9110 section 13.2.2 says
(412, 304); ``require_if_match = True`` answers PUT, PATCH and DELETE without
``If-Match`` with 428; a ``ConcurrencyError`` raised while saving (a writer got in between
the check and the save) becomes 409. Bodies are JSON, rendered by the view's renderers.

    class CounterDetail(VersionedAPIViewMixin, generics.RetrieveUpdateDestroyAPIView):
        queryset = Counter.objects.all()
        serializer_class = CounterSerializer
        require_if_match = True

Needs ``djangorestframework`` (not a dependency of django-uow).
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse
from rest_framework.request import Request
from rest_framework.response import Response

from ..exceptions import ConcurrencyError
from ..http import conflict_response, etag_for, precondition_response

__all__ = ["VersionedAPIViewMixin"]


class _PreconditionRefused(Exception):
    """Carries the 304/412/428 answer from ``get_object()`` to ``handle_exception()``."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def _as_drf(response: HttpResponse) -> Response:
    data = json.loads(response.content) if response.content else None
    headers = {"ETag": response["ETag"]} if response.has_header("ETag") else None
    return Response(data, status=response.status_code, headers=headers)


class VersionedAPIViewMixin:
    """ETag, If-Match (412/428) and 409 for a DRF generic view; put it before the view class."""

    require_if_match: bool = False
    request: Request

    def get_object(self) -> Any:
        obj = super().get_object()  # type: ignore[misc]
        refused = precondition_response(self.request, obj, require_if_match=self.require_if_match)
        if refused is not None:
            raise _PreconditionRefused(refused)
        self._uow_etag_object = obj
        return obj

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _PreconditionRefused):
            return _as_drf(exc.response)
        if isinstance(exc, ConcurrencyError):
            return _as_drf(conflict_response(exc))
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        return response

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        obj = getattr(self, "_uow_etag_object", None)
        if (
            obj is not None
            and obj.pk is not None
            and 200 <= response.status_code < 300
            and response.status_code != 204
            and not response.has_header("ETag")
        ):
            response["ETag"] = etag_for(obj)
        return response
