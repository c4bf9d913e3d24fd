"""The journal of a unit of work: what it has seen, in order, with savepoint marks.

One journal belongs to an outermost unit of work; nested scopes (savepoints) share it
and remember how long each list was when they began, so a rolled-back scope can cut
back exactly what it added: its events, its new and deleted objects, its hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from ..events.base import StagedEvent
from ..locking.fields import VersionField, version_field_or_none


def identity_key(obj: models.Model) -> tuple[str, Any]:
    return (obj._meta.label, obj.pk)


def snapshot_of(obj: models.Model) -> dict[str, Any]:
    """The values of ``obj``'s concrete non-pk fields, to spot changes at commit."""
    return {
        f.attname: f.value_from_object(obj)
        for f in obj._meta.concrete_fields
        if not f.primary_key and not isinstance(f, VersionField)
    }


@dataclass(frozen=True)
class Remembered:
    """An object's bookkeeping before a write or an event inside a unit of work."""

    obj: models.Model
    pk: Any
    adding: bool
    version: int | None
    unsaved_events: bool

    @classmethod
    def of(cls, obj: models.Model) -> Remembered:
        field = version_field_or_none(obj)
        return cls(
            obj,
            obj.pk,
            obj._state.adding,
            None if field is None else getattr(obj, field.attname),
            bool(obj.__dict__.get("_uow_unsaved_events")),
        )

    def restore(self) -> None:
        obj = self.obj
        obj.pk = self.pk
        obj._state.adding = self.adding
        field = version_field_or_none(obj)
        if field is not None:
            setattr(obj, field.attname, self.version)
        obj.__dict__["_uow_unsaved_events"] = self.unsaved_events


@dataclass(frozen=True)
class Mark:
    events: int
    tracked: int
    new: int
    deleted: int
    before_commit: int
    remembered: int


@dataclass
class Journal:
    events: list[tuple[models.Model | None, StagedEvent]] = field(default_factory=list)
    tracked: list[models.Model] = field(default_factory=list)
    new: list[models.Model] = field(default_factory=list)
    deleted: list[models.Model] = field(default_factory=list)
    before_commit: list[Callable[[], Any]] = field(default_factory=list)
    # Objects' bookkeeping before each versioned write or event, oldest first, so a
    # rolled-back savepoint can put back the versions its database work undid.
    remembered: list[Remembered] = field(default_factory=list)
    identity: dict[tuple[str, Any], models.Model] = field(default_factory=dict)
    # id(obj) -> field values as loaded; None: compare nothing, save in full.
    snapshots: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    _tracked_ids: set[int] = field(default_factory=set)
    _logged_events: set[int] = field(default_factory=set)

    def mark(self) -> Mark:
        return Mark(
            len(self.events),
            len(self.tracked),
            len(self.new),
            len(self.deleted),
            len(self.before_commit),
            len(self.remembered),
        )

    def rollback_to(self, mark: Mark) -> None:
        """Forget everything recorded since ``mark``: its database work was rolled back."""
        for owner, staged in self.events[mark.events :]:
            self._logged_events.discard(id(staged))
            if owner is not None:
                pending = owner.__dict__.get("_uow_staged_events", [])
                if staged in pending:
                    pending.remove(staged)
        del self.events[mark.events :]
        for obj in self.tracked[mark.tracked :]:
            self._tracked_ids.discard(id(obj))
        del self.tracked[mark.tracked :]
        del self.new[mark.new :]
        del self.deleted[mark.deleted :]
        del self.before_commit[mark.before_commit :]
        self.restore_to(mark.remembered)

    def remember(self, obj: models.Model) -> None:
        self.remembered.append(Remembered.of(obj))

    def restore_to(self, position: int) -> None:
        """Put back each object's pk, version and event flag as they were at ``position``."""
        for entry in reversed(self.remembered[position:]):
            entry.restore()
        del self.remembered[position:]

    # -- tracking -----------------------------------------------------------------

    def is_tracked(self, obj: models.Model) -> bool:
        return id(obj) in self._tracked_ids

    def track(self, obj: models.Model) -> None:
        if id(obj) not in self._tracked_ids:
            self._tracked_ids.add(id(obj))
            self.tracked.append(obj)
        for staged in obj.__dict__.get("_uow_staged_events", ()):
            self.log_event(obj, staged)

    def log_event(self, owner: models.Model | None, staged: StagedEvent) -> None:
        if id(staged) not in self._logged_events:
            self._logged_events.add(id(staged))
            self.events.append((owner, staged))
        if owner is not None and id(owner) not in self._tracked_ids:
            self._tracked_ids.add(id(owner))
            self.tracked.append(owner)

    # -- identity map and change tracking -----------------------------------------

    def load(self, obj: models.Model) -> models.Model:
        """Return the one instance of this row in the unit of work, registering ``obj``."""
        key = identity_key(obj)
        existing = self.identity.get(key)
        if existing is not None:
            return existing
        self.identity[key] = obj
        self.snapshots[id(obj)] = snapshot_of(obj)
        self.track(obj)
        return obj

    def refresh_snapshot(self, obj: models.Model) -> None:
        if id(obj) in self.snapshots:
            self.snapshots[id(obj)] = snapshot_of(obj)

    def register_new(self, obj: models.Model) -> None:
        if not any(o is obj for o in self.new):
            self.new.append(obj)
        self.track(obj)

    def register_existing(self, obj: models.Model) -> None:
        key = identity_key(obj)
        existing = self.identity.get(key)
        if existing is not None and existing is not obj:
            raise ValueError(
                f"{key[0]} pk={key[1]!r} is already in this unit of work as another instance; "
                "use the instance returned by uow.repository(...).get()."
            )
        if existing is None:
            self.identity[key] = obj
            self.snapshots[id(obj)] = None  # unknown load state: saved in full at commit
        self.track(obj)

    def register_deleted(self, obj: models.Model) -> None:
        for i, candidate in enumerate(self.new):
            if candidate is obj:  # never inserted: just forget it
                del self.new[i]
                return
        if not any(o is obj for o in self.deleted):
            self.deleted.append(obj)
        self.track(obj)

    def changed_fields(self, obj: models.Model) -> list[str] | None:
        """Names of fields changed since load; ``None`` means "save every field"."""
        snapshot = self.snapshots.get(id(obj), {})
        if snapshot is None:
            return None
        current = snapshot_of(obj)
        return [
            obj._meta.get_field(attname).name
            for attname, value in current.items()
            if snapshot.get(attname, value) != value
        ]

    def dirty(self) -> list[models.Model]:
        deleted = {id(o) for o in self.deleted}
        result = []
        for obj in self.identity.values():
            if id(obj) in deleted or obj._state.adding:
                continue
            changed = self.changed_fields(obj)
            if changed is None or changed:
                result.append(obj)
        return result
