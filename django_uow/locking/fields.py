"""``VersionField``: the field that holds a model's version, whatever the model names it.

Every part of django-uow that reads or writes versions (saves, deletes,
``update_versioned``, event versions, ETags, the admin, change tracking) finds the
version through ``version_field_of(model)``, never through the name ``version``.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils.translation import gettext_lazy as _

#: The class attribute a model's version field registers itself under.
_ATTRIBUTE = "_uow_version_field"


class VersionField(models.PositiveBigIntegerField):  # type: ignore[type-arg]
    """A positive big integer that optimistic locking checks and increments.

    ``VersionedModel`` declares ``version = VersionField()``. To keep the version under
    another name, remove the inherited field and declare your own::

        class Product(AggregateRoot):
            version = None
            version_number = VersionField()

    A model has at most one. It migrates as a plain ``PositiveBigIntegerField``, so
    switching an existing column to it needs no migration.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("default", 1)
        kwargs.setdefault("help_text", _("Incremented by every save; guards against lost updates."))
        super().__init__(*args, **kwargs)

    def contribute_to_class(
        self, cls: type[models.Model], name: str, private_only: bool = False
    ) -> None:
        own = cls.__dict__.get(_ATTRIBUTE)
        if own is not None and own is not self:
            raise ImproperlyConfigured(
                f"{cls.__module__}.{cls.__qualname__} has more than one VersionField "
                f"({own.name!r} and {name!r}). A model keeps one version: to rename the "
                f"inherited one, write `{own.name} = None` in the class body."
            )
        super().contribute_to_class(cls, name, private_only=private_only)
        setattr(cls, _ATTRIBUTE, self)

    def deconstruct(self) -> Any:
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.PositiveBigIntegerField", args, kwargs


def version_field_of(model: Any) -> VersionField:
    """The ``VersionField`` of a model class or instance; ``TypeError`` if it has none."""
    field: VersionField | None = getattr(model, _ATTRIBUTE, None)
    if field is None:
        label = getattr(getattr(model, "_meta", None), "label", repr(model))
        raise TypeError(
            f"{label} has no VersionField: make it inherit django_uow.VersionedModel (or "
            "AggregateRoot), or declare a VersionField."
        )
    return field


def version_field_or_none(model: Any) -> VersionField | None:
    """The ``VersionField`` of a model class or instance, or None for unversioned models."""
    return getattr(model, _ATTRIBUTE, None)


def get_version(instance: Any) -> int:
    """The in-memory version of ``instance``."""
    version: int = getattr(instance, version_field_of(instance).attname)
    return version


def set_version(instance: Any, value: int) -> None:
    setattr(instance, version_field_of(instance).attname, value)
