"""Flushing registered changes at commit: inserts batched per model, then updates, then deletes."""

from __future__ import annotations

from django.db import connections, models

from ..db.features import features
from .journal import Journal, identity_key


def flush_changes(journal: Journal, using: str) -> None:
    _insert_new(journal, using)
    _update_dirty(journal)
    _delete_removed(journal, using)


def _insert_new(journal: Journal, using: str) -> None:
    """Insert objects registered new: one ``bulk_create`` per model where possible.

    ``bulk_create`` skips ``save()`` overrides and ``pre/post_save`` signals; models
    using multi-table inheritance, and databases that cannot return new pks from a
    bulk insert, fall back to ``save()`` per object.
    """
    pending = [obj for obj in journal.new if obj._state.adding]
    journal.new.clear()
    if not pending:
        return
    can_bulk = features(connections[using]).bulk_insert_returns_pks
    groups: dict[type[models.Model], list[models.Model]] = {}
    for obj in pending:
        groups.setdefault(type(obj), []).append(obj)
    for model, objs in groups.items():
        if can_bulk and not model._meta.parents:
            model._base_manager.using(using).bulk_create(objs)
        else:
            for obj in objs:
                obj.save(using=using)
        for obj in objs:
            obj.__dict__["_uow_unsaved_events"] = False
            journal.load(obj)


def _update_dirty(journal: Journal) -> None:
    deleted = {id(obj) for obj in journal.deleted}
    for obj in list(journal.identity.values()):
        if id(obj) in deleted or obj._state.adding:
            continue
        changed = journal.changed_fields(obj)
        if changed is None:
            obj.save()
        elif changed:
            obj.save(update_fields=changed)
        else:
            continue
        journal.refresh_snapshot(obj)


def _delete_removed(journal: Journal, using: str) -> None:
    for obj in journal.deleted:
        if obj.pk is None:
            continue
        key = identity_key(obj)
        obj.delete(using=using)
        journal.identity.pop(key, None)
