from django.apps import AppConfig


class AsyncAppConfig(AppConfig):
    """Async views and async handlers over the test app's models (no models of its own)."""

    name = "tests.asyncapp"
    label = "asyncapp"
