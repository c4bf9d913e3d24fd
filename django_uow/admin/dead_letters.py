"""The admin's dead-letter groups page, and its "retry all" / "discard all" per group.

The views hang off the outbox admin (``outboxevent/dead-letters/``) and get it as
``model_admin``, so this module needs no import of the admin module. Viewing needs the
outbox's view permission; acting needs the change permission of what the group holds
(outbox events, or handler deliveries) and a confirmation page. Every action re-reads
the group and acts only on members still failed, reports its counts through
``message_user`` and writes one ``LogEntry`` per changed row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db import router, transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.translation import gettext, ngettext

from ..db.clock import DatabaseNow
from ..models import DeliveryStatus, OutboxEvent, OutboxStatus, ProcessedEvent
from ..ops.deadletters import (
    AGGREGATES_SHOWN,
    Group,
    dead_letter_groups,
    find_group,
    retry_delivery,
)
from ..retry import logger_for

logger = logger_for("django_uow.admin")

#: Characters of a group's sample error shown on the page.
SAMPLE_CHARS = 500
#: Rows changed per transaction by a group action.
CHUNK = 1000
ACTIONS = ("retry", "discard")


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def can_act(request: HttpRequest, group: Group) -> bool:
    """The change permission of what the group holds."""
    model = OutboxEvent if group.kind == "event" else ProcessedEvent
    opts = model._meta
    return bool(request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}"))


def _name(model_admin: Any, view: str) -> str:
    opts = model_admin.opts
    return f"{model_admin.admin_site.name}:{opts.app_label}_{opts.model_name}_{view}"


def _entry(model_admin: Any, request: HttpRequest, group: Group) -> dict[str, Any]:
    changelist = reverse(_name(model_admin, "changelist"))
    blocks = group.blocks
    action = _name(model_admin, "deadletter_action")
    return {
        "group": group,
        "sample": _cap(group.sample_error, SAMPLE_CHARS),
        "blocks_count": len(blocks),
        "blocks": [
            {
                "label": f"{agg_type}:{agg_id}",
                "url": changelist + "?" + urlencode({"q": f"{agg_type}:{agg_id}"}),
            }
            for agg_type, agg_id in blocks[:AGGREGATES_SHOWN]
        ],
        "can_act": can_act(request, group),
        "retry_url": reverse(action, args=[group.key, "retry"]),
        "discard_url": reverse(action, args=[group.key, "discard"]),
    }


def groups_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """Failed events and failed handler deliveries, grouped by cause, biggest first."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    using = router.db_for_read(OutboxEvent)
    groups, truncated = dead_letter_groups(using)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": gettext("Dead letters"),
        "entries": [_entry(model_admin, request, g) for g in groups],
        "truncated": truncated,
    }
    return TemplateResponse(request, "admin/django_uow/outboxevent/dead_letters.html", context)


def group_action_view(
    model_admin: Any, request: HttpRequest, key: str, action: str
) -> HttpResponse:
    """GET: the confirmation page; POST: retry or discard every member of the group."""
    if action not in ACTIONS:
        raise Http404(gettext("Unknown action."))
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    using = router.db_for_write(OutboxEvent)
    group = find_group(key, using)
    if group is None:
        if not request.user.has_perm("django_uow.change_outboxevent") and not (
            request.user.has_perm("django_uow.change_processedevent")
        ):
            raise PermissionDenied
        model_admin.message_user(
            request,
            gettext("That group has no dead letters any more: nothing was done."),
            messages.WARNING,
        )
        return HttpResponseRedirect(reverse(_name(model_admin, "deadletters")))
    if not can_act(request, group):
        raise PermissionDenied
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        if group.kind == "event":
            _act_on_events(model_admin, request, group, action)
        else:
            _act_on_deliveries(model_admin, request, group, action, using)
        return HttpResponseRedirect(reverse(_name(model_admin, "deadletters")))
    if request.method not in ("GET", "HEAD", "POST"):
        raise PermissionDenied
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": gettext("Retry every dead letter of this group?")
        if action == "retry"
        else gettext("Discard every dead letter of this group?"),
        "entry": _entry(model_admin, request, group),
        "action": action,
        "groups_url": reverse(_name(model_admin, "deadletters")),
    }
    return TemplateResponse(
        request, "admin/django_uow/outboxevent/dead_letter_confirm.html", context
    )


# ----------------------------------------------------------------------- events


def _act_on_events(model_admin: Any, request: HttpRequest, group: Group, action: str) -> None:
    queryset = OutboxEvent.objects.using(router.db_for_write(OutboxEvent)).filter(pk__in=group.ids)
    if action == "retry":
        done, _skipped = model_admin._transition(
            request,
            queryset,
            from_statuses=(OutboxStatus.FAILED,),
            changes={
                "status": OutboxStatus.PENDING,
                "attempts": 0,
                "available_at": DatabaseNow(),
                "claimed_by": "",
                "claimed_until": None,
            },
            log_message=gettext("Retried with its dead-letter group: pending again."),
            verb="retried with its dead-letter group",
        )
        text = ngettext(
            "%(count)d failed event will be relayed again.",
            "%(count)d failed events will be relayed again.",
            done,
        )
    else:
        done, _skipped = model_admin._transition(
            request,
            queryset,
            from_statuses=(OutboxStatus.FAILED,),
            changes={
                "status": OutboxStatus.DISCARDED,
                "discarded_at": DatabaseNow(),
                "claimed_by": "",
                "claimed_until": None,
            },
            log_message=gettext(
                "Discarded with its dead-letter group: never relayed, blocks nothing."
            ),
            verb="discarded with its dead-letter group",
        )
        text = ngettext(
            "%(count)d failed event was discarded.",
            "%(count)d failed events were discarded.",
            done,
        )
    model_admin.message_user(
        request, text % {"count": done}, messages.SUCCESS if done else messages.WARNING
    )


# ----------------------------------------------------------------------- deliveries


def _log(request: HttpRequest, rows: Sequence[tuple[int, str]], message: str) -> None:
    content_type = ContentType.objects.get_for_model(ProcessedEvent)
    user_id: Any = request.user.pk
    LogEntry.objects.bulk_create(
        LogEntry(
            user_id=user_id,
            content_type_id=content_type.pk,
            object_id=str(pk),
            object_repr=label[:200],
            action_flag=CHANGE,
            change_message=message,
        )
        for pk, label in rows
    )


def _act_on_deliveries(
    model_admin: Any, request: HttpRequest, group: Group, action: str, using: str
) -> None:
    if action == "discard":
        done = discard_deliveries(request, group.ids, using)
        model_admin.message_user(
            request,
            ngettext(
                "%(count)d failed handler delivery was discarded.",
                "%(count)d failed handler deliveries were discarded.",
                done,
            )
            % {"count": done},
            messages.SUCCESS if done else messages.WARNING,
        )
        return
    outcomes: dict[str, int] = {}
    logged: list[tuple[int, str]] = []
    rows = (
        ProcessedEvent.objects.using(using)
        .filter(pk__in=group.ids, status=DeliveryStatus.FAILED)
        .order_by("pk")
        .values_list("pk", "event_id", "handler")
    )
    for pk, event_id, handler in rows:
        outcome = retry_delivery(event_id, handler, using=using)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        logged.append((pk, f"{handler} <- {event_id}"))
        logger.info(
            "Handler delivery %s of event %s retried with its dead-letter group by %s: %s",
            handler,
            event_id,
            request.user,
            outcome,
            extra={"event_id": str(event_id), "handler": handler},
        )
    _log(request, logged, gettext("Retried with its dead-letter group."))
    done = len(logged)
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
    model_admin.message_user(
        request,
        ngettext(
            "%(count)d failed handler delivery was retried (%(summary)s).",
            "%(count)d failed handler deliveries were retried (%(summary)s).",
            done,
        )
        % {"count": done, "summary": summary or "-"},
        messages.SUCCESS if done else messages.WARNING,
    )


def discard_deliveries(request: HttpRequest, ids: Sequence[int], using: str) -> int:
    """Failed deliveries among ``ids`` become ``discarded``, in locked chunks; the count."""
    done = 0
    for start in range(0, len(ids), CHUNK):
        chunk = sorted(ids[start : start + CHUNK])
        with transaction.atomic(using=using):
            rows = list(
                ProcessedEvent.objects.using(using)
                .select_for_update()
                .filter(pk__in=chunk, status=DeliveryStatus.FAILED)
                .order_by("pk")
                .values_list("pk", "event_id", "handler")
            )
            ProcessedEvent.objects.using(using).filter(pk__in=[r[0] for r in rows]).update(
                status=DeliveryStatus.DISCARDED, due_at=None
            )
            _log(
                request,
                [(pk, f"{handler} <- {event_id}") for pk, event_id, handler in rows],
                gettext("Discarded with its dead-letter group."),
            )
        for _pk, event_id, handler in rows:
            logger.info(
                "Handler delivery %s of event %s discarded with its dead-letter group by %s",
                handler,
                event_id,
                request.user,
                extra={"event_id": str(event_id), "handler": handler},
            )
        done += len(rows)
    return done
