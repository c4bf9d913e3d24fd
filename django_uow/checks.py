"""System checks for the ``DJANGO_UOW`` setting (ids ``django_uow.E0xx`` / ``W0xx``)."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .conf import DEFAULTS


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.conf import settings

    errors: list[checks.CheckMessage] = []
    user = getattr(settings, "DJANGO_UOW", None)
    if user is None:
        return errors
    if not isinstance(user, dict):
        return [
            checks.Error(
                f"DJANGO_UOW must be a dict, not {type(user).__name__}.",
                hint="Set DJANGO_UOW = {...} with the keys documented in the configuration page.",
                id="django_uow.E001",
            )
        ]
    for key in sorted(set(user) - set(DEFAULTS)):
        errors.append(
            checks.Error(
                f"DJANGO_UOW has an unknown key {key!r}.",
                hint=f"Valid keys: {', '.join(sorted(DEFAULTS))}.",
                id="django_uow.E002",
            )
        )
    return errors
