from django.apps import AppConfig


class AllocationConfig(AppConfig):
    """The allocation example of "Architecture Patterns with Python", on django-uow."""

    name = "tests.allocation"
    label = "allocation"
    default_auto_field = "django.db.models.BigAutoField"
