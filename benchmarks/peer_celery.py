"""django-celery-outbox's Celery app: ``send_task`` inside a transaction writes a row."""

from __future__ import annotations

from django_celery_outbox.app import OutboxCelery

app = OutboxCelery("benchmarks_peers")
app.config_from_object("django.conf:settings", namespace="CELERY")
