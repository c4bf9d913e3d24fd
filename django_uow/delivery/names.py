"""Handler names: the default name of a callable, and when two registrations are one handler.

A handler's name is its identity in every process and across restarts: Celery task ids
are ``uuid5(event_id, name)`` and the inbox keys deliveries by ``(event_id, name)``. So:

- A default name is ``module.qualname``, given only to a callable for which that names
  one definition: a function (or a class) defined in a module, a class body or another
  function, also behind ``functools.wraps``. Lambdas, ``functools.partial`` objects,
  bound methods and callable objects need ``name=``: many of them share one qualname
  (or have none), and what tells them apart (the wrapped function, the instance) is not
  part of it.
- A name registered again replaces the handler (newest wins) only for the same event
  type and the same definition: a re-imported module (a new code object for the same
  ``module.qualname``), or, under an explicit ``name=``, a factory such as a
  ``bootstrap()`` that is run again. Under a default name, a second function made from
  the same code (a factory's second product) is refused, since nothing in the name says
  which one an inbox row belongs to.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured

#: Peeling layers of wrapping stops here (a ``__wrapped__`` cycle, a pathological object).
MAX_LAYERS = 20


def default_name(func: Callable[..., Any], event_name: str) -> str:
    """``module.qualname`` of ``func``; ``ImproperlyConfigured`` when it names no one callable."""
    why = _no_default_because(func)
    if why is not None:
        raise ImproperlyConfigured(
            f"@event_handler({event_name}) needs name= for {describe(func)}: {why}. "
            f"Pass name={suggest_name(func, event_name)!r} (or another stable name of your "
            "own): the name identifies the handler in task ids and ProcessedEvent rows."
        )
    return label(func)


def _no_default_because(func: Callable[..., Any]) -> str | None:
    if isinstance(func, functools.partial):
        return "a functools.partial has no name of its own (many can wrap one function)"
    if inspect.ismethod(func):
        return (
            f"a bound method is named after its function, which every "
            f"{type(func.__self__).__qualname__} instance shares"
        )
    if not _is_definition(func) and not isinstance(getattr(func, "__qualname__", None), str):
        return (
            f"a callable object is named after its class, which every "
            f"{type(func).__qualname__} instance shares"
        )
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str) or not isinstance(getattr(func, "__module__", None), str):
        return "it has no __module__ and __qualname__"
    if "<lambda>" in qualname:
        return "every lambda of one scope has the same qualname, '<lambda>'"
    return None


def conflict(
    name: str,
    old: tuple[Callable[..., Any], str],
    new: tuple[Callable[..., Any], str],
    *,
    explicit: bool,
) -> str | None:
    """Why ``new`` may not take ``name`` from ``old`` (``(func, event_type)`` each), or ``None``.

    ``None`` means the new registration is the old handler again and replaces it.
    """
    (old_func, old_type), (new_func, new_type) = old, new
    if old_type != new_type:
        return (
            f"The event handler name {name!r} is taken by {describe(old_func)} for "
            f"{old_type}; {describe(new_func)} asks for it for {new_type}. A name is one "
            f"handler of one event type: pass name={suggest_name(new_func, new_type, name)!r} "
            "(or another stable name of your own) to @event_handler."
        )
    a, b = definition(old_func), definition(new_func)
    if a is b:
        return None  # the same function again: wrapped again, or bound to other arguments
    if label(a) != label(b):
        return (
            f"Two event handlers are named {name!r}: {describe(old_func)} and "
            f"{describe(new_func)}. Pass a unique name= to @event_handler, e.g. "
            f"name={suggest_name(new_func, new_type, name)!r} (the name identifies the "
            "handler in task ids and in ProcessedEvent, so keep it stable)."
        )
    if not explicit and _same_code(a, b):
        return (
            f"Two event handlers for {new_type} got the default name {name!r}: "
            f"{describe(old_func)} and {describe(new_func)} are two functions made from "
            "one definition (a factory called twice), and the name cannot tell them apart. "
            f"Pass name={suggest_name(new_func, new_type, name)!r} (a stable name for each "
            "one) to @event_handler."
        )
    return None  # a re-imported module, or the same explicitly named handler built again


def _same_code(a: Any, b: Any) -> bool:
    code = getattr(a, "__code__", None)
    return code is not None and code is getattr(b, "__code__", None)


def definition(func: Any) -> Any:
    """The function (or class) behind partials, bound methods, wrappers and callable objects."""
    for _ in range(MAX_LAYERS):
        if isinstance(func, functools.partial):
            func = func.func
        elif inspect.ismethod(func):
            func = func.__func__
        elif hasattr(func, "__wrapped__"):
            func = func.__wrapped__
        elif _is_definition(func):
            return func
        else:
            func = type(func)
    return func


def label(func: Any) -> str:
    """``module.qualname``, the default name; the class's for objects without a qualname."""
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        func = type(func)
        qualname = func.__qualname__
    return f"{getattr(func, '__module__', None) or '?'}.{qualname}"


def describe(func: Any) -> str:
    """``func`` for an error message: what kind of callable, its name, where it was defined."""
    if isinstance(func, functools.partial):
        return f"functools.partial({describe(func.func)}, ...)"
    if inspect.ismethod(func):
        return f"{label(func.__func__)} bound to a {type(func.__self__).__qualname__}"
    if not _is_definition(func):
        if hasattr(func, "__wrapped__"):
            return f"{label(func)} (wrapping {describe(func.__wrapped__)})"
        return f"a {label(type(func))} object"
    code = getattr(func, "__code__", None)
    if code is not None and "<" in func.__qualname__:
        return f"{label(func)} (line {code.co_firstlineno} of {code.co_filename})"
    return label(func)


def suggest_name(func: Any, event_name: str, taken: str | None = None) -> str:
    """A name to propose: the handler a factory wraps, else one built from the event type.

    Only a suggestion: the registry never derives identities from closures.
    """
    event = _snake(event_name.rpartition(".")[2])
    target = _wrapped_handler(func)
    if target is not None:
        candidate = label(target)
        if "<locals>" in candidate:  # readable beats exact in a suggestion
            candidate = f"{target.__module__}.{target.__name__}"
    else:
        module = getattr(definition(func), "__module__", None) or "handlers"
        candidate = f"{module}.on_{event}"
    if candidate == taken:
        candidate = f"{candidate}_{event}"
    return candidate


def _wrapped_handler(func: Any) -> Any:
    """What a suggested name should be made of: the function a factory's product calls."""
    if isinstance(func, functools.partial):
        inner = definition(func)
        return inner if _no_default_because(inner) is None else None
    if inspect.ismethod(func):
        return func.__func__
    if inspect.isfunction(func):
        target = _called_function(func)
        if target is not None:
            return target
    if _no_default_because(func) is None:
        return func
    if not _is_definition(func):
        return type(func)
    return None


def _called_function(func: Any) -> Any:
    """The one named function a closure or a lambda closes over, when there is one."""
    cells = []
    for cell in func.__closure__ or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:  # a cell not filled yet
            continue
    named = [c for c in cells if inspect.isfunction(c) and _no_default_because(c) is None]
    named = [c for c in named if "<locals>" not in c.__qualname__] or named
    return named[0] if len(named) == 1 else None


def _is_definition(func: Any) -> bool:
    """A function, class or builtin: named where it is defined, not after another object."""
    return inspect.isfunction(func) or inspect.isclass(func) or inspect.isbuiltin(func)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
