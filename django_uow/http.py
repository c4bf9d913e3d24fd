"""HTTP helpers for optimistic locking: ``ETag`` from the version, ``If-Match``, 409.

- ``etag_for(obj)`` is a strong entity tag naming the model, pk and version:
  ``"testapp.counter:7:3"``.
- ``@versioned_view(Model)`` (function views) and ``VersionedViewMixin`` (class-based
  views with ``get_object()``) send that ``ETag`` and evaluate the preconditions as RFC
  9110 section 13.2.2 orders them: an ``If-Match`` that names another version is **412
  Precondition Failed** (whatever the method); a matching ``If-None-Match`` (``*``
  included) is **304 Not Modified** on GET and HEAD and **412** on other methods (so
  ``If-None-Match: *`` on a PUT means "create only"). ``require_if_match=True`` answers
  unsafe requests without ``If-Match`` with **428 Precondition Required**. Header text is
  never echoed back, and a header longer than ``MAX_CONDITION_HEADER`` matches nothing.
- A ``ConcurrencyError`` escaping the view (a writer got in between the check and the
  save) becomes **409 Conflict** with a JSON body; ``@conflict_as_409`` and
  ``ConcurrencyErrorMiddleware`` do that for any view.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import get_object_or_404
from django.utils.http import parse_etags

from .exceptions import ConcurrencyError
from .locking.fields import get_version

__all__ = [
    "ConcurrencyErrorMiddleware",
    "VersionedViewMixin",
    "conflict_as_409",
    "conflict_response",
    "etag_for",
    "precondition_response",
    "versioned_view",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Longer ``If-Match`` / ``If-None-Match`` headers are not parsed: they match nothing.
MAX_CONDITION_HEADER = 8192

V = TypeVar("V", bound=Callable[..., HttpResponseBase])


def etag_for(obj: models.Model) -> str:
    """The strong ``ETag`` of a versioned object: ``"<app_label.model>:<pk>:<version>"``."""
    return f'"{obj._meta.label_lower}:{obj.pk}:{get_version(obj)}"'


def conflict_response(error: ConcurrencyError) -> JsonResponse:
    """409 Conflict for a stale write, with a JSON body a client can act on."""
    return JsonResponse(
        {
            "error": "conflict",
            "model": error.model_label,
            "pk": error.pk,
            "expected_version": error.expected_version,
            "current_version": error.actual_version,
            "detail": str(error),
        },
        status=409,
    )


class _Refused(Exception):
    """Carries a precondition response out of ``get_object()`` to ``dispatch()``."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def _tags(request: HttpRequest, name: str) -> list[str] | None:
    """The entity tags of header ``name``; ``None`` when absent; ``[]`` when unusable."""
    header = request.headers.get(name)
    if header is None:
        return None
    if len(header) > MAX_CONDITION_HEADER:
        return []
    return parse_etags(header)


def precondition_response(
    request: HttpRequest, obj: models.Model, *, require_if_match: bool = False
) -> HttpResponse | None:
    """The 304/412/428 response ``request``'s conditional headers call for, or ``None``.

    RFC 9110 section 13.2.2: ``If-Match`` first, compared strongly (a weak tag never
    matches); then ``If-None-Match``, compared weakly. OPTIONS and TRACE are never
    conditional.
    """
    if request.method in ("OPTIONS", "TRACE"):
        return None
    current = etag_for(obj)
    if_match = _tags(request, "If-Match")
    if if_match is not None and "*" not in if_match and current not in if_match:
        return _json(
            412,
            obj,
            error="precondition_failed",
            expected_version=_version_in(if_match, obj),
            detail=f"{obj._meta.label} pk={obj.pk!r} is at version {get_version(obj)}, "
            "not the version If-Match names. Fetch it again (ETag "
            f"{current}) and reapply your change.",
        )
    if_none_match = _tags(request, "If-None-Match")
    if if_none_match is not None and (
        "*" in if_none_match or current in [tag.removeprefix("W/") for tag in if_none_match]
    ):
        if request.method in ("GET", "HEAD"):
            response = HttpResponse(status=304)
            response["ETag"] = current
            return response
        return _json(
            412,
            obj,
            error="precondition_failed",
            expected_version=None,
            detail=f"{obj._meta.label} pk={obj.pk!r} exists (ETag {current}) and If-None-Match "
            "asked for a version other than it; nothing was changed.",
        )
    if if_match is None and require_if_match and request.method not in SAFE_METHODS:
        return _json(
            428,
            obj,
            error="precondition_required",
            detail=f"Send the request again with the header If-Match: {current}, the ETag "
            "of the version you read, so that it cannot overwrite a newer change.",
        )
    return None


def _json(status: int, obj: models.Model, **body: Any) -> JsonResponse:
    response = JsonResponse(
        {
            "error": body.pop("error"),
            "model": obj._meta.label,
            "pk": obj.pk,
            **body,
            "current_version": get_version(obj),
        },
        status=status,
    )
    response["ETag"] = etag_for(obj)
    return response


def _version_in(tags: list[str], obj: models.Model) -> int | None:
    prefix = f'"{obj._meta.label_lower}:{obj.pk}:'
    for tag in tags:
        if tag.startswith(prefix) and tag[len(prefix) : -1].isdigit():
            return int(tag[len(prefix) : -1])
    return None


def _with_etag(response: HttpResponseBase, obj: models.Model | None) -> HttpResponseBase:
    """Tag a successful response with the object's version after the view ran."""
    if (
        obj is not None
        and obj.pk is not None
        and 200 <= response.status_code < 300
        and response.status_code != 204
        and not response.has_header("ETag")
    ):
        response["ETag"] = etag_for(obj)
    return response


def conflict_as_409(view: V) -> V:
    """Turn a ``ConcurrencyError`` escaping ``view`` into a 409 JSON response."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return view(request, *args, **kwargs)
        except ConcurrencyError as error:
            return conflict_response(error)

    return wrapper  # type: ignore[return-value]


def versioned_view(
    model: type[models.Model] | models.QuerySet[Any],
    *,
    url_kwarg: str = "pk",
    lookup_field: str = "pk",
    require_if_match: bool = False,
) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """Load the object named by ``url_kwarg`` (404 if missing) and apply version preconditions.

    The view is called as ``view(request, obj, **other_url_kwargs)``. The response of a
    successful request carries the object's ``ETag`` after the view ran (so a PUT
    answers with the new version); a ``ConcurrencyError`` becomes a 409.
    """

    def decorator(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if url_kwarg not in kwargs:
                raise TypeError(
                    f"@versioned_view on {view.__qualname__}(): the URL pattern passes no "
                    f"{url_kwarg!r} argument. Name it <{url_kwarg}> in the pattern or pass "
                    "url_kwarg=... to the decorator."
                )
            obj = get_object_or_404(model, **{lookup_field: kwargs.pop(url_kwarg)})
            refused = precondition_response(request, obj, require_if_match=require_if_match)
            if refused is not None:
                return refused
            try:
                response = view(request, obj, *args, **kwargs)
            except ConcurrencyError as error:
                return conflict_response(error)
            return _with_etag(response, obj)

        return wrapper

    return decorator


class VersionedViewMixin:
    """Version preconditions for a class-based view built on ``SingleObjectMixin``.

    Put it before the view class. ``get_object()`` checks ``If-Match`` /
    ``If-None-Match`` against the loaded object; a successful response carries its
    ``ETag``; a ``ConcurrencyError`` becomes a 409.
    """

    require_if_match: bool = False
    request: HttpRequest

    def get_object(self, queryset: models.QuerySet[Any] | None = None) -> Any:
        obj = super().get_object(queryset)  # type: ignore[misc]
        refused = precondition_response(self.request, obj, require_if_match=self.require_if_match)
        if refused is not None:
            raise _Refused(refused)
        self._uow_etag_object = obj
        return obj

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            response: HttpResponseBase = super().dispatch(request, *args, **kwargs)  # type: ignore[misc]
        except _Refused as refused:
            return refused.response
        except ConcurrencyError as error:
            return conflict_response(error)
        return _with_etag(response, getattr(self, "_uow_etag_object", None))


class ConcurrencyErrorMiddleware:
    """Answer any ``ConcurrencyError`` a view lets escape with a 409 JSON response.

    Add ``"django_uow.http.ConcurrencyErrorMiddleware"`` to ``MIDDLEWARE``.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, ConcurrencyError):
            return conflict_response(exception)
        return None
