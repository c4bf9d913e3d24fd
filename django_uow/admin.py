"""Read-only admin for the outbox and the inbox, with "retry now" and "mark failed".

Events are never added or edited here: the change page is a read-only view. Actions
need the model's change permission, everything else its view permission. The list
stays fast on large tables: no full count, no per-row query, filters whose choices
come from code (not ``SELECT DISTINCT``), exact-match search on indexed columns, and
big JSON columns left out of the list query.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.db import router, transaction
from django.db.models import Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from .admin_deadletters import group_action_view, groups_view
from .admin_lookups import StrictLookupsMixin
from .db.clock import DatabaseNow
from .deliveries import ConsumerLag, consumer_lag
from .events import registry
from .handlers import registry as handler_registry
from .models import AggregateRoot, OutboxEvent, ProcessedEvent
from .redaction import MASK, redact, redactor
from .relay.redelivery import redeliver
from .status import outbox_status, snapshot
from .waiting import WaitReason, failing_heads, is_scheduled, not_scheduled_for_later, wait_reasons

logger = logging.getLogger("django_uow.admin")

Status = OutboxEvent.Status
#: The admin's name for pending events recorded with a delay and not due yet.
SCHEDULED = "scheduled"
#: Characters of pretty-printed JSON shown on the change page; the rest via "raw JSON".
JSON_PREVIEW_CHARS = 20_000
#: Events shown on an aggregate's timeline page.
TIMELINE_LIMIT = 500
#: Rows handled per transaction by the bulk actions ("select all" may cover many).
ACTION_CHUNK = 1000
#: Lists count at most this many rows (one more means "more than"): an exact COUNT(*)
#: reads the whole table on every page view.
COUNT_CAP = 10_000
#: Columns the list never shows; they can be megabytes per row.
HEAVY_FIELDS = ("payload", "headers", "last_error")
#: Blocking heads listed on the blocked-aggregates page.
BLOCKED_LIMIT = 500
#: Characters of a stored error shown on an event's page; the rest behind a link.
LAST_ERROR_PAGE_CHARS = 2_000
#: Characters of a stored error shown in a list; the event's page shows the rest.
ERROR_PREVIEW_CHARS = 300
#: Characters of a stored error, and of a traceback, shown on a page.
ERROR_PAGE_CHARS = 4_000
TRACEBACK_PAGE_CHARS = 16_000
#: Handler deliveries listed on an event's page.
DELIVERIES_LIMIT = 100
#: Deliveries "Re-run" takes at once: each runs its handler (or publishes it) right away,
#: inside the request. More is a job for ``manage.py redeliver --failed``.
RERUN_LIMIT = 100


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


def format_duration(seconds: float) -> str:
    """``3 d 4 h``, ``5 min 2 s``: two units are plenty for a lag."""
    seconds = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def cap_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis: a list row stays one row."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _when(value: Any) -> str:
    return date_format(timezone.localtime(value), "DATETIME_FORMAT") if value else "-"


def consumer_lag_context(lag: ConsumerLag) -> dict[str, Any]:
    """Consumer lag for a status box: owed deliveries, the oldest one's age, dead letters."""
    return {**lag.as_dict(), "age_display": format_duration(lag.age_seconds)}


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder)


class EventTypeFilter(admin.SimpleListFilter):
    """Choices from the event registry, so the sidebar costs no query."""

    title = _("event type")
    parameter_name = "event_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:

        return [(name, name) for name in registry.names()]

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


class EventsCausedAdminMixin:
    """For your user admin: a read-only "events caused" link to the outbox, by actor.

    @admin.register(User)
    class MyUserAdmin(EventsCausedAdminMixin, UserAdmin):
        readonly_fields = ("events_caused",)
    """

    @admin.display(description=_("events caused"))
    def events_caused(self, obj: Any) -> SafeString | str:
        if obj is None or obj.pk is None:
            return "-"
        url = reverse("admin:django_uow_outboxevent_changelist")
        return format_html('<a href="{}?actor={}">{}</a>', url, obj.pk, _("events caused"))


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


@admin.register(OutboxEvent)
class OutboxEventAdmin(StrictLookupsMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    change_list_template = "admin/django_uow/outboxevent/change_list.html"
    change_form_template = "admin/django_uow/outboxevent/change_form.html"
    list_display = (
        "short_event_id",
        "event_type",
        "aggregate",
        "status_label",
        "due_at",
        "waiting",
        "attempts",
        "age",
        "dispatched_at",
    )
    list_filter = (
        StatusFilter,
        EventTypeFilter,
        AggregateTypeFilter,
        "created_at",
        ActorFilter,
        RequestIdFilter,
    )
    # Only consulted to show the search box: get_search_results() does exact matches.
    search_fields = ("=event_id", "=aggregate_id")
    search_help_text = _(
        "Exact event id, aggregate id, app_label.model:aggregate_id (e.g. shop.order:42), "
        "actor:<user pk> or request:<request id>."
    )
    sortable_by = ("short_event_id", "age")
    ordering = ("-id",)
    show_full_result_count = False
    paginator = CappedPaginator
    list_per_page = 100
    if hasattr(admin, "ShowFacets"):  # Django 5.0+: facet counts would COUNT per choice
        show_facets = admin.ShowFacets.NEVER
    actions = ["retry_now", "mark_failed"]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "event_id",
                    "event_type",
                    "status",
                    "attempts",
                    "occurred_at",
                    "created_at",
                    "deliver_at",
                    "available_at",
                    "dispatched_at",
                    "claimed_by",
                    "claimed_until",
                    "waiting_display",
                )
            },
        ),
        (_("Aggregate"), {"fields": ("aggregate_type", "aggregate_id", "aggregate_version")}),
        (_("Last error"), {"fields": ("last_error_display",)}),
        (_("Handler deliveries"), {"fields": ("deliveries_display",)}),
        (_("Payload and headers"), {"fields": ("payload_display", "headers_display")}),
    )
    readonly_fields = (
        "event_id",
        "event_type",
        "status",
        "attempts",
        "occurred_at",
        "created_at",
        "deliver_at",
        "available_at",
        "dispatched_at",
        "claimed_by",
        "claimed_until",
        "aggregate_type",
        "aggregate_id",
        "aggregate_version",
        "last_error_display",
        "payload_display",
        "headers_display",
        "waiting_display",
        "deliveries_display",
    )

    # -- permissions: no add, no delete, a read-only change page ------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting an owed event loses it; retention pruning removes dispatched ones.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The model-level permission gates the actions; an object's page is view-only.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    # -- list -----------------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LightChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[OutboxEvent], search_term: str
    ) -> tuple[QuerySet[OutboxEvent], bool]:
        if not search_term.strip():
            return queryset, False
        return queryset.filter(search_filter(search_term)), False

    @admin.display(description=_("event"), ordering="id")
    def short_event_id(self, obj: OutboxEvent) -> str:
        return str(obj.event_id)[:8]

    @admin.display(description=_("aggregate"))
    def aggregate(self, obj: OutboxEvent) -> str:
        if not obj.aggregate_type:
            return "-"
        version = f" v{obj.aggregate_version}" if obj.aggregate_version is not None else ""
        return f"{obj.aggregate_type}:{obj.aggregate_id}{version}"

    @admin.display(description=_("status"), ordering="status")
    def status_label(self, obj: OutboxEvent) -> SafeString:
        if is_scheduled(obj, timezone.now()):
            return format_html(
                '<span class="uow-status uow-status-{}">{}</span>', SCHEDULED, _("scheduled")
            )
        return format_html(
            '<span class="uow-status uow-status-{}">{}</span>', obj.status, obj.get_status_display()
        )

    @admin.display(description=_("due at"))
    def due_at(self, obj: OutboxEvent) -> str:
        """A scheduled event's due time (``record_event(delay=...)``); blank otherwise."""
        if obj.deliver_at is None:
            return "-"
        return _when(obj.deliver_at)

    @admin.display(description=_("age"), ordering="id")
    def age(self, obj: OutboxEvent) -> str:
        return timesince(obj.created_at)

    def _wait_html(self, reason: WaitReason | None, *, full_id: bool = False) -> SafeString | str:
        if reason is None:
            return "-"
        before, after = reason.parts()
        if reason.blocker_pk is None:
            return format_html('<span class="uow-wait uow-wait-{}">{}</span>', reason.kind, before)
        shown = str(reason.blocker_event_id)
        return format_html(
            '<span class="uow-wait uow-wait-{}">{} <a href="{}">{}</a>{}</span>',
            reason.kind,
            before,
            self._url("change", reason.blocker_pk),
            shown if full_id else shown[:8],
            after,
        )

    @admin.display(description=_("why it waits"))
    def waiting(self, obj: OutboxEvent) -> SafeString | str:
        return self._wait_html(getattr(obj, "_uow_wait", None))

    @admin.display(description=_("why it waits"))
    def waiting_display(self, obj: OutboxEvent) -> SafeString | str:
        if obj.status != Status.PENDING:
            return "-"
        reason = wait_reasons([obj], obj._state.db or "default").get(obj.pk)
        return self._wait_html(reason, full_id=True)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if self.refused_lookup(request) is not None:
            return HttpResponseRedirect(request.path + "?e=1")  # before any query
        using = router.db_for_read(OutboxEvent)
        with snapshot(using):  # the box's numbers agree with each other
            status = outbox_status(using)
            status["blocked_aggregates"] = failing_heads(using).count()
            lag = consumer_lag(router.db_for_read(ProcessedEvent))
        status["lag_display"] = format_duration(status["lag_seconds"])
        # Shown apart: "pending" is what is due (or backing off), "scheduled" what is not yet.
        status["pending_now"] = status["counts"][Status.PENDING] - status["scheduled"]
        status["scheduled_url"] = "?" + urlencode({"status__exact": SCHEDULED})
        deliveries = reverse(f"{self.admin_site.name}:django_uow_processedevent_changelist")
        context = {
            **(extra_context or {}),
            "outbox_status": status,
            "blocked_url": self._url("blocked"),
            "deadletters_url": self._url("deadletters"),
            "consumer_lag": consumer_lag_context(lag),
            "deliveries_url": deliveries,
            "failed_deliveries_url": deliveries + "?" + urlencode({"status__exact": "failed"}),
        }
        return super().changelist_view(request, context)

    # -- change page ----------------------------------------------------------------------

    def _json_display(self, obj: OutboxEvent, field: str) -> SafeString:
        text = pretty_json(redact(getattr(obj, field)))
        raw_url = self._url("raw", obj.pk) + f"?field={field}"
        if len(text) <= JSON_PREVIEW_CHARS:
            return format_html(
                '<pre class="uow-json">{}</pre><a href="{}">{}</a>',
                text,
                raw_url,
                gettext("Raw JSON"),
            )
        return format_html(
            '<pre class="uow-json">{}\n…</pre><p class="uow-truncated">{} <a href="{}">{}</a></p>',
            text[:JSON_PREVIEW_CHARS],
            gettext("Showing the first %(shown)s of %(total)s characters.")
            % {"shown": f"{JSON_PREVIEW_CHARS:,}", "total": f"{len(text):,}"},
            raw_url,
            gettext("See the whole value as raw JSON"),
        )

    @admin.display(description=_("payload"))
    def payload_display(self, obj: OutboxEvent) -> SafeString:
        return self._json_display(obj, "payload")

    @admin.display(description=_("headers"))
    def headers_display(self, obj: OutboxEvent) -> SafeString:
        return self._json_display(obj, "headers")

    @admin.display(description=_("last error"))
    def last_error_display(self, obj: OutboxEvent) -> SafeString | str:
        """The error cut to ``LAST_ERROR_PAGE_CHARS``; the whole text is behind a link
        that needs the change permission (it may quote data)."""
        if not obj.last_error:
            return "-"
        error = obj.last_error
        if len(error) <= LAST_ERROR_PAGE_CHARS:
            return format_html('<pre class="uow-error">{}</pre>', error)
        return format_html(
            '<pre class="uow-error">{}\n\u2026</pre><p class="uow-truncated">{} {}</p>',
            error[:LAST_ERROR_PAGE_CHARS],
            gettext("Showing the first %(shown)s of %(total)s characters.")
            % {"shown": f"{LAST_ERROR_PAGE_CHARS:,}", "total": f"{len(error):,}"},
            format_html(
                '<a href="{}" id="uow-full-error">{}</a>',
                self._url("error", obj.pk),
                gettext("Full error (needs the change permission)"),
            ),
        )

    @admin.display(description=_("handler deliveries"))
    def deliveries_display(self, obj: OutboxEvent) -> SafeString | str:
        """Each handler's delivery of this event: status, attempts, times, last error."""
        rows = list(
            ProcessedEvent.objects.using(obj._state.db or "default")
            .filter(event_id=obj.event_id)
            .order_by("handler")[: DELIVERIES_LIMIT + 1]
        )
        if not rows:
            return gettext("No handler delivery is recorded for this event yet.")
        change = f"{self.admin_site.name}:django_uow_processedevent_change"
        body = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    reverse(change, args=[row.pk]),
                    row.handler,
                    delivery_status_html(row.status, row.get_status_display()),
                    row.attempts,
                    _when(row.published_at),
                    _when(row.first_attempt_at),
                    _when(row.last_attempt_at),
                    _when(row.processed_at),
                    error_html(row.last_error, row.traceback),
                )
                for row in rows[:DELIVERIES_LIMIT]
            ),
        )
        more = (
            format_html(
                '<p class="help">{}</p>',
                gettext("Showing the first %(n)d handlers.") % {"n": DELIVERIES_LIMIT},
            )
            if len(rows) > DELIVERIES_LIMIT
            else ""
        )
        head = format_html_join(
            "",
            "<th>{}</th>",
            (
                (gettext(label),)
                for label in (
                    "handler",
                    "status",
                    "attempts",
                    "published at",
                    "first attempt",
                    "last attempt",
                    "succeeded at",
                    "last error",
                )
            ),
        )
        return format_html(
            '<table id="outbox-deliveries"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>{}',
            head,
            body,
            more,
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = {
            **(extra_context or {}),
            "timeline_url": self._url("timeline", object_id),
            "retry_url": self._url("retry", object_id),
            "can_run_actions": self.has_change_permission(request),
        }
        return super().change_view(request, object_id, form_url, context)

    # -- extra views ----------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        custom = [
            path("blocked/", wrap(self.blocked_view), name=f"{name}_blocked"),
            path(
                "dead-letters/",
                wrap(lambda request: groups_view(self, request)),
                name=f"{name}_deadletters",
            ),
            path(
                "dead-letters/<str:key>/<str:action>/",
                wrap(lambda request, key, action: group_action_view(self, request, key, action)),
                name=f"{name}_deadletter_action",
            ),
            path("<path:object_id>/error/", wrap(self.full_error_view), name=f"{name}_error"),
            path("<path:object_id>/raw/", wrap(self.raw_json_view), name=f"{name}_raw"),
            path("<path:object_id>/timeline/", wrap(self.timeline_view), name=f"{name}_timeline"),
            path("<path:object_id>/retry/", wrap(self.retry_view), name=f"{name}_retry"),
        ]
        return custom + super().get_urls()

    def _url(self, view: str, *args: Any) -> str:
        opts = self.opts
        return reverse(
            f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_{view}", args=args
        )

    def _viewable(self, request: HttpRequest, object_id: str) -> OutboxEvent:
        obj: OutboxEvent | None = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(gettext("No outbox event with id %(id)s.") % {"id": object_id})
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        return obj

    def raw_json_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The whole payload (or ``?field=headers``) as ``application/json``."""
        field = request.GET.get("field", "payload")
        if field not in ("payload", "headers"):
            raise Http404(gettext("field must be 'payload' or 'headers'."))
        obj = self._viewable(request, object_id)
        return JsonResponse(
            redact(getattr(obj, field)),
            encoder=DjangoJSONEncoder,
            safe=False,
            json_dumps_params={"indent": 2, "ensure_ascii": False},
        )

    def full_error_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The whole ``last_error`` as plain text, for staff with the change permission."""
        obj = self._viewable(request, object_id)
        if not self.has_change_permission(request):
            raise PermissionDenied
        return HttpResponse(obj.last_error, content_type="text/plain; charset=utf-8")

    def timeline_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Every event of this event's aggregate, in the order they were written."""
        obj = self._viewable(request, object_id)
        rows: list[Any]
        if obj.aggregate_type:
            rows = list(
                OutboxEvent.objects.using(obj._state.db)
                .filter(aggregate_type=obj.aggregate_type, aggregate_id=obj.aggregate_id)
                .defer(*HEAVY_FIELDS)
                .annotate(
                    actor=KeyTextTransform("actor", "headers"),
                    request_id=KeyTextTransform("request_id", "headers"),
                )
                .order_by("id")[: TIMELINE_LIMIT + 1]
            )
        else:
            rows = [obj]
        secret = redactor()
        for row in rows:  # the audit headers the timeline shows, masked when listed
            for header in ("actor", "request_id"):
                if getattr(row, header, None) is not None and secret.key_is_secret(header):
                    setattr(row, header, MASK)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Timeline of %(aggregate)s") % {"aggregate": self.aggregate(obj)},
            "event": obj,
            "events": rows[:TIMELINE_LIMIT],
            "truncated": len(rows) > TIMELINE_LIMIT,
            "limit": TIMELINE_LIMIT,
            "change_url_name": f"{self.admin_site.name}:django_uow_outboxevent_change",
        }
        return TemplateResponse(request, "admin/django_uow/outboxevent/timeline.html", context)

    def blocked_view(self, request: HttpRequest) -> HttpResponse:
        """Each aggregate held back by a failing first event, and how many wait behind it."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        using = router.db_for_read(OutboxEvent)
        heads = failing_heads(using)
        total = heads.count()
        rows = list(heads.defer("payload", "headers")[:BLOCKED_LIMIT]) if total else []
        changelist = reverse(f"{self.admin_site.name}:django_uow_outboxevent_changelist")
        entries = [
            {
                "head": row,
                "change_url": self._url("change", row.pk),
                "timeline_url": self._url("timeline", row.pk),
                "events_url": changelist
                + "?"
                + urlencode({"q": f"{row.aggregate_type}:{row.aggregate_id}"}),
                "error_preview": cap_text(row.last_error, ERROR_PREVIEW_CHARS),
            }
            for row in rows
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Blocked aggregates"),
            "heads": entries,
            "total": total,
            "truncated": total > len(rows),
            "can_run_actions": self.has_change_permission(request),
        }
        return TemplateResponse(request, "admin/django_uow/outboxevent/blocked.html", context)

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: "retry now" for one event, from its change page."""
        return _retry_one(self, request, object_id)

    # -- actions --------------------------------------------------------------------------

    @admin.action(description=_("Retry now"), permissions=["change"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        """Pending again, attempts reset, due now, lease cleared; ``last_error`` is kept
        (the next attempt overwrites it) so the reason of the failure stays visible."""
        done, skipped = self._transition(
            request,
            queryset,
            from_statuses=(Status.PENDING, Status.FAILED),
            changes={
                "status": Status.PENDING,
                "attempts": 0,
                "available_at": DatabaseNow(),
                "claimed_by": "",
                "claimed_until": None,
            },
            log_message=gettext("Retry now: pending again, attempts reset to 0."),
            verb="retried",
        )
        self.message_user(
            request,
            ngettext(
                "%(count)d event will be relayed again.",
                "%(count)d events will be relayed again.",
                done,
            )
            % {"count": done},
            messages.SUCCESS if done else messages.WARNING,
        )
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "%(count)d event was skipped: it is already dispatched.",
                    "%(count)d events were skipped: they are already dispatched.",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )

    @admin.action(description=_("Mark failed"), permissions=["change"])
    def mark_failed(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> None:
        """Stop relaying pending events (dead letter); "retry now" undoes it."""
        done, skipped = self._transition(
            request,
            queryset,
            from_statuses=(Status.PENDING,),
            changes={"status": Status.FAILED, "claimed_by": "", "claimed_until": None},
            log_message=gettext("Marked failed."),
            verb="marked failed",
        )
        self.message_user(
            request,
            ngettext(
                "%(count)d event was marked failed.",
                "%(count)d events were marked failed.",
                done,
            )
            % {"count": done},
            messages.SUCCESS if done else messages.WARNING,
        )
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "%(count)d event was skipped: only pending events can be marked failed.",
                    "%(count)d events were skipped: only pending events can be marked failed.",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )

    def _transition(
        self,
        request: HttpRequest,
        queryset: QuerySet[OutboxEvent],
        *,
        from_statuses: Sequence[str],
        changes: dict[str, Any],
        log_message: str,
        verb: str,
    ) -> tuple[int, int]:
        """Apply ``changes`` to the selected events in ``from_statuses``, in chunks.

        Each chunk locks its rows (``FOR UPDATE`` where supported), updates them with
        one statement and writes one admin ``LogEntry`` per event with one INSERT.
        Returns (changed, skipped).
        """
        db = queryset.db
        # The admin log follows its own routing (usually "default", like the admin).
        content_type = ContentType.objects.get_for_model(OutboxEvent)
        user_id: Any = request.user.pk
        done = skipped = 0
        last_pk = 0
        base = queryset.order_by("pk")
        while True:
            chunk = list(base.filter(pk__gt=last_pk).values_list("pk", flat=True)[:ACTION_CHUNK])
            if not chunk:
                break
            last_pk = chunk[-1]
            with transaction.atomic(using=db):
                rows = list(
                    OutboxEvent.objects.using(db)
                    .select_for_update()
                    .filter(pk__in=chunk, status__in=from_statuses)
                    .order_by("pk")
                    .values_list("pk", "event_id", "event_type", "aggregate_type", "aggregate_id")
                )
                OutboxEvent.objects.using(db).filter(pk__in=[r[0] for r in rows]).update(**changes)
                LogEntry.objects.bulk_create(
                    LogEntry(
                        user_id=user_id,
                        content_type_id=content_type.pk,
                        object_id=str(pk),
                        object_repr=f"{event_type} {event_id}"[:200],
                        action_flag=CHANGE,
                        change_message=log_message,
                    )
                    for pk, event_id, event_type, _agg_type, _agg_id in rows
                )
            for _pk, event_id, event_type, agg_type, agg_id in rows:
                logger.info(
                    "Outbox event %s (%s, aggregate %s:%s) %s in the admin by %s",
                    event_id,
                    event_type,
                    agg_type or "-",
                    agg_id or "-",
                    verb,
                    request.user,
                    extra={
                        "event_id": str(event_id),
                        "event_type": event_type,
                        "aggregate_type": agg_type,
                        "aggregate_id": agg_id,
                    },
                )
            done += len(rows)
            skipped += len(chunk) - len(rows)
        return done, skipped


def _retry_one(model_admin: OutboxEventAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    obj = model_admin._viewable(request, object_id)
    if not model_admin.has_change_permission(request):
        raise PermissionDenied
    queryset = OutboxEvent.objects.using(obj._state.db).filter(pk=obj.pk)
    model_admin.retry_now(request, queryset)
    return HttpResponseRedirect(
        reverse(f"{model_admin.admin_site.name}:django_uow_outboxevent_change", args=[obj.pk])
    )


class HandlerFilter(admin.SimpleListFilter):
    """Choices from the handler registry, so the sidebar costs no query."""

    title = _("handler")
    parameter_name = "handler"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in sorted(h.name for h in handler_registry.all())]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(handler=value) if value else queryset


def error_html(error: str, traceback: str = "") -> SafeString | str:
    """A stored error, escaped and cut, with its traceback folded in a ``<details>``."""
    if not error and not traceback:
        return "-"
    shown = format_html('<pre class="uow-error">{}</pre>', cap_text(error, ERROR_PAGE_CHARS))
    if not traceback:
        return shown
    return format_html(
        '{}<details class="uow-traceback"><summary>{}</summary><pre class="uow-error">{}</pre>'
        "</details>",
        shown,
        gettext("Traceback"),
        cap_text(traceback, TRACEBACK_PAGE_CHARS),
    )


def delivery_status_html(status: str, label: str) -> SafeString:
    return format_html('<span class="uow-status uow-delivery-{}">{}</span>', status, label)


@admin.register(ProcessedEvent)
class ProcessedEventAdmin(StrictLookupsMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """Handler deliveries (the inbox): how each handler fared with each event.

    Read-only like the outbox: rows are never added, edited or deleted here (deleting a
    succeeded row would let a redelivered event take effect twice). "Re-run" needs the
    change permission; everything else the view permission.
    """

    change_list_template = "admin/django_uow/processedevent/change_list.html"
    list_display = (
        "short_event_id",
        "event_type",
        "handler",
        "status_label",
        "attempts",
        "last_attempt_at",
        "error_preview",
    )
    list_filter = (
        "status",
        HandlerFilter,
        EventTypeFilter,
        ("last_attempt_at", admin.DateFieldListFilter),
    )
    search_fields = ("=event_id", "=handler")
    search_help_text = _("Exact event id or handler name.")
    ordering = ("-id",)
    show_full_result_count = False
    paginator = CappedPaginator
    list_per_page = 100
    if hasattr(admin, "ShowFacets"):
        show_facets = admin.ShowFacets.NEVER
    sortable_by = ("short_event_id", "last_attempt_at")
    change_form_template = "admin/django_uow/processedevent/change_form.html"
    actions = ["rerun"]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "event_id",
                    "outbox_link",
                    "event_type",
                    "aggregate_type",
                    "aggregate_id",
                    "handler",
                    "status",
                    "attempts",
                )
            },
        ),
        (
            _("Times"),
            {
                "fields": (
                    "published_at",
                    "due_at",
                    "first_attempt_at",
                    "last_attempt_at",
                    "processed_at",
                )
            },
        ),
        (_("Last error"), {"fields": ("last_error_display",)}),
    )
    readonly_fields = (
        "event_id",
        "outbox_link",
        "event_type",
        "aggregate_type",
        "aggregate_id",
        "handler",
        "status",
        "attempts",
        "published_at",
        "due_at",
        "first_attempt_at",
        "last_attempt_at",
        "processed_at",
        "last_error_display",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The model-level permission gates "Re-run"; a row's page is view-only.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a row would let a redelivered event take effect twice.
        return False

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LightDeliveryChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ProcessedEvent], search_term: str
    ) -> tuple[QuerySet[ProcessedEvent], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(event_id=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(handler=term), False

    @admin.display(description=_("event"), ordering="id")
    def short_event_id(self, obj: ProcessedEvent) -> SafeString:
        url = reverse(f"{self.admin_site.name}:django_uow_processedevent_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, str(obj.event_id)[:8])

    @admin.display(description=_("status"), ordering="status")
    def status_label(self, obj: ProcessedEvent) -> SafeString:
        return delivery_status_html(obj.status, obj.get_status_display())

    @admin.display(description=_("last error"))
    def error_preview(self, obj: ProcessedEvent) -> str:
        first_line = obj.last_error.split("\n", 1)[0] if obj.last_error else ""
        return cap_text(first_line, ERROR_PREVIEW_CHARS) or "-"

    @admin.display(description=_("last error"))
    def last_error_display(self, obj: ProcessedEvent) -> SafeString | str:
        return error_html(obj.last_error, obj.traceback)

    @admin.display(description=_("outbox event"))
    def outbox_link(self, obj: ProcessedEvent) -> SafeString:
        url = reverse(f"{self.admin_site.name}:django_uow_outboxevent_changelist")
        return format_html(
            '<a href="{}?{}">{}</a>', url, urlencode({"q": str(obj.event_id)}), gettext("find")
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if self.refused_lookup(request) is not None:
            return HttpResponseRedirect(request.path + "?e=1")  # before any query
        lag = consumer_lag(router.db_for_read(ProcessedEvent))
        context = {**(extra_context or {}), "consumer_lag": consumer_lag_context(lag)}
        return super().changelist_view(request, context)

    # -- re-run -----------------------------------------------------------------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        opts = self.opts
        context = {
            **(extra_context or {}),
            "rerun_url": reverse(
                f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_rerun",
                args=[object_id],
            ),
            "can_run_actions": self.has_change_permission(request),
        }
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self) -> list[URLPattern]:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        custom = [
            path(
                "<path:object_id>/rerun/",
                self.admin_site.admin_view(self.rerun_view),
                name=f"{name}_rerun",
            ),
        ]
        return custom + super().get_urls()

    def rerun_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: "Re-run" for one delivery, from its page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(gettext("No handler delivery with id %(id)s.") % {"id": object_id})
        if not self.has_change_permission(request):
            raise PermissionDenied
        self.rerun(request, ProcessedEvent.objects.using(obj._state.db).filter(pk=obj.pk))
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:django_uow_processedevent_change", args=[obj.pk])
        )

    @admin.action(description=_("Re-run"), permissions=["change"])
    def rerun(self, request: HttpRequest, queryset: QuerySet[ProcessedEvent]) -> None:
        """Run each selected delivery again (``django_uow.relay.redelivery.redeliver``).

        With Celery the handler task is published again; otherwise the handler runs now.
        An idempotent handler whose delivery already succeeded is skipped.
        """
        rows = list(
            queryset.order_by("pk").values_list("pk", "event_id", "handler")[: RERUN_LIMIT + 1]
        )
        if len(rows) > RERUN_LIMIT:
            self.message_user(
                request,
                gettext(
                    "Select at most %(limit)d deliveries to re-run at once; for more, run "
                    "manage.py redeliver --failed (optionally with --handler)."
                )
                % {"limit": RERUN_LIMIT},
                messages.ERROR,
            )
            return
        counts: dict[str, int] = {}
        errors: list[str] = []
        logged: list[tuple[int, str, str, str]] = []
        for pk, event_id, handler in rows:
            try:
                outcome = redeliver(event_id, handler, using=queryset.db)
            except LookupError as exc:
                result, error = "unavailable", str(exc)
            else:
                result, error = outcome.outcome, outcome.error
            counts[result] = counts.get(result, 0) + 1
            if error:
                errors.append(f"{handler} {event_id}: {cap_text(error, ERROR_PREVIEW_CHARS)}")
            logged.append((pk, str(event_id), handler, result))
        self._log_reruns(request, logged)
        for result, count in sorted(counts.items()):
            text, level = _rerun_message(result, count)
            self.message_user(request, text, level)
        for error in errors[:5]:
            self.message_user(request, error, messages.WARNING)

    def _log_reruns(self, request: HttpRequest, rows: Sequence[tuple[int, str, str, str]]) -> None:
        content_type = ContentType.objects.get_for_model(ProcessedEvent)
        user_id: Any = request.user.pk
        LogEntry.objects.bulk_create(
            LogEntry(
                user_id=user_id,
                content_type_id=content_type.pk,
                object_id=str(pk),
                object_repr=f"{handler} <- {event_id}"[:200],
                action_flag=CHANGE,
                change_message=gettext("Re-run: %(result)s.") % {"result": result},
            )
            for pk, event_id, handler, result in rows
        )
        for _pk, event_id, handler, result in rows:
            logger.info(
                "Handler %s re-run for event %s in the admin by %s: %s",
                handler,
                event_id,
                request.user,
                result,
                extra={"event_id": event_id, "handler": handler},
            )


def _rerun_message(result: str, count: int) -> tuple[str, int]:
    """The message for ``count`` deliveries whose re-run ended with ``result``."""
    if result == "published":
        text = ngettext(
            "%(count)d delivery was published again.",
            "%(count)d deliveries were published again.",
            count,
        )
        return text % {"count": count}, messages.SUCCESS
    if result == "succeeded":
        text = ngettext(
            "%(count)d delivery ran again and succeeded.",
            "%(count)d deliveries ran again and succeeded.",
            count,
        )
        return text % {"count": count}, messages.SUCCESS
    if result == "skipped":
        text = ngettext(
            "%(count)d delivery was skipped: its handler already succeeded.",
            "%(count)d deliveries were skipped: their handlers already succeeded.",
            count,
        )
        return text % {"count": count}, messages.WARNING
    if result == "failed":
        text = ngettext(
            "%(count)d delivery ran again and failed.",
            "%(count)d deliveries ran again and failed.",
            count,
        )
        return text % {"count": count}, messages.ERROR
    text = ngettext(
        "%(count)d delivery could not be re-run: its event or handler is gone.",
        "%(count)d deliveries could not be re-run: their events or handlers are gone.",
        count,
    )
    return text % {"count": count}, messages.ERROR
