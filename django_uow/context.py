"""The current unit of work: the per-thread/context stack of open units, and the write guard.

A leaf module, so models (which need "is a unit of work open?") and the unit of work
itself (which pushes onto the stack) can both import it without importing each other.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Protocol

from .exceptions import NoActiveUnitOfWork, UnitOfWorkContextError, UnitOfWorkError


class ActiveUnit(Protocol):
    """What models and tracking need of an open unit of work."""

    using: str

    def _track_event(self, owner: Any, staged: Any) -> None: ...

    def _track_written(self, obj: Any) -> None: ...

    def _is_tracked(self, obj: Any) -> bool: ...

    def _remember(self, obj: Any) -> None: ...


_stack: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
    "django_uow_stack", default=()
)


def open_units() -> tuple[Any, ...]:
    """Every open unit of work of this thread/context, outermost first."""
    return _stack.get()


def push_unit(unit: Any) -> contextvars.Token[tuple[Any, ...]]:
    """Make ``unit`` the innermost open unit; return the token for ``pop_unit``."""
    return _stack.set((*_stack.get(), unit))


def pop_unit(unit: Any, token: contextvars.Token[tuple[Any, ...]] | None) -> None:
    """Remove ``unit`` from the stack (by identity when exited from another context)."""
    if token is not None:
        try:
            _stack.reset(token)
            return
        except ValueError:  # exited from another context: drop it by identity below
            pass
    _stack.set(tuple(u for u in _stack.get() if u is not unit))


def current_uow(using: str | None = None) -> Any:
    """Return the innermost active unit of work of this thread/context (on ``using``), or None."""
    for uow in reversed(_stack.get()):
        if using is None or uow.using == using:
            return uow
    return None


def uow_guarding_write(obj: Any, using: str, operation: str) -> ActiveUnit | None:
    """Return the unit of work an aggregate write belongs to, or raise if events would be lost."""
    uow: ActiveUnit | None = current_uow(using)
    if uow is not None:
        thread = getattr(uow, "_thread_id", None)
        if thread is not None and thread != threading.get_ident():
            raise UnitOfWorkContextError(
                f"{obj._meta.label} pk={obj.pk!r} is being {operation}d on another thread than "
                f"its unit of work's ({uow!r}), whose connection holds the transaction: it "
                "would be written outside it. Write it on the unit's thread (in a coroutine: "
                f"`await obj.a{operation}()` in the task that opened the unit)."
            )
        return uow
    pending = obj.__dict__.get("_uow_staged_events") or []
    label = f"{obj._meta.label} pk={obj.pk!r}"
    stack = _stack.get()
    if stack and (pending or any(u._is_tracked(obj) for u in stack)):
        active = stack[-1].using
        raise UnitOfWorkError(
            f"{label} is being {operation}d on database {using!r} inside a UnitOfWork on "
            f"{active!r}. Its events must commit in the same transaction as its data: "
            f"{operation} it with using={active!r}, or open UnitOfWork(using={using!r})."
        )
    if pending:
        types = ", ".join(sorted({s.event_type for s in pending}))
        raise NoActiveUnitOfWork(
            f"{label} has {len(pending)} pending event(s) ({types}) but is being {operation}d "
            "outside a unit of work, so they would never be published. Wrap the operation in "
            "`with UnitOfWork():` or decorate it with @unit_of_work."
        )
    return None
