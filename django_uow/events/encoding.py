"""Encoding event payloads: a dataclass to one JSON object every database stores alike.

Values that one database stores and another refuses or alters (NaN, infinities, NUL,
lone surrogates, dict keys that collide once they are JSON text) are refused, so SQLite,
PostgreSQL and MariaDB behave alike and the error comes at ``record_event()``, naming the
field, instead of at COMMIT. Floats that PostgreSQL would read back as another type are
written as what it reads (``steady_numbers``). The happy path is one ``json.dumps`` and
one scan of its text; only a failure walks the values.
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import json
import math
import re
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

_django_default = DjangoJSONEncoder().default
_SURROGATE = re.compile("[\ud800-\udfff]")


class NonFiniteDecimal(ValueError):
    """A NaN or infinite ``Decimal``: Django would write it as the string "NaN"."""


def json_default(value: Any) -> Any:
    """Django's JSON rules, plus enums (their value), dataclasses and sets (sorted lists)."""
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise NonFiniteDecimal(f"{value} is not a finite number")
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, set | frozenset):
        return _set_items(value)
    return _django_default(value)


def _set_items(value: set[Any] | frozenset[Any]) -> list[Any]:
    try:
        return sorted(value)
    except TypeError:  # mixed types: any stable-enough order will do
        return list(value)


def dumps(values: dict[str, Any]) -> str:
    """The payload as JSON text; raises ``TypeError``/``ValueError`` for what JSON cannot hold."""
    return json.dumps(values, default=json_default, allow_nan=False, ensure_ascii=False)


def may_hold_unstorable_text(text: str) -> bool:
    """A cheap check of encoded text: NUL (escaped by JSON) or a lone surrogate inside.

    ``\\u0000`` may also be six ordinary characters, so a hit is confirmed by ``find_problem``.
    """
    return "\\u0000" in text or (not text.isascii() and _SURROGATE.search(text) is not None)


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a value at ``path`` cannot be stored, and what to do about it."""

    path: str
    value: Any
    problem: str
    advice: str
    reason: str = ""


_NUMBER_ADVICE = "Use None for a missing number, or a finite value."
_NUL_ADVICE = (
    "PostgreSQL cannot store it in JSON; remove or replace it before recording the event, "
    "e.g. text.replace('\\x00', '')."
)
_SURROGATE_ADVICE = (
    "It is not valid Unicode text; it usually comes from bytes decoded with "
    "errors='surrogateescape' (file names, sys.argv): decode the bytes with their real "
    "encoding, or with errors='replace'."
)
_GENERIC_ADVICE = (
    "Store a JSON-friendly value instead (str, int, float, bool, None, Decimal, UUID, "
    "date/datetime, Enum, a frozen dataclass, or a list/dict of those), e.g. the pk "
    "instead of a model instance."
)


def text_problem(path: str, text: str, what: str) -> Problem | None:
    """Why ``text`` (``what`` it is, for the message) cannot be stored, if it cannot."""
    return _text_problem(path, text, what)


def _text_problem(path: str, text: str, what: str) -> Problem | None:
    if "\x00" in text:
        return Problem(path, text, f"holds {what} with a NUL character (\\x00)", _NUL_ADVICE)
    if not text.isascii():
        found = _SURROGATE.search(text)
        if found is not None:
            return Problem(
                path,
                text,
                f"holds {what} with a lone surrogate ({found.group()!r})",
                _SURROGATE_ADVICE,
            )
    return None


def _number_problem(path: str, number: float | decimal.Decimal) -> Problem | None:
    finite = number.is_finite() if isinstance(number, decimal.Decimal) else math.isfinite(number)
    if finite:
        return None
    label = str(number) if isinstance(number, decimal.Decimal) else _FLOAT_LABELS[repr(number)]
    return Problem(
        path,
        number,
        f"holds {label} (a {type(number).__name__}), which JSON cannot represent and "
        "databases store differently",
        _NUMBER_ADVICE,
    )


_FLOAT_LABELS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def key_path(path: str, key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def find_problem(value: Any, path: str, _stack: frozenset[int] = frozenset()) -> Problem | None:
    """The first value under ``value`` that the encoder refuses or a database would, if any.

    Walks the same shapes as ``json_default``; only called once a payload failed, so it
    may be slow.
    """
    if value is None or isinstance(value, int):
        return None
    if isinstance(value, str):
        return _text_problem(path, value, "a string")
    if isinstance(value, float | decimal.Decimal):
        return _number_problem(path, value)
    if isinstance(value, dict | list | tuple | set | frozenset):
        if id(value) in _stack:
            return Problem(path, value, "contains itself", _GENERIC_ADVICE, "circular reference")
        _stack = _stack | {id(value)}
    if isinstance(value, dict):
        for key, item in value.items():
            at = key_path(path, key)
            if isinstance(key, str):
                found = _text_problem(at, key, "a dict key")
            elif key is None or isinstance(key, bool | int | float):
                found = _number_problem(at, key) if isinstance(key, float) else None
            else:
                found = Problem(
                    at,
                    key,
                    f"is a dict key of type {type(key).__name__}",
                    "Use str (or int) dict keys.",
                )
            found = found or find_problem(item, at, _stack)
            if found:
                return found
        return None
    if isinstance(value, list | tuple | set | frozenset):
        items = _set_items(value) if isinstance(value, set | frozenset) else value
        for index, item in enumerate(items):
            found = find_problem(item, f"{path}[{index}]", _stack)
            if found:
                return found
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            found = find_problem(getattr(value, f.name), f"{path}.{f.name}", _stack)
            if found:
                return found
        return None
    try:
        converted = json_default(value)
    except (TypeError, ValueError) as exc:
        return Problem(
            path,
            value,
            f"holds a {type(value).__name__} that cannot be serialized to JSON ({exc})",
            _GENERIC_ADVICE,
            str(exc),
        )
    return find_problem(converted, path, _stack)


# --------------------------------------------------------------------------- collisions


class KeysCollide(ValueError):
    """Two keys of one JSON object in a payload's text are the same."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise KeysCollide
    return result


def loads_unique(text: str) -> Any:
    """``json.loads(text)``, raising ``KeysCollide`` where reading it would drop a key."""
    return json.loads(text, object_pairs_hook=_unique_pairs)


def find_collision(value: Any, path: str) -> Problem | None:
    """The first dict under ``value`` with two keys that JSON writes alike (``1``, ``"1"``).

    JSON object keys are text: ``json.dumps`` writes both, and every database keeps only
    one of them when it reads the document back, silently.
    """
    if isinstance(value, dict):
        seen: dict[str, Any] = {}
        for key in value:
            text = _key_text(key)
            if text is not None and text in seen:
                return Problem(
                    path,
                    value,
                    f"has the keys {seen[text]!r} and {key!r}, which JSON writes as the same "
                    f"key {text!r}, so one of them would be lost",
                    "Use keys of one type (str, or int, not both) in a dict.",
                )
            if text is not None:
                seen[text] = key
        for key, item in value.items():
            found = find_collision(item, key_path(path, key))
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_collision(item, f"{path}[{index}]")
            if found:
                return found
        return None
    if isinstance(value, set | frozenset):
        return find_collision(_set_items(value), path)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            found = find_collision(getattr(value, f.name), f"{path}.{f.name}")
            if found:
                return found
    return None


def _key_text(key: Any) -> str | None:
    """The object key ``json.dumps`` writes for dict key ``key``."""
    if isinstance(key, str):
        return key
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int | float):
        return json.dumps(key)
    return None


# --------------------------------------------------------------------------- numbers

#: From here up, a float's shortest text has an exponent ("1e+16"); PostgreSQL's jsonb
#: stores such a number as a numeric and writes it back without one, so it reads back
#: as an int there and as a float on SQLite and MariaDB.
_EXPONENT_FROM = 1e16


def may_hold_unsteady_numbers(text: str) -> bool:
    """A cheap check: a float that reads back as another value on some database may be in
    ``text`` (a hit inside a string is ruled out by ``steady_numbers``)."""
    return "e+" in text or "-0.0" in text


def steady_numbers(value: Any) -> Any:
    """``value`` (JSON primitives) with each float that databases read back differently
    written as what they all read: an integral float of 1e16 or more as its int (exact),
    ``-0.0`` as ``0.0`` (PostgreSQL's numeric has no negative zero). The same object when
    nothing changes."""
    if type(value) is float:
        if abs(value) >= _EXPONENT_FROM:
            return int(value)
        if value == 0.0 and math.copysign(1.0, value) < 0:
            return 0.0
        return value
    if isinstance(value, dict):
        changed = {key: steady_numbers(item) for key, item in value.items()}
        same = all(changed[key] is item for key, item in value.items())
        return value if same else changed
    if isinstance(value, list):
        items = [steady_numbers(item) for item in value]
        same = all(new is old for new, old in zip(items, value, strict=True))
        return value if same else items
    return value
