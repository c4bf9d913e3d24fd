from __future__ import annotations

from django.apps import AppConfig


class BenchAppConfig(AppConfig):
    name = "benchmarks.benchapp"
    label = "benchapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .. import celery_app  # noqa: F401 - every process sends through the benchmark's app
        from . import handlers  # noqa: F401 - registers the benchmark's event handlers
