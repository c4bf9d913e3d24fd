"""The Celery app of the benchmark (Redis broker, DB given by UOW_BENCH_REDIS_DB)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")

app = Celery("benchmarks")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["django_uow"])  # lazily: django_uow.tasks needs the apps loaded
app.set_current()  # the fast path's enqueue_relay() sends through celery.current_app


@app.task(name="benchmarks.plain_effect")
def plain_effect(batch: str, seq: int) -> None:
    """Consumer throughput's baseline: a plain task doing the handler's database write."""
    from .benchapp.models import write_effect

    write_effect("plain", batch, seq)


@app.task(name="benchmarks.noop")
def noop(*args: object, **kwargs: object) -> None:
    """Target of the plain ``send_task`` loop; never needs to run to measure enqueue."""
