"""The admin accepts only the lookups its own filters use.

Django's admin lets any ``?field__lookup=value`` in the address filter the list on a
local field: ``?last_error__contains=e`` or ``?payload__blob__startswith=x`` would run
an unindexed scan of the whole table. ``StrictLookupsMixin`` allows exactly the query
parameters of the admin's ``list_filter`` (field filters' ``expected_parameters()``,
list filters' ``parameter_name``) plus the admin's own (search, ordering, page...), and
refuses anything else *before* any query runs, with Django's usual redirect to ``?e=1``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import options
from django.contrib.admin.options import IS_POPUP_VAR, TO_FIELD_VAR
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.admin.views.main import ALL_VAR, ERROR_FLAG, ORDER_VAR, PAGE_VAR, SEARCH_VAR
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

#: Query parameters of the change list itself, never a lookup.
ADMIN_PARAMS = frozenset(
    {ALL_VAR, ORDER_VAR, PAGE_VAR, SEARCH_VAR, ERROR_FLAG, IS_POPUP_VAR, TO_FIELD_VAR}
    # Django 5.0+ shows facet counts with ?_facets (they are off in these admins).
    | {getattr(options, "IS_FACETS_VAR", "_facets"), "_changelist_filters"}
)


def filter_parameters(model_admin: Any, request: HttpRequest | None) -> set[str]:
    """Every query parameter the admin's ``list_filter`` reads. No query runs (field
    filters on choices and dates read nothing when built)."""
    names: set[str] = set()
    model = model_admin.model
    for entry in model_admin.get_list_filter(request):
        if isinstance(entry, type) and issubclass(entry, admin.SimpleListFilter):
            names.add(str(entry.parameter_name))
            continue
        if isinstance(entry, tuple | list):
            path, filter_class = entry[0], entry[1]
        else:
            path, filter_class = entry, None
        field = get_fields_from_path(model, path)[-1]
        if filter_class is None:
            # Field filters keep the request but read nothing from it when built.
            anyone: Any = request
            spec = admin.FieldListFilter.create(field, anyone, {}, model, model_admin, path)
        else:
            spec = filter_class(field, request, {}, model, model_admin, path)
        names.update(str(name) for name in spec.expected_parameters() if name)
    return names


class StrictLookupsMixin:
    """For a ``ModelAdmin``: refuse lookups its filters do not use."""

    def lookup_allowed(self, lookup: str, value: Any, request: Any = None) -> bool:
        # Django 4.2 calls it without the request; the filters do not need it.
        return lookup in filter_parameters(self, request)

    def refused_lookup(self, request: HttpRequest) -> str | None:
        """The first query parameter that is neither the admin's nor a filter's."""
        allowed = filter_parameters(self, request)
        for key in request.GET:
            if key not in ADMIN_PARAMS and key not in allowed:
                return key
        return None

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if self.refused_lookup(request) is not None:
            return HttpResponseRedirect(request.path + "?" + ERROR_FLAG + "=1")
        response: HttpResponse = super().changelist_view(  # type: ignore[misc]
            request, extra_context
        )
        return response
