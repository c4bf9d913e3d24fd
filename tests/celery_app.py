"""The Celery app of the test suite, configured from Django settings (``CELERY_*``)."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import task_postrun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("django_uow_tests")
app.config_from_object("django.conf:settings", namespace="CELERY")


@task_postrun.connect
def _close_db_connections(**kwargs: object) -> None:
    # Worker threads must not keep connections to the test database open.
    from django.db import connections

    connections.close_all()
