"""``async with UnitOfWork()``: a unit of work for coroutines, on one thread of its own.

Django runs its async ORM methods (``aget``, ``asave``, ``acreate``, a queryset's
``a*``) through ``sync_to_async(thread_sensitive=True)``: on the thread the current
thread-sensitive scope names, so on that thread's connection. A root async unit opens a
scope of its own with one thread, so its transaction and every ORM call awaited inside
it share one connection, inside an ASGI request or under bare ``asyncio.run`` alike,
while other tasks keep theirs. A nested unit (a savepoint) runs on its parent's thread.

That thread answers only the task that opened the unit (and the helper tasks the unit
itself starts): another task (``gather``, ``create_task``) that inherited the scope is
refused, since its statements would land in a transaction it does not own, interleaved
with the owner's. Entering and leaving a unit run to their end on its thread even when
the task is cancelled (a client disconnect): the unit rolls back, then the cancellation
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Self, TypeVar

from asgiref.sync import AsyncToSync, SyncToAsync, ThreadSensitiveContext, sync_to_async
from django.db import connections, transaction

from ..context import current_uow, open_units, pop_unit
from ..exceptions import UnitOfWorkContextError

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

P = ParamSpec("P")
T = TypeVar("T")

_MISSING: Any = object()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def in_async_context() -> bool:
    """True where Django refuses sync database calls: a thread running an event loop."""
    return running_loop() is not None and not os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")


def _current_task() -> asyncio.Task[Any] | None:
    return asyncio.current_task() if running_loop() is not None else None


def another_task(label: str, action: str) -> UnitOfWorkContextError:
    return UnitOfWorkContextError(
        f"Cannot {action}: {label} belongs to the asyncio task that opened it, and this is "
        "another task (started with asyncio.gather(), create_task() or a TaskGroup inside "
        "the unit, which inherits it). Its statements would run in a transaction it does "
        "not own, interleaved with the owner's. Await the work in the task that opened the "
        "unit, give the other task a unit of its own by starting it outside this one, or "
        "await the tasks only after the unit ends."
    )


#: Idle unit threads kept for the next units (with their connections, as
#: ``CONN_MAX_AGE`` allows, and the fast path's broker connection); more are ended.
IDLE_THREADS = 16
_idle: list[ThreadPoolExecutor] = []
_idle_lock = threading.Lock()


def _take_thread() -> ThreadPoolExecutor:
    with _idle_lock:
        if _idle:
            return _idle.pop()
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="django-uow-unit")


def _give_back(thread: ThreadPoolExecutor) -> None:
    with _idle_lock:
        if len(_idle) < IDLE_THREADS:
            _idle.append(thread)
            return
    thread.shutdown(wait=False)


def _forget_idle_threads() -> None:
    # A forked child has none of its parent's threads: their executors would never run.
    _idle.clear()


os.register_at_fork(after_in_child=_forget_idle_threads)


class UnitThread(Executor):
    """The one thread of a root async unit while it runs: work for the unit's task only."""

    def __init__(self, label: str, owner: asyncio.Task[Any]) -> None:
        self.label = label
        self.owner = owner
        #: Tasks the unit itself starts to run its entry and exit to the end.
        self.helpers: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.finished = False
        #: Its connections were left in a state no later unit may inherit.
        self.spoiled = False
        self._pool = _take_thread()

    def admits(self, task: asyncio.Task[Any] | None) -> bool:
        return task is self.owner or (task is not None and task in self.helpers)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if self.finished:
            raise UnitOfWorkContextError(
                f"{self.label} has ended, but a task started inside it still makes database "
                "calls through it. Await the tasks a unit starts before it ends, or start "
                "them outside it."
            )
        if not self.admits(_current_task()):
            raise another_task(self.label, "make a database call in this unit of work")
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """End this unit's use of the thread; the thread waits for the next unit."""
        if not self.finished:
            self.finished = True
            if self.spoiled:
                self._pool.shutdown(wait=False)
            else:
                _give_back(self._pool)


class _Scope:
    """A root async unit's thread-sensitive scope, set in its task's context.

    asgiref picks the thread of a thread-sensitive call from a context variable, and a
    parked ``async_to_sync`` caller goes first; the scope points the first at the unit's
    thread and hides the second, and puts both back when the unit ends.
    """

    def __init__(self, thread: UnitThread) -> None:
        self.thread = thread
        self.key = ThreadSensitiveContext()
        SyncToAsync.context_to_thread_executor[self.key] = thread
        self._token = SyncToAsync.thread_sensitive_context.set(self.key)
        self._bridge = getattr(AsyncToSync.executors, "current", None)
        AsyncToSync.executors.current = None

    def close(self) -> None:
        with contextlib.suppress(ValueError):  # left from another context than entered in
            SyncToAsync.thread_sensitive_context.reset(self._token)
        AsyncToSync.executors.current = self._bridge
        # Kept in asgiref's map: a task that outlives the unit is refused, not re-routed.
        self.thread.shutdown(wait=False)


async def run_to_end(fn: Callable[[], T], thread: UnitThread | None) -> T:
    """Run ``fn`` on the unit's thread and wait for its end even if this task is cancelled
    meanwhile; then the cancellation goes on."""
    try:
        return await sync_to_async(fn)()
    except asyncio.CancelledError:
        # asgiref stopped waiting, but the call goes on on the unit's thread: a no-op queued
        # behind it ends when it does. The caller mends the context (asgiref copied it
        # back before the call ended).
        await _shielded(_nothing, thread)
        raise


def _nothing() -> None:
    return None


async def _shielded(fn: Callable[[], T], thread: UnitThread | None) -> T:
    """``fn`` on the unit's thread in a helper task, awaited to its end through any number
    of cancellations (re-raised after)."""
    helper = asyncio.get_running_loop().create_task(sync_to_async(fn)())
    if thread is not None:
        thread.helpers.add(helper)
    cancelled = False
    while not helper.done():
        try:
            await asyncio.wait({helper})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        error = helper.exception()
        raise asyncio.CancelledError() from error
    return helper.result()


def _changes(before: contextvars.Context) -> dict[contextvars.ContextVar[Any], tuple[Any, Any]]:
    """The context variables set since ``before``: their value then, and now."""
    return {
        var: (before.get(var, _MISSING), value)
        for var, value in contextvars.copy_context().items()
        if before.get(var, _MISSING) is not value
    }


def _undo(changes: dict[contextvars.ContextVar[Any], tuple[Any, Any]]) -> None:
    """Put back what a unit's entry set and nothing changed since (its correlation id:
    the entry's tokens belong to the helper's context, so they cannot reset here)."""
    for var, (old, new) in changes.items():
        if var.get(_MISSING) is not new:
            continue
        if old is _MISSING:
            try:
                old = contextvars.Context().run(var.get)  # its default
            except LookupError:
                continue  # none: it cannot be unset, and nothing reads it unset
        var.set(old)


class AsyncEntry:
    """The ``async with`` half of ``UnitOfWork``, and the checks that keep a unit where its
    transaction is: one thread, and (entered with ``async with``) one task."""

    #: The task that entered this unit with ``async with``; None for a sync unit.
    _async_owner: asyncio.Task[Any] | None = None
    #: The root async unit's thread, shared by its savepoints.
    _unit_thread: UnitThread | None = None
    #: The scope this unit opened (a root async unit only).
    _scope: _Scope | None = None
    #: The thread this unit began on, and its connection there.
    _thread_id: int | None = None
    _connection: BaseDatabaseWrapper | None = None

    if TYPE_CHECKING:
        using: str
        label: str

        @property
        def is_active(self) -> bool: ...

        def begin(self) -> Any: ...

        def commit(self) -> None: ...

        def rollback(self) -> None: ...

        def _entry_unit(self) -> Self: ...

        def _exit(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> Literal[False]: ...

    # -- async with -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        task = _current_task()
        if task is None:
            raise UnitOfWorkContextError(
                "`async with UnitOfWork()` needs an asyncio task; await it in a coroutine."
            )
        unit = self._entry_unit()
        await unit._open_async(task)
        entries: dict[asyncio.Task[Any], list[Any]] = self.__dict__.setdefault("_async_entries", {})
        entries.setdefault(task, []).append(unit)
        return unit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        task = _current_task()
        entries: dict[Any, list[AsyncEntry]] = self.__dict__.get("_async_entries", {})
        stack = entries.get(task)
        if not stack:
            raise UnitOfWorkContextError(
                "UnitOfWork.__aexit__() without a matching __aenter__() in this task: leave "
                "an `async with` unit in the task that entered it."
            )
        unit = stack.pop()
        if not stack:
            del entries[task]
        return await unit._close_async(exc_type, exc, tb)

    async def acommit(self) -> None:
        """Commit now, from a coroutine (``commit()`` on the unit's thread)."""
        await run_to_end(self.commit, self._unit_thread)

    async def arollback(self) -> None:
        """Roll back now, from a coroutine; the ``async with`` block then exits quietly."""
        await run_to_end(self.rollback, self._unit_thread)

    async def _open_async(self, task: asyncio.Task[Any]) -> None:
        parent: AsyncEntry | None = current_uow(self.using)
        if parent is None:
            await self._refuse_an_enclosing_transaction()
            self._scope = _Scope(UnitThread(self.label, task))
            self._unit_thread = self._scope.thread
        elif parent._async_owner is not None:
            if not parent._admits(task):
                raise another_task(parent.label, "open a unit of work inside it")
            self._unit_thread = parent._unit_thread
        elif getattr(AsyncToSync.executors, "current", None) is None:
            raise UnitOfWorkContextError(
                f"Cannot open {self.label} inside {parent.label}: that sync unit of work was "
                "left open across an await (begun through sync_to_async), so the two would "
                "interleave on one connection. Finish the sync unit in the call that began "
                "it, or open this one as `async with` only."
            )
        self._async_owner = task
        before = contextvars.copy_context()
        try:
            await run_to_end(self.begin, self._unit_thread)
        except BaseException as error:
            if self.is_active:  # cancelled while it began: it began all the same
                await _shielded(
                    functools.partial(
                        self._exit_on_thread, type(error), error, error.__traceback__
                    ),
                    self._unit_thread,
                )
            self._forget(_changes(before))
            self._release()
            raise
        self.__dict__["_context_changes"] = _changes(before)

    async def _close_async(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        try:
            return await run_to_end(
                functools.partial(self._exit_on_thread, exc_type, exc, tb), self._unit_thread
            )
        finally:
            self._forget(self.__dict__.pop("_context_changes", {}))
            self._release()

    def _forget(self, changes: dict[contextvars.ContextVar[Any], tuple[Any, Any]]) -> None:
        """Take this unit out of the task's context: what its entry set, and the unit
        itself with any left open inside it (an exit refused or cancelled half-way)."""
        _undo(changes)
        stack = open_units()
        if self in stack:
            for unit in stack[stack.index(self) :]:
                pop_unit(unit, None)

    def _exit_on_thread(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        try:
            return self._exit(exc_type, exc, tb)
        finally:
            if self._scope is not None:
                self._leave_thread_clean(self._scope.thread)

    @staticmethod
    def _leave_thread_clean(thread: UnitThread) -> None:
        """As at a request's end, close the unit thread's broken connections and those past
        ``CONN_MAX_AGE``: its next unit reuses the rest. A connection still inside a
        transaction (an exit refused half-way) is closed, which rolls it back on the
        server, and the thread is not reused."""
        for connection in connections.all(initialized_only=True):
            if connection.in_atomic_block:
                thread.spoiled = True
                connection.close()
            else:
                connection.close_if_unusable_or_obsolete()

    def _release(self) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            scope.close()

    async def _refuse_an_enclosing_transaction(self) -> None:
        """Under ``async_to_sync``, refuse to open beside the caller's open transaction."""
        if getattr(AsyncToSync.executors, "current", None) is None:
            return
        using = self.using

        def in_transaction() -> bool:
            return bool(transaction.get_connection(using).in_atomic_block)

        if await sync_to_async(in_transaction)():
            raise UnitOfWorkContextError(
                f"{self.label} was entered through async_to_sync() from sync code inside a "
                "transaction no unit of work owns (transaction.atomic(), ATOMIC_REQUESTS, a "
                "test case's transaction): it would commit on a connection of its own, "
                "outside that transaction. Make the enclosing transaction a unit of work "
                "(this one then is its savepoint), or enter this one outside it (in tests: "
                "django_db(transaction=True))."
            )

    # -- the checks the sync methods make ---------------------------------------------

    def _admits(self, task: asyncio.Task[Any] | None) -> bool:
        if task is self._async_owner:
            return True
        thread = self._unit_thread
        return thread is not None and thread.admits(task)

    def _note_thread(self, parent: AsyncEntry | None) -> None:
        """At ``begin()``: refuse where this unit's transaction cannot be; note its thread."""
        here = threading.get_ident()
        if self._async_owner is None and in_async_context():
            raise UnitOfWorkContextError(
                f"{self.label}: `with UnitOfWork()` inside a coroutine would run its "
                "statements on the event loop's thread, which Django refuses. Use "
                "`async with UnitOfWork() as uow:`, or put @unit_of_work on the async def."
            )
        if parent is not None and parent._thread_id not in (None, here):
            raise UnitOfWorkContextError(
                f"{self.label} was opened on another thread than {parent.label}, which it is "
                "nested in: each thread has its own connection, so it would not be part of "
                "that transaction. Call the code that opens it on the unit's own thread "
                "(sync_to_async with the default thread_sensitive=True), not in a thread "
                "pool."
            )
        self._thread_id = here
        self._connection = transaction.get_connection(self.using)

    def _check_caller(self, action: str, *, advice: str = "") -> None:
        """Refuse ``action`` from where this unit's transaction is not.

        ``advice`` (the coroutine form, e.g. ``await uow.acommit()``) marks an action that
        runs statements, which a coroutine must not run on the event loop's thread.
        """
        if self._thread_id is None or self._thread_id == threading.get_ident():
            return
        if running_loop() is None:
            raise UnitOfWorkContextError(
                f"Cannot {action}: {self.label} runs on another thread, whose connection "
                "holds its transaction. Use it on that thread, or (entered with "
                "`async with`) from the task that opened it."
            )
        if self._async_owner is not None and not self._admits(_current_task()):
            raise another_task(self.label, action)
        if advice:
            raise UnitOfWorkContextError(
                f"Cannot {action} with the sync method from a coroutine: it runs statements, "
                f"and the unit's connection is on its own thread. Use `{advice}`."
            )

    def _hook_connection(self) -> BaseDatabaseWrapper:
        """The connection holding this unit's transaction, for ``on_commit`` hooks: its
        own thread's, even when the hook is registered from the unit's coroutine."""
        if self._connection is not None and self._thread_id != threading.get_ident():
            return self._connection
        connection: BaseDatabaseWrapper = transaction.get_connection(self.using)
        return connection
