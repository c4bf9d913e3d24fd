"""The example shop project: ``python manage.py demo`` shows django-uow end to end."""

try:  # Celery is optional: without a broker the project relays events in-process.
    from .celery import app as celery_app
except ImportError:  # pragma: no cover - celery not installed
    celery_app = None

__all__ = ["celery_app"]
