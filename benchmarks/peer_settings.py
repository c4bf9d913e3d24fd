"""Settings of the peer libraries' run: their own database (``uow_bench_peers``) and apps.

Only the peer environment (``make bench-env``, ``.venv-bench``) has these libraries; the
django-uow benchmark never imports this module.
"""

from __future__ import annotations

from benchmarks.settings import *  # noqa: F403

DATABASES["default"]["NAME"] = "uow_bench_peers"  # noqa: F405

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_celery_outbox",
    "jaiminho",
    "django_outbox_pattern",
    "concurrency",
    "benchmarks.peerapp",
]

CELERY_OUTBOX_APP = "benchmarks.peer_celery.app"
JAIMINHO_CONFIG = {
    # Write the row in the transaction and leave sending to the relay: the outbox way.
    "PUBLISH_STRATEGY": "keep-order",
    "DEFAULT_CAPTURE_EXCEPTION": lambda error: None,
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
DJANGO_UOW = {"RELAY_ON_COMMIT": False}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": True,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "root": {"handlers": ["null"], "level": "CRITICAL"},
}
