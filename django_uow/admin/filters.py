"""The admin's list filters and search: choices from code, exact matches on indexed columns.

No filter runs ``SELECT DISTINCT`` over the table to list its choices: event types come
from the type registry, handlers from the handler event_types.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.apps import apps
from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import (
    HttpRequest,
)
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..delivery.handlers import registry as handler_registry
from ..events.base import registry as event_types
from ..models import AggregateRoot, OutboxEvent
from ..ops.holds import not_scheduled_for_later

Status = OutboxEvent.Status
#: The admin's name for pending events recorded with a delay and not due yet.
SCHEDULED = "scheduled"


def aggregate_types() -> list[str]:
    """``app_label.model`` of every installed aggregate: the values events can carry."""
    return sorted(m._meta.label_lower for m in apps.get_models() if issubclass(m, AggregateRoot))


def header_match(header: str, value: str) -> Q:
    """Events whose audit ``header`` is ``value`` (a user pk is stored as a number)."""
    key = f"headers__{header}"
    if value == "none":  # the header is null, or absent
        return Q(**{key: None}) | Q(**{f"{key}__isnull": True})
    match = Q(**{key: value})
    if value.isdigit():
        match |= Q(**{key: int(value)})
    return match


#: Search prefixes for the audit headers: ``actor:7``, ``request:<id>``.
HEADER_SEARCHES = {"actor": "actor", "request": "request_id"}


def search_filter(term: str) -> Q:
    """Exact-match search: a UUID hits the unique ``event_id`` index, anything else the
    ``(aggregate_type, aggregate_id)`` index; ``app_label.model:id`` names both;
    ``actor:7`` and ``request:<id>`` match the audit headers."""
    term = term.strip()
    label, sep, agg_id = term.partition(":")
    if sep and label in HEADER_SEARCHES and agg_id:
        return header_match(HEADER_SEARCHES[label], agg_id.strip())
    if sep and "." in label and agg_id:
        return Q(aggregate_type=label.lower(), aggregate_id=agg_id)
    ids = {term}
    event_q = Q(pk__in=[])
    try:
        parsed = uuid.UUID(term)
    except ValueError:
        pass
    else:
        event_q = Q(event_id=parsed)
        ids.add(str(parsed))
    # Naming the leading column lets the composite index serve an aggregate_id lookup.
    aggregate_q = Q(aggregate_type__in=aggregate_types(), aggregate_id__in=sorted(ids))
    return event_q | aggregate_q


class EventTypeFilter(admin.SimpleListFilter):
    """Choices from the event registry, so the sidebar costs no query."""

    title = _("event type")
    parameter_name = "event_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:

        return [(name, name) for name in event_types.names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(event_type=value) if value else queryset


class StatusFilter(admin.SimpleListFilter):
    """The stored statuses, with scheduled events (pending, not due yet) apart from pending.

    Keeps the ``status__exact`` parameter of Django's field filter, so links stay valid.
    """

    title = _("status")
    parameter_name = "status__exact"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            (Status.PENDING.value, _("pending (due or backing off)")),
            (SCHEDULED, _("scheduled (not due yet)")),
            (Status.DISPATCHED.value, Status.DISPATCHED.label),
            (Status.FAILED.value, Status.FAILED.label),
            (Status.DISCARDED.value, Status.DISCARDED.label),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        now = timezone.now()
        if value == SCHEDULED:
            return queryset.filter(status=Status.PENDING, available_at__gt=now, deliver_at__gt=now)
        if value == Status.PENDING:
            return queryset.filter(not_scheduled_for_later(now), status=Status.PENDING)
        return queryset.filter(status=value)


class AggregateTypeFilter(admin.SimpleListFilter):
    """Choices from the installed aggregate models, so the sidebar costs no query."""

    title = _("aggregate type")
    parameter_name = "aggregate_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(label, label) for label in aggregate_types()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(aggregate_type=value) if value else queryset


class _HeaderFilter(admin.SimpleListFilter):
    """Filter on one audit header; the choices are the value asked for, and "none"."""

    header = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        choices = [("none", str(_("none")))]
        value = self.value()
        if value and value != "none":
            choices.insert(0, (value, value))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(header_match(self.header, value)) if value else queryset


class ActorFilter(_HeaderFilter):
    """``?actor=<user pk>``: the events a user caused (the user admin links here)."""

    title = _("actor")
    parameter_name = "actor"
    header = "actor"


class RequestIdFilter(_HeaderFilter):
    """``?request_id=<id>``: the events one request caused."""

    title = _("request id")
    parameter_name = "request_id"
    header = "request_id"


class HandlerFilter(admin.SimpleListFilter):
    """Choices from the handler registry, so the sidebar costs no query."""

    title = _("handler")
    parameter_name = "handler"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in sorted(h.name for h in handler_registry.all())]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(handler=value) if value else queryset
