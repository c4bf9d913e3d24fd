"""Environment knobs shared by the child processes tests start (relays, Celery workers).

Read before Django is set up:

- ``UOW_CELERY_BROKER``: the Celery broker URL (a Redis server of the test's own, say);
- ``UOW_PG_APPLICATION_NAME``: the ``application_name`` of every PostgreSQL connection
  of the process, so a test can find them in ``pg_stat_activity`` (and terminate them);
- ``UOW_CONN_MAX_AGE``: Django's ``CONN_MAX_AGE`` of the default database (seconds);
- ``UOW_LOG``: a level (``WARNING``...): django-uow's log lines go to stderr;
- ``UOW_CLOCK_SKEW``: seconds (may be negative) added to ``time.time()`` and
  ``django.utils.timezone.now()``: a process whose clock is off.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from types import ModuleType


def skew_clock(seconds: float) -> None:
    """Make this process's wall clock run ``seconds`` ahead (behind when negative).

    Call it before Django is set up: modules that take ``timezone.now`` when they are
    imported (model field defaults) then take the skewed one. ``time.monotonic`` is
    untouched, like a real clock that is off but steady.
    """
    from django.utils import timezone

    real_time, real_now = time.time, timezone.now
    delta = datetime.timedelta(seconds=seconds)

    def skewed_time() -> float:
        return real_time() + seconds

    def skewed_now() -> datetime.datetime:
        return real_now() + delta

    time.time = skewed_time
    timezone.now = skewed_now


def configure(settings: ModuleType, database: str) -> None:
    """Point ``settings`` (``tests.settings``) at ``database`` and apply the knobs above."""
    db = settings.DATABASES["default"]
    db["NAME"] = database
    name = os.environ.get("UOW_PG_APPLICATION_NAME")
    if name and db["ENGINE"].endswith("postgresql"):
        # libpq's "options" also reaches the relay's LISTEN connection (it keeps that key).
        db["OPTIONS"] = {**db.get("OPTIONS", {}), "options": f"-c application_name={name}"}
    if os.environ.get("UOW_CONN_MAX_AGE"):
        db["CONN_MAX_AGE"] = int(os.environ["UOW_CONN_MAX_AGE"])
    broker = os.environ.get("UOW_CELERY_BROKER")
    if broker:
        settings.CELERY_BROKER_URL = broker
    level = os.environ.get("UOW_LOG")
    if level:
        settings.LOGGING = {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": sys.stderr}},
            "loggers": {
                "django_uow": {"handlers": ["stderr"], "level": level.upper()},
                "tests": {"handlers": ["stderr"], "level": level.upper()},
            },
        }
    skew = os.environ.get("UOW_CLOCK_SKEW")
    if skew:
        skew_clock(float(skew))
