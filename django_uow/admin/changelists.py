"""Change lists that stay fast on large tables: a capped count, and no heavy columns."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import (
    HttpRequest,
)
from django.utils.functional import cached_property

from ..ops.holds import wait_reasons

#: Lists count at most this many rows (one more means "more than"): an exact COUNT(*)
#: reads the whole table on every page view.
COUNT_CAP = 10_000


#: Columns the list never shows; they can be megabytes per row.
HEAVY_FIELDS = ("payload", "headers", "last_error")


class CappedPaginator(Paginator):  # type: ignore[type-arg]
    """Counts at most ``COUNT_CAP + 1`` rows, so a page view never counts the whole table."""

    @cached_property
    def count(self) -> int:
        object_list: Any = self.object_list
        if isinstance(object_list, QuerySet):
            return object_list[: COUNT_CAP + 1].count()
        return len(object_list)


class CappedChangeList(ChangeList):
    """Tells the pagination template when the count stopped at the cap."""

    count_capped = False
    count_cap = COUNT_CAP

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.count_cap = COUNT_CAP
        self.count_capped = self.result_count > COUNT_CAP


class LightDeliveryChangeList(CappedChangeList):
    """The list query leaves out the traceback (it can be many kilobytes per row)."""

    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any) -> QuerySet[Any]:
        return super().get_queryset(request, *args, **kwargs).defer("traceback")


class LightChangeList(CappedChangeList):
    """The list query leaves out the JSON and error columns; pending rows learn why
    they wait with two queries for the whole page."""

    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any) -> QuerySet[Any]:
        return super().get_queryset(request, *args, **kwargs).defer(*HEAVY_FIELDS)

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)
        reasons = wait_reasons(rows, self.queryset.db)
        for row in rows:
            row._uow_wait = reasons.get(row.pk)
        self.result_list = rows
