"""Optimistic locking: the version-checked UPDATE and DELETE behind ``VersionedModel``.

The happy path costs nothing extra: the UPDATE itself carries ``AND version = %s`` and
sets ``version = version + 1`` (``version`` being the model's ``VersionField``, whatever
its name). Only when it matches zero rows do we look further, to
say precisely what happened.
"""

from __future__ import annotations

from typing import Any

from django.db import models, transaction

from ..exceptions import ConcurrencyError
from .fields import get_version, version_field_of


def model_label(instance_or_model: Any) -> str:
    return str(instance_or_model._meta.label)


def conflict_error(
    instance: Any, using: str, expected: int | None, operation: str
) -> ConcurrencyError:
    """Build the error for a zero-row versioned write, reading the row's current version."""
    model = type(instance)
    current = (
        model._base_manager.using(using)
        .filter(pk=instance.pk)
        .values_list(version_field_of(model).attname, flat=True)
        .first()
    )
    return ConcurrencyError(
        model_label(instance),
        instance.pk,
        expected,
        actual_version=current,
        deleted=current is None,
        operation=operation,
    )


def versioned_update(
    instance: Any,
    base_qs: models.QuerySet[Any],
    pk_val: Any,
    values: list[tuple[models.Field[Any, Any], Any, Any]],
) -> int:
    """Run ``UPDATE ... SET <values>, version = v+1 WHERE pk = %s AND version = v``.

    Return the number of rows updated, and bump the in-memory version on success.
    """
    version_field: Any = version_field_of(instance)
    expected = getattr(instance, version_field.attname)
    values = [v for v in values if v[0] is not version_field]
    values.append((version_field, None, expected + 1))
    filtered: Any = base_qs.filter(pk=pk_val, **{version_field.attname: expected})
    updated: int = filtered._update(values)
    if updated:
        setattr(instance, version_field.attname, expected + 1)
    return updated


def versioned_delete_guard(instance: Any, using: str) -> None:
    """Lock and bump the row if it still has the expected version, else raise.

    Called inside the delete's transaction, before Django's collector deletes, so the
    row cannot change between the check and the DELETE.
    """
    name = version_field_of(instance).attname
    expected = getattr(instance, name)
    updated = (
        type(instance)
        ._base_manager.using(using)
        .filter(pk=instance.pk, **{name: expected})
        .update(**{name: expected + 1})
    )
    if not updated:
        raise conflict_error(instance, using, expected, "delete")


def touch(instance: Any, using: str) -> None:
    """Bump the version of a row whose aggregate recorded events without saving.

    The events of one aggregate are ordered by its version; this also makes two
    transactions recording events on the same aggregate conflict like two saves would.
    """
    with transaction.atomic(using=using, savepoint=False):
        updated = versioned_update(
            instance, type(instance)._base_manager.using(using), instance.pk, []
        )
    if not updated:
        raise conflict_error(instance, using, get_version(instance), "record events on")
