"""Template filters for django-uow's admin templates."""

from __future__ import annotations

from typing import Any

from django import template

from ..locking.fields import get_version

register = template.Library()


@register.filter
def uow_version(obj: Any) -> int:
    """The version of a versioned object, whatever its ``VersionField`` is named."""
    return get_version(obj)
