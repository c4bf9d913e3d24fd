"""The app config: wiring done once Django is ready (checks, receivers, discovery)."""

from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_save
from django.utils.translation import gettext_lazy as _

from . import checks  # noqa: F401 - registers the system checks
from .delivery.handlers import registry as handler_registry
from .events.base import registry as event_types
from .signals import uow_committed
from .uow.unit_of_work import refresh_snapshot_after_save


class DjangoUowConfig(AppConfig):
    name = "django_uow"
    label = "django_uow"
    verbose_name = _("Unit of work & outbox")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here: both import models, which wait for the app registry (this
        # module is loaded while it is being populated).
        from . import tasks  # noqa: F401 - registers the Celery tasks when Celery is installed
        from .relay.fastpath import relay_after_commit

        event_types.resolve_deferred()
        post_save.connect(refresh_snapshot_after_save, dispatch_uid="django_uow_snapshot")
        uow_committed.connect(relay_after_commit, dispatch_uid="django_uow_fast_path")
        # Every process (relay_outbox, a Celery worker, beat, a bare django.setup()
        # script) knows every handler, and the event classes their modules import,
        # before any relay decodes a row.
        handler_registry.autodiscover()
