"""Database connections that outlive one handler task on a Celery worker.

Celery's Django fix-up closes every database connection before and after every task, so
each handler task pays for a new connection (on PostgreSQL a backend process and its
authentication) to run a delivery of a few statements. For django-uow's own handler
tasks the connection is kept the way Django keeps it between two requests: it is closed
once ``CONN_MAX_AGE`` has passed, after an error, or when autocommit was left off. A kept
connection is checked before each delivery, so one that a database restart or
``pg_terminate_backend`` ended is replaced then and the delivery does not fail for it.
Every other task keeps the fix-up's behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from django.db import connections

from ..retry import logger_for

logger = logger_for("django_uow.tasks")

#: Set on a fix-up whose ``close_database`` this module wrapped (it is wrapped once).
_WRAPPED = "_django_uow_keeps_handler_connections"


def release_obsolete_connections() -> None:
    """Close this thread's connections that Django would close at the end of a request:
    past ``CONN_MAX_AGE``, after an error they did not survive, or left in a transaction."""
    for conn in connections.all(initialized_only=True):
        conn.close_if_unusable_or_obsolete()


def replace_dead_connections() -> int:
    """Close this thread's open connections that no longer answer (the next query opens a
    new one). Returns how many were closed."""
    closed = 0
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        if not conn.is_usable():
            logger.info("database connection %r was gone; a new one is opened", conn.alias)
            conn.close()
            closed += 1
        conn.health_check_done = True  # type: ignore[attr-defined]  # Django 4.1+, not in the stubs
    return closed


def keep_connections_for(app: Any, task_names: Collection[str]) -> bool:
    """Make the Django fix-up of the Celery ``app`` keep connections across the tasks
    named ``task_names``. True when a fix-up was found (and wrapped, once)."""
    found = False
    for fixup in getattr(app, "_fixups", ()):
        worker_fixup = getattr(fixup, "_worker_fixup", None)
        if worker_fixup is None or not callable(getattr(worker_fixup, "close_database", None)):
            continue
        found = True
        if not getattr(worker_fixup, _WRAPPED, False):
            worker_fixup.close_database = _keeping(worker_fixup.close_database, task_names)
            setattr(worker_fixup, _WRAPPED, True)
    return found


def prepare_handler_task(task: Any, task_names: Collection[str]) -> None:
    """At the start of a handler task on a worker: keep connections across ``task_names``
    from now on, and replace the kept ones that died since the last task. Nothing is
    done for a task run eagerly (it runs on its caller's connection)."""
    if getattr(task.request, "is_eager", False):
        return
    keep_connections_for(task.app, task_names)
    replace_dead_connections()


def _keeping(close: Callable[..., Any], task_names: Collection[str]) -> Callable[..., Any]:
    from celery import current_task

    def close_database(**kwargs: Any) -> Any:
        if getattr(current_task, "name", None) in task_names:
            release_obsolete_connections()
            return None
        return close(**kwargs)

    return close_database
