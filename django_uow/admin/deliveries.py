"""The handler deliveries' admin: outcomes, errors and tracebacks, and "Re-run"."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db import router
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from ..delivery.handlers import registry as handler_registry
from ..delivery.rows import consumer_lag
from ..models import ProcessedEvent
from ..ops.policies import handler_policy as describe_policy
from ..ops.policies import policy_text
from ..relay.redelivery import redeliver
from ..retry import logger_for
from .changelists import CappedPaginator, LightDeliveryChangeList
from .display import (
    ERROR_PREVIEW_CHARS,
    cap_text,
    consumer_lag_context,
    delivery_status_html,
    error_html,
)
from .filters import EventTypeFilter, HandlerFilter
from .lookups import StrictLookupsMixin

logger = logger_for("django_uow.admin")

#: Deliveries "Re-run" takes at once: each runs its handler (or publishes it) right away,
#: inside the request. More is a job for ``manage.py redeliver --failed``.
RERUN_LIMIT = 100


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
                    "handler_policy",
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
        "handler_policy",
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

    @admin.display(description=_("handler policy"))
    def handler_policy(self, obj: ProcessedEvent) -> str:
        """What this process's registry says the handler runs under (``*``: its own)."""
        try:
            handler = handler_registry.get(obj.handler)
        except LookupError:
            return gettext("not registered in this process")
        return policy_text(describe_policy(handler))

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


#: What the admin says of the deliveries whose re-run ended with each outcome.
RERUN_MESSAGES: dict[str, tuple[str, str, int]] = {
    "published": (
        "%(count)d delivery was published again.",
        "%(count)d deliveries were published again.",
        messages.SUCCESS,
    ),
    "queued": (
        "%(count)d delivery was in flight: another copy is queued behind it, and only one "
        "has its effect.",
        "%(count)d deliveries were in flight: another copy of each is queued behind it, and "
        "only one has its effect.",
        messages.SUCCESS,
    ),
    "succeeded": (
        "%(count)d delivery ran again and succeeded.",
        "%(count)d deliveries ran again and succeeded.",
        messages.SUCCESS,
    ),
    "skipped": (
        "%(count)d delivery was skipped: its handler already succeeded.",
        "%(count)d deliveries were skipped: their handlers already succeeded.",
        messages.WARNING,
    ),
    "blocked": (
        "%(count)d delivery is held back: its handler runs the events of an aggregate in "
        "order, and an earlier one has not succeeded yet.",
        "%(count)d deliveries are held back: their handlers run the events of an aggregate "
        "in order, and an earlier one has not succeeded yet.",
        messages.WARNING,
    ),
    "in-flight": (
        "%(count)d delivery was not re-run: a worker has it or will take it, and its handler "
        "is not idempotent (a second copy could have its effect twice).",
        "%(count)d deliveries were not re-run: a worker has them or will take them, and their "
        "handlers are not idempotent (a second copy could have its effect twice).",
        messages.WARNING,
    ),
    "failed": (
        "%(count)d delivery ran again and failed.",
        "%(count)d deliveries ran again and failed.",
        messages.ERROR,
    ),
}
GONE = (
    "%(count)d delivery could not be re-run: its event or handler is gone.",
    "%(count)d deliveries could not be re-run: their events or handlers are gone.",
    messages.ERROR,
)


def _rerun_message(result: str, count: int) -> tuple[str, int]:
    """The message for ``count`` deliveries whose re-run ended with ``result``."""
    singular, plural, level = RERUN_MESSAGES.get(result, GONE)
    return ngettext(singular, plural, count) % {"count": count}, level
