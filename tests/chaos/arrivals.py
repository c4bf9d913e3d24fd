"""Record each chaos handler task a Celery worker starts (the ``task_prerun`` signal).

Installed by ``tests.worker_subprocess`` when ``UOW_RECORD_ARRIVALS=1``, after Django is
set up. The row is written in autocommit before the task runs, outside the handler's
transaction, so a task that then fails, is skipped as already processed, or dies is
still counted.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_prerun
from django.db import DatabaseError, connection

from django_uow.publishers.celery_messages import HANDLE_TASK

from .models import Arrival

logger = logging.getLogger("tests.chaos")


def _record(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    if task is None or task.name != HANDLE_TASK or not args or len(args) < 2:
        return
    message, handler = args[0], args[1]
    if not str(handler).startswith("chaos."):
        return
    row = {
        "event_id": message["event_id"],
        "handler": handler,
        "retries": int(getattr(task.request, "retries", 0) or 0),
        "waits": int((kwargs or {}).get("waits") or 0),
    }
    for attempt in (1, 2):
        try:
            Arrival.objects.create(**row)
            return
        except DatabaseError as exc:
            # A terminated backend (one of the trial's faults): reconnect once.
            connection.close()
            if attempt == 2:
                logger.warning("Could not record the arrival %s: %s", row, exc)


def install() -> None:
    task_prerun.connect(_record, weak=False, dispatch_uid="uow_chaos_arrivals")
