"""Django settings of the benchmark: its own PostgreSQL database and Redis DB, never the tests'.

Environment variables let subprocesses (relays, Celery worker, writers) share one
configuration while a workload changes the relay mode or the publishers.
"""

from __future__ import annotations

import os

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

PG_HOST = os.environ.get("UOW_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("UOW_BENCH_PG_PORT", "5432"))
PG_NAME = os.environ.get("UOW_BENCH_DB", "uow_bench")
REDIS_DB = int(os.environ.get("UOW_BENCH_REDIS_DB", "6"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": PG_NAME,
        "USER": "postgres",
        "HOST": PG_HOST,
        "PORT": PG_PORT,
        "CONN_MAX_AGE": None,
    },
}

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_uow",
    "benchmarks.benchapp",
]

_relay_mode = os.environ.get("UOW_BENCH_RELAY_ON_COMMIT", "off")
DJANGO_UOW = {
    "RELAY_ON_COMMIT": False if _relay_mode == "off" else _relay_mode,
    "REDIS_URL": REDIS_URL,
    "BATCH_SIZE": int(os.environ.get("UOW_BENCH_BATCH_SIZE", "500")),
    # Streams uncapped, like the hand-written XADD relay, so entries can be counted.
    "STREAM_MAXLEN": int(os.environ["UOW_BENCH_STREAM_MAXLEN"])
    if os.environ.get("UOW_BENCH_STREAM_MAXLEN")
    else None,
    "NOTIFY": os.environ.get("UOW_BENCH_NOTIFY") == "1",
}
# Set by the soak only when the installed django-uow knows the setting. The soak wants a
# deadline far below a minute on purpose (its run is short), so the warning is silenced.
if os.environ.get("UOW_BENCH_HANDLER_DEADLINE"):
    DJANGO_UOW["HANDLER_DEADLINE"] = float(os.environ["UOW_BENCH_HANDLER_DEADLINE"])
    SILENCED_SYSTEM_CHECKS = ["django_uow.W041"]
if os.environ.get("UOW_BENCH_PUBLISHERS"):
    DJANGO_UOW["PUBLISHERS"] = os.environ["UOW_BENCH_PUBLISHERS"].split(",")

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"django_uow": {"handlers": ["null"], "level": "WARNING", "propagate": False}},
}
