"""The outbox events' admin: a read-only list and page, with "retry now" and "mark failed".

Events are never added or edited here: the change page is a read-only view. Actions need
the model's change permission, everything else its view permission.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db import router, transaction
from django.db.models import QuerySet
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
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from ..db.clock import DatabaseNow
from ..delivery.rows import consumer_lag
from ..events.redaction import MASK, redact, redactor
from ..models import OutboxEvent, ProcessedEvent
from ..ops.holds import WaitReason, failing_heads, is_scheduled, wait_reasons
from ..ops.status import outbox_status, snapshot
from ..retry import logger_for
from .changelists import HEAVY_FIELDS, CappedPaginator, LightChangeList
from .dead_letters import group_action_view, groups_view
from .display import (
    ERROR_PREVIEW_CHARS,
    JSON_PREVIEW_CHARS,
    LAST_ERROR_PAGE_CHARS,
    _when,
    cap_text,
    consumer_lag_context,
    delivery_status_html,
    error_html,
    format_duration,
    pretty_json,
)
from .filters import (
    SCHEDULED,
    ActorFilter,
    AggregateTypeFilter,
    EventTypeFilter,
    RequestIdFilter,
    StatusFilter,
    search_filter,
)
from .lookups import StrictLookupsMixin

logger = logger_for("django_uow.admin")


Status = OutboxEvent.Status


#: Events shown on an aggregate's timeline page.
TIMELINE_LIMIT = 500


#: Rows handled per transaction by the bulk actions ("select all" may cover many).
ACTION_CHUNK = 1000


#: Blocking heads listed on the blocked-aggregates page.
BLOCKED_LIMIT = 500


#: Handler deliveries listed on an event's page.
DELIVERIES_LIMIT = 100


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
