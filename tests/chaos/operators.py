"""The operator: ``manage.py redeliver`` and the admin's bulk actions, run from the trial's
process while the worker and the relays run.

The trial's process publishes with ``OperatorPublisher`` (``PUBLISHERS`` of its
``DJANGO_UOW``): a ``CeleryPublisher`` on a Celery app whose broker is the trial's own
Redis, so the trial never touches the process-wide current Celery app.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import admin as django_admin
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.contrib.messages.storage.cookie import CookieStorage
from django.core.management import call_command
from django.http import HttpRequest
from django.test import RequestFactory

from django_uow.models import DeliveryStatus, OutboxEvent, ProcessedEvent
from django_uow.publishers import CeleryPublisher

from .handlers import TICK

#: The trial's Celery app (set by ``tests.chaos.trial`` before anything publishes).
TRIAL_APP: list[Any] = []
OWED = (DeliveryStatus.PUBLISHED, DeliveryStatus.RETRYING)


def celery_app(broker_url: str) -> Any:
    """A Celery app of the trial's own, never made the current or default app."""
    from celery import Celery

    app = Celery("uow-chaos-operator", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        task_always_eager=False,
        broker_connection_timeout=2,
        broker_connection_retry=False,
        broker_connection_max_retries=0,
    )
    return app


class OperatorPublisher(CeleryPublisher):
    """``CeleryPublisher`` on the trial's Celery app."""

    def __init__(self, app: Any = None, **kwargs: Any) -> None:
        if app is None and not TRIAL_APP:
            raise RuntimeError("tests.chaos.operators.TRIAL_APP is not set: start the trial.")
        super().__init__(app if app is not None else TRIAL_APP[0], **kwargs)


class Operator:
    """An operator acting through the documented tools, on database ``using``."""

    def __init__(self, using: str = "default") -> None:
        self.using = using
        user_model = get_user_model()
        self.user = user_model.objects.filter(username="chaos-operator").first()
        if self.user is None:
            self.user = user_model.objects.create_superuser(
                "chaos-operator", "operator@example.com", "not-a-secret"
            )

    def request(self) -> HttpRequest:
        request = RequestFactory().post("/admin/")
        request.user = self.user
        request._messages = CookieStorage(request)  # type: ignore[attr-defined]
        return request

    # -- manage.py redeliver ---------------------------------------------------------------

    def redeliver(self, pairs: Sequence[tuple[Any, str]]) -> str:
        """``redeliver --event E --handler H`` for each pair; the outcomes, counted."""
        outcomes: Counter[str] = Counter()
        for event_id, handler in pairs:
            out = io.StringIO()
            call_command(
                "redeliver", "--event", str(event_id), "--handler", handler, "--database",
                self.using, stdout=out, stderr=io.StringIO(),
            )  # fmt: skip
            # The command prints "<event> <handler>: <outcome>" per delivery.
            for line in out.getvalue().splitlines():
                if line.startswith(str(event_id)):
                    outcomes[line.split(": ", 1)[-1].split(":")[0]] += 1
        return ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())) or "none"

    def redeliver_failed(self) -> str:
        out = io.StringIO()
        call_command(
            "redeliver", "--failed", "--database", self.using, stdout=out, stderr=io.StringIO()
        )
        text = out.getvalue().strip().splitlines()
        return text[-1] if text else ""

    # -- the admin's bulk actions ----------------------------------------------------------

    def _admin(self, model: Any) -> Any:
        return django_admin.site._registry[model]

    def _messages(self, request: HttpRequest) -> str:
        return " | ".join(str(m) for m in get_messages(request))

    def rerun(self, ids: Sequence[int]) -> str:
        """The delivery admin's "Re-run" on the rows ``ids``."""
        request = self.request()
        queryset = ProcessedEvent.objects.using(self.using).filter(pk__in=list(ids))
        self._admin(ProcessedEvent).rerun(request, queryset)
        return self._messages(request)

    def retry_now(self, ids: Sequence[int]) -> str:
        """The outbox admin's "Retry now" on the events ``ids``."""
        request = self.request()
        queryset = OutboxEvent.objects.using(self.using).filter(pk__in=list(ids))
        self._admin(OutboxEvent).retry_now(request, queryset)
        return self._messages(request)

    # -- what to act on --------------------------------------------------------------------

    def owed_now(self, limit: int = 3, wait: float = 1.0) -> list[tuple[int, Any, str]]:
        """Deliveries of the idempotent handler owed right now (a worker is about to run
        or is running them), polled for up to ``wait`` seconds; the newest first."""
        rows = ProcessedEvent.objects.using(self.using).filter(handler=TICK, status__in=OWED)
        deadline = time.monotonic() + wait
        while True:
            found = list(rows.order_by("-id").values_list("id", "event_id", "handler")[:limit])
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.005)

    def race(self, rounds: int, act: Callable[[list[tuple[int, Any, str]]], str]) -> str:
        """``rounds`` times: catch deliveries while they are owed and act on them at once,
        racing the worker that runs them. Returns what the acts said, counted."""
        said: Counter[str] = Counter()
        caught = 0
        for _ in range(rounds):
            found = self.owed_now()
            if found:
                caught += len(found)
                said[act(found)] += 1
        summary = "; ".join(f"{n} x {text}" for text, n in said.most_common())
        return f"{caught} owed deliveries caught in {rounds} rounds: {summary or '-'}"

    def failed_deliveries(self) -> list[int]:
        rows = ProcessedEvent.objects.using(self.using).filter(status=DeliveryStatus.FAILED)
        return list(rows.order_by("id").values_list("id", flat=True)[:100])

    def events_to_retry(self, count: int) -> list[int]:
        """Failed outbox events, and the newest pending ones (a relay may hold them)."""
        events = OutboxEvent.objects.using(self.using)
        failed = list(events.filter(status="failed").values_list("id", flat=True)[:100])
        pending = list(
            events.filter(status="pending").order_by("-id").values_list("id", flat=True)[:count]
        )
        return failed + pending

    def failed_events(self) -> list[int]:
        rows = OutboxEvent.objects.using(self.using).filter(status="failed")
        return list(rows.values_list("id", flat=True)[:100])
