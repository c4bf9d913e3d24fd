from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_save
from django.utils.translation import gettext_lazy as _


class DjangoUowConfig(AppConfig):
    name = "django_uow"
    label = "django_uow"
    verbose_name = _("Unit of work & outbox")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
        from .events import registry
        from .unit_of_work import refresh_snapshot_after_save

        registry.resolve_deferred()
        post_save.connect(refresh_snapshot_after_save, dispatch_uid="django_uow_snapshot")
