"""The Celery app of the test suite, configured from Django settings (``CELERY_*``)."""

from __future__ import annotations

import os
import threading

from celery import Celery
from celery.signals import task_postrun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("django_uow_tests")
app.config_from_object("django.conf:settings", namespace="CELERY")


@task_postrun.connect
def _close_db_connections(**kwargs: object) -> None:
    # Worker threads must not keep connections to the test database open. Never in the
    # main thread: an eager task there runs inside the test's own transaction.
    if threading.current_thread() is threading.main_thread():
        return
    from django.db import connections

    connections.close_all()


@app.task(name="tests.celery_app.record_backend", ignore_result=True)
def record_backend(event_id: str) -> None:
    """A plain task (not django-uow's): writes its session's backend pid as an effect."""
    from django.db import connection

    from tests.testapp.models import Effect

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = str(cursor.fetchone()[0])
    Effect.objects.create(event_id=event_id, handler="plain", aggregate_id=backend)
