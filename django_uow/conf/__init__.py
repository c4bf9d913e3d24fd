"""The settings: one ``DJANGO_UOW`` dict, each key declared once (``schema``) with the
rule its value must follow (``rules``). ``uow_settings`` is what the code reads."""

from __future__ import annotations

from .schema import (
    DEFAULTS,
    RelayOnCommit,
    Setting,
    UowSettings,
    as_timedelta,
    retention_by_type,
    unknown_key_message,
    validate_keys,
)

uow_settings = UowSettings()

__all__ = [
    "DEFAULTS",
    "RelayOnCommit",
    "Setting",
    "UowSettings",
    "as_timedelta",
    "retention_by_type",
    "unknown_key_message",
    "uow_settings",
    "validate_keys",
]
