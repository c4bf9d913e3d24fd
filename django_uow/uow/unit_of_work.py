"""``UnitOfWork``: one business transaction, its aggregates and its events.

A unit of work wraps ``transaction.atomic``. The outermost one on a database owns a
journal of what happened inside; nested ones are savepoints that share it. On a clean
exit the outermost one flushes registered changes, checks invariants, runs
``before_commit`` hooks and writes every recorded event to the outbox in one INSERT,
all inside the transaction. After the real COMMIT, the relay fast path runs.
"""

from __future__ import annotations

import contextvars
import datetime
import threading
import time
import uuid
from collections.abc import Callable
from enum import Enum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from django.db import connections, models, transaction

from .. import signals
from ..conf import uow_settings
from ..context import current_uow as _current_unit
from ..context import open_units, pop_unit, push_unit
from ..db.timeouts import Restore, apply_limits, is_timeout
from ..events.base import (
    DomainEvent,
    StagedEvent,
    check_aggregate_id,
    ensure_correlation,
    reset_event_context,
)
from ..exceptions import NoActiveUnitOfWork, UnitOfWorkError, UnitOfWorkTimeout
from ..locking.fields import version_field_or_none
from ..locking.writes import touch
from .async_unit import AsyncEntry
from .flush import flush_changes
from .journal import Journal, Mark, identity_key

if TYPE_CHECKING:
    from ..models import OutboxEvent
    from ..outbox.writing import Schedule

__all__ = ["Repository", "UnitOfWork", "current_uow"]


M = TypeVar("M", bound=models.Model)


def current_uow(using: str | None = None) -> UnitOfWork | None:
    """Return the innermost active unit of work of this thread/context (on ``using``), or None."""
    unit: UnitOfWork | None = _current_unit(using)
    return unit


class _State(Enum):
    NEW = "new"
    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"


#: Guards the claim of a fresh UnitOfWork object by its first ``with`` entry.
_claim_lock = threading.Lock()


class UnitOfWork(AsyncEntry):
    """One business transaction on database ``using``; nested, a savepoint.

    Use it as ``with UnitOfWork() as uow:`` (in a coroutine ``async with``, see
    ``async_unit``), or call ``begin()`` and later ``commit()`` / ``rollback()``. An
    exception leaving the block rolls back and propagates unchanged. A unit marked for
    rollback (``transaction.set_rollback(True)``, or a database error caught inside it)
    rolls back at exit, as ``atomic`` does.

    Like ``atomic``, one object can be entered again while it is open (the inner entry
    is a savepoint), again after it finished, and from several threads at once: each
    ``with`` entry after the first runs a unit of its own, which ``as`` names.
    """

    def __init__(
        self,
        using: str = "default",
        *,
        savepoint: bool = True,
        timeout: float | None = None,
        label: str | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"UnitOfWork(timeout={timeout!r}): a time limit is seconds > 0.")
        self.using = using
        self.savepoint_enabled = savepoint
        self.timeout = timeout
        self.label = label or f"UnitOfWork on {using!r}"
        #: The time limit in force for this unit (its own, or the root's), and its end.
        self.limit: float | None = None
        self._deadline: float | None = None
        self._restore_limits: Restore | None = None
        self.id = uuid.uuid4()
        self._state = _State.NEW
        self._parent: UnitOfWork | None = None
        self._root: UnitOfWork = self
        self._journal = Journal()
        self._mark: Mark | None = None
        self._atomic: transaction.Atomic | None = None
        self._token: contextvars.Token[tuple[Any, ...]] | None = None
        self._context_token: Any = None
        self._on_rollback: list[Callable[[], Any]] = []
        self._claimed = False
        self._entries = threading.local()

    # -- lifecycle ----------------------------------------------------------------

    def begin(self) -> UnitOfWork:
        """Open the transaction (or savepoint, when nested) and make this the current UoW."""
        if self._state is not _State.NEW:
            raise UnitOfWorkError(
                f"This UnitOfWork is already {self._state.value}; create a new one for "
                "another transaction."
            )
        self._parent = current_uow(self.using)
        self._note_thread(self._parent)
        if self._parent is not None:
            self._root = self._parent._root
            self._journal = self._root._journal
            self._mark = self._journal.mark()
        self._atomic = transaction.atomic(using=self.using, savepoint=self.savepoint_enabled)
        self._atomic.__enter__()
        try:
            self._start_clock()
        except BaseException:
            self._atomic.__exit__(None, None, None)
            raise
        self._token = push_unit(self)
        if self._parent is None:
            self._context_token = ensure_correlation(str(self.id))
        self._state = _State.ACTIVE
        return self

    def _entry_unit(self) -> UnitOfWork:
        """The unit a ``with`` entry runs: this one first, a fresh one for each later entry."""
        with _claim_lock:
            first = not self._claimed and self._state is _State.NEW
            self._claimed = True
        # State lives per entry: a reused object runs each later entry as a unit of its own.
        if first:
            return self
        return UnitOfWork(
            self.using, savepoint=self.savepoint_enabled, timeout=self.timeout, label=self.label
        )

    def __enter__(self) -> UnitOfWork:
        unit = self._entry_unit()
        unit.begin()
        entries: list[UnitOfWork] = self._entries.__dict__.setdefault("stack", [])
        entries.append(unit)
        return unit

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        entries: list[UnitOfWork] = self._entries.__dict__.get("stack", [])
        unit = entries.pop() if entries else self
        return unit._exit(exc_type, exc, tb)

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if self._state is not _State.ACTIVE:
            return False  # finished early by commit() or rollback()
        try:
            if exc_type is None:
                self.commit()
            else:
                self._finish_with_rollback(exc_type, exc, tb)
        except BaseException as error:
            timeout = self._as_timeout(error)
            if timeout is not None:
                raise timeout from error
            raise
        timeout = self._as_timeout(exc)
        if timeout is not None:
            raise timeout from exc
        return False

    # -- time limits ----------------------------------------------------------------

    def _start_clock(self) -> None:
        """Set the database's limits for this unit: the root's, or a nested one's lower one."""
        parent_limit = self._parent.limit if self._parent is not None else None
        parent_deadline = self._parent._deadline if self._parent is not None else None
        wanted = self.timeout
        if self._parent is None and wanted is None:
            wanted = uow_settings.TIMEOUT
        self.limit, self._deadline = parent_limit, parent_deadline
        if wanted is None:
            return
        now = time.monotonic()
        if parent_deadline is not None and now + wanted >= parent_deadline:
            return  # a nested unit inherits the root's limit and cannot raise it
        self.limit, self._deadline = wanted, now + wanted
        self._restore_limits = apply_limits(connections[self.using], wanted)

    def _end_clock(self) -> None:
        restore, self._restore_limits = self._restore_limits, None
        if restore is None or connections[self.using].needs_rollback:
            return  # a broken transaction runs no statement; its end resets the limits
        if self._parent is not None and self._parent.limit is not None:
            apply_limits(connections[self.using], self._parent.limit)  # the root's again
        else:
            restore()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _as_timeout(self, error: BaseException | None) -> UnitOfWorkTimeout | None:
        """The ``UnitOfWorkTimeout`` that ``error`` means for this unit, if any."""
        if error is None or self.limit is None or isinstance(error, UnitOfWorkTimeout):
            return None
        if self._restore_limits is None and self._parent is not None:
            return None  # the unit that set the limit reports it
        vendor = connections[self.using].vendor
        if not is_timeout(error, vendor):
            return None
        return UnitOfWorkTimeout(self.label, self.limit, f"the database stopped it: {error}")

    @property
    def is_root(self) -> bool:
        return self._root is self

    @property
    def is_active(self) -> bool:
        return self._state is _State.ACTIVE

    @property
    def state(self) -> Literal["new", "active", "committed", "rolled back"]:
        """Where this unit is: ``"new"``, ``"active"``, ``"committed"`` or ``"rolled back"``."""
        return self._state.value

    def _require_innermost(self, action: str) -> None:
        if self._state is not _State.ACTIVE:
            raise UnitOfWorkError(f"Cannot {action}: this UnitOfWork is {self._state.value}.")
        self._check_caller(action, advice=f"await uow.a{action.replace(' ', '')}()")
        stack = open_units()
        if not stack or stack[-1] is not self:
            raise UnitOfWorkError(
                f"Cannot {action} this UnitOfWork while a nested one is still open; finish "
                "the inner unit of work first."
            )

    def commit(self) -> None:
        """Write the events and commit (release the savepoint when nested).

        A unit marked for rollback (``transaction.set_rollback(True)``, or a database
        error caught inside it) rolls back instead, without raising, as ``atomic`` does.
        """
        self._require_innermost("commit")
        assert self._atomic is not None
        if self._marked_for_rollback():
            self._finish_with_rollback(None, None, None)
            return
        if self._restore_limits is not None and self._past_deadline():
            transaction.set_rollback(True, using=self.using)
            self._finish_with_rollback(None, None, None)
            assert self.limit is not None
            raise UnitOfWorkTimeout(
                self.label, self.limit, "its time was spent when it was about to commit"
            )
        if self.is_root:
            try:
                self._flush_and_stage()
            except BaseException as error:
                self._finish_with_rollback(type(error), error, error.__traceback__)
                raise
            if self._marked_for_rollback():  # a hook caught a database error
                self._finish_with_rollback(None, None, None)
                return
        self._pop()
        try:
            self._atomic.__exit__(None, None, None)
        except BaseException:
            self._end_clock()
            self._after_rollback()
            raise
        self._end_clock()
        self._state = _State.COMMITTED
        if self._parent is not None:
            self._parent._on_rollback.extend(self._on_rollback)
        else:
            self._after_commit()

    def _marked_for_rollback(self) -> bool:
        return bool(transaction.get_connection(self.using).needs_rollback)

    def rollback(self) -> None:
        """Roll back now; a surrounding ``with`` block then exits without raising."""
        self._require_innermost("roll back")
        transaction.set_rollback(True, using=self.using)
        self._finish_with_rollback(None, None, None)

    def _finish_with_rollback(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._atomic is not None
        self._pop()
        try:
            if exc_type is None:
                self._atomic.__exit__(None, None, None)  # set_rollback(True) makes this a rollback
            else:
                self._atomic.__exit__(exc_type, exc, tb)
        finally:
            self._end_clock()  # after the transaction (or savepoint) is over
            self._after_rollback()

    def _pop(self) -> None:
        reset_event_context(self._context_token)
        self._context_token = None
        pop_unit(self, self._token)
        self._token = None

    def _after_rollback(self) -> None:
        self._state = _State.ROLLED_BACK
        if self._mark is not None:
            self._journal.rollback_to(self._mark)
        else:
            self._journal.restore_to(0)
            self._discard_pending_events()
        for callback in self._on_rollback:
            callback()
        signals.uow_rolled_back.send(sender=UnitOfWork, uow=self)

    def _after_commit(self) -> None:
        self._discard_pending_events()

    def _discard_pending_events(self) -> None:
        """Clear the aggregates' pending lists: written (commit) or void (rollback)."""
        for owner, staged in self._journal.events:
            if owner is not None:
                pending = owner.__dict__.get("_uow_staged_events", [])
                if staged in pending:
                    pending.remove(staged)

    # -- staging --------------------------------------------------------------------

    def _flush_and_stage(self) -> None:
        # Imported here: `import django_uow` (which imports this module) must not load models.
        from ..outbox.writing import write_events

        journal = self._journal
        flush_changes(journal, self.using)
        for obj in list(journal.tracked):
            check = getattr(obj, "check_invariants", None)
            if callable(check):
                check()
        for hook in list(journal.before_commit):
            hook()
        rows, texts, schedules = self._outbox_rows()
        if rows:
            write_events(rows, self.using, texts, schedules)
            signals.events_staged.send(sender=UnitOfWork, uow=self, events=rows, using=self.using)
        using = self.using

        def after_commit() -> None:
            # The relay fast path is one receiver (connected in AppConfig.ready()).
            signals.uow_committed.send(sender=UnitOfWork, uow=self, events=rows, using=using)

        transaction.on_commit(after_commit, using=using)

    def _outbox_rows(self) -> tuple[list[OutboxEvent], list[str | None], list[Schedule]]:
        """The outbox rows of the recorded events, their payloads' JSON text, and when each
        is due (the database's clock fills the times at the INSERT)."""
        # Imported here: `import django_uow` (which imports this module) must not load models.
        from ..outbox.writing import Schedule, new_row

        rows: list[OutboxEvent] = []
        texts: list[str | None] = []
        schedules: list[Schedule] = []
        touched: set[int] = set()
        for owner, staged in self._journal.events:
            aggregate_type = aggregate_id = ""
            version: int | None = None
            if owner is not None:
                if owner.__dict__.get("_uow_unsaved_events") and id(owner) not in touched:
                    touched.add(id(owner))
                    self._persist_event_only_change(owner)
                aggregate_type = owner._meta.label_lower
                pk = owner.pk if owner.pk is not None else owner.__dict__.get("_uow_deleted_pk")
                aggregate_id = "" if pk is None else str(pk)
                check_aggregate_id(staged.event_type, aggregate_id)  # a pk given after record
                field = version_field_or_none(owner)
                version = None if field is None else getattr(owner, field.attname)
            rows.append(
                new_row(
                    {
                        "event_id": staged.event_id,
                        "event_type": staged.event_type,
                        "aggregate_type": aggregate_type,
                        "aggregate_id": aggregate_id,
                        "aggregate_version": version,
                        "occurred_at": staged.occurred_at,
                        "payload": staged.payload,
                        "headers": staged.headers,
                        "available_at": staged.deliver_at or staged.occurred_at,
                        "created_at": staged.occurred_at,
                        "deliver_at": staged.deliver_at,
                    }
                )
            )
            texts.append(staged.payload_json)
            if staged.delay is not None:
                schedules.append(Schedule(delay=staged.delay))
            else:
                schedules.append(Schedule(deliver_at=staged.deliver_at))
        return rows, texts, schedules

    def _persist_event_only_change(self, owner: Any) -> None:
        if owner._state.adding or owner.pk is None:
            types = ", ".join(sorted({s.event_type for s in owner._uow_staged}))
            raise UnitOfWorkError(
                f"A new {owner._meta.label} recorded {types} but was never saved in this unit "
                "of work, so its events have no aggregate id. Save it (or uow.add() it) "
                "before the unit of work commits."
            )
        touch(owner, self.using)
        owner.__dict__["_uow_unsaved_events"] = False

    # -- public helpers -------------------------------------------------------------

    def record_event(
        self,
        event: DomainEvent,
        *,
        delay: datetime.timedelta | float | None = None,
        deliver_at: datetime.datetime | None = None,
    ) -> None:
        """Record an event that belongs to no aggregate (``delay``/``deliver_at`` schedule it)."""
        self._require_active("record an event")
        staged = StagedEvent.from_event(event, delay=delay, deliver_at=deliver_at)
        self._journal.log_event(None, staged)

    def add(self, obj: models.Model) -> None:
        """Track ``obj``: a new object is inserted at commit, an existing one saved if changed."""
        self._require_active("add an object")
        if obj._state.adding:
            self._journal.register_new(obj)
        else:
            self._journal.register_existing(obj)

    def remove(self, obj: models.Model) -> None:
        """Delete ``obj`` at commit (version-checked for versioned models)."""
        self._require_active("remove an object")
        self._journal.register_deleted(obj)

    def repository(self, model: type[M]) -> Repository[M]:
        """A repository of ``model`` bound to this unit of work's identity map."""
        return Repository(self, model)

    def savepoint(self) -> UnitOfWork:
        """A nested scope: if it rolls back, the events recorded inside it are discarded."""
        self._require_active("open a savepoint")
        return UnitOfWork(self.using, savepoint=True)

    def before_commit(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Run ``fn`` inside the transaction just before the events are written."""
        self._require_active("register a before_commit hook")
        self._journal.before_commit.append(fn)
        return fn

    def on_commit(self, fn: Callable[[], Any], *, robust: bool = False) -> Callable[[], Any]:
        """Run ``fn`` after the real COMMIT (``transaction.on_commit``)."""
        self._require_active("register an on_commit hook")
        self._hook_connection().on_commit(fn, robust=robust)
        return fn

    def on_rollback(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Run ``fn`` after this unit of work (or an enclosing one) rolls back."""
        self._require_active("register an on_rollback hook")
        self._on_rollback.append(fn)
        return fn

    def _require_active(self, action: str) -> None:
        if self._state is not _State.ACTIVE:
            raise NoActiveUnitOfWork(
                f"Cannot {action}: this UnitOfWork is {self._state.value}. Do it inside "
                "the `with UnitOfWork():` block."
            )
        self._check_caller(action)

    @property
    def new(self) -> list[models.Model]:
        return list(self._journal.new)

    @property
    def dirty(self) -> list[models.Model]:
        return self._journal.dirty()

    @property
    def deleted(self) -> list[models.Model]:
        return list(self._journal.deleted)

    @property
    def events(self) -> list[DomainEvent]:
        """Every event recorded so far in this transaction, in record order."""
        return [staged.event for _, staged in self._journal.events]

    @property
    def tracked(self) -> list[models.Model]:
        return list(self._journal.tracked)

    # -- hooks used by the models -------------------------------------------------------

    def _track_event(self, owner: models.Model, staged: StagedEvent) -> None:
        self._journal.log_event(owner, staged)

    def _is_tracked(self, obj: models.Model) -> bool:
        return self._journal.is_tracked(obj)

    def _remember(self, obj: models.Model) -> None:
        self._journal.remember(obj)

    def _track_written(self, obj: models.Model) -> None:
        self._journal.track(obj)
        self._journal.refresh_snapshot(obj)

    def __repr__(self) -> str:
        kind = "root" if self.is_root else "savepoint"
        return f"<UnitOfWork {kind} using={self.using!r} {self._state.value}>"


class Repository(Generic[M]):
    """Loads ``model`` rows through a unit of work: one instance per row, changes tracked."""

    def __init__(self, uow: UnitOfWork, model: type[M]) -> None:
        self.uow = uow
        self.model = model

    def _queryset(self) -> models.QuerySet[M]:
        return self.model._default_manager.using(self.uow.using)

    def _cached(self, pk: Any) -> M | None:
        key = (self.model._meta.label, self.model._meta.pk.to_python(pk))
        return cast("M | None", self.uow._journal.identity.get(key))

    def get(self, pk: Any) -> M:
        """The instance for ``pk``: from the identity map, or loaded once."""
        cached = self._cached(pk)
        if cached is not None:
            return cached
        return cast(M, self.uow._journal.load(self._queryset().get(pk=pk)))

    def get_for_update(self, pk: Any) -> M:
        """Like ``get`` but locks the row (``SELECT ... FOR UPDATE``) until commit."""
        row = self._queryset().select_for_update().get(pk=pk)
        cached = self._cached(pk)
        return cached if cached is not None else cast(M, self.uow._journal.load(row))

    def filter(self, *args: Any, **kwargs: Any) -> list[M]:
        journal = self.uow._journal
        return [cast(M, journal.load(obj)) for obj in self._queryset().filter(*args, **kwargs)]

    def add(self, obj: M) -> M:
        self.uow.add(obj)
        return obj

    def remove(self, obj: M) -> None:
        self.uow.remove(obj)


def refresh_snapshot_after_save(sender: Any, instance: models.Model, **kwargs: Any) -> None:
    """``post_save`` receiver: an explicit save inside a UoW makes the object clean again."""
    for uow in open_units():
        if identity_key(instance) in uow._journal.identity:
            uow._journal.refresh_snapshot(instance)
