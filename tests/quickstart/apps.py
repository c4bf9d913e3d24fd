from django.apps import AppConfig


class QuickstartConfig(AppConfig):
    name = "tests.quickstart"
    label = "quickstart"
    default_auto_field = "django.db.models.BigAutoField"
