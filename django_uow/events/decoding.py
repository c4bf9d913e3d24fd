"""Decoding event payloads: every field rebuilt from its dataclass annotation, strictly.

A value that does not fit its annotation is a ``Misfit`` naming the field ("payload
field 'amount' is not a valid Decimal: 'abc'"); the events module turns it into a
permanent ``EventDecodeError``, so the relay dead-letters the row at once. Decoders are
built once per class and cached.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import sys
import types
import typing
import uuid
from collections import abc
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from django.utils import dateparse

from .encoding import key_path
from .redaction import redact_field


class Misfit(Exception):
    """A stored value does not fit its annotation; ``detail`` says which and why."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


Decoder = Callable[[Any, str], Any]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}..."


def _misfit(path: str, expected: str, value: Any) -> Misfit:
    # The message lands in last_error and log lines: a secret field's value stays out.
    shown = _shown(redact_field(path, value))
    return Misfit(f"payload field {path!r} is not a valid {expected}: {shown}")


def type_name(tp: Any) -> str:
    """A short readable name of an annotation: ``Decimal``, ``list[Line]``, ``int | str``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is not None:
        base = getattr(origin, "__name__", repr(origin))
        if not args:
            return str(base)
        shown = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{base}[{shown}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", repr(tp))


def _identity(value: Any, path: str) -> Any:
    return value


def _strict(tp: type, name: str) -> Decoder:
    def decode(value: Any, path: str) -> Any:
        if isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool):
            return value
        raise _misfit(path, name, value)

    return decode


def _decode_float(value: Any, path: str) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _misfit(path, "float", value)


def _decode_decimal(value: Any, path: str) -> Any:
    if isinstance(value, decimal.Decimal):
        number = value
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            number = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise _misfit(path, "Decimal", value) from None
    else:
        raise _misfit(path, "Decimal", value)
    if not number.is_finite():
        raise _misfit(path, "Decimal", value)
    return number


def _decode_uuid(value: Any, path: str) -> Any:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise _misfit(path, "UUID", value)


def _parsed(tp: type, parse: Callable[[str], Any], exclude: type | None = None) -> Decoder:
    name = tp.__name__

    def decode(value: Any, path: str) -> Any:
        if isinstance(value, tp) and not (exclude and isinstance(value, exclude)):
            return value
        if isinstance(value, str):
            try:
                parsed = parse(value)
            except ValueError:
                parsed = None
            if parsed is not None:
                return parsed
        raise _misfit(path, name, value)

    return decode


def _enum(tp: type[enum.Enum]) -> Decoder:
    def decode(value: Any, path: str) -> Any:
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except (ValueError, TypeError):
            raise _misfit(path, tp.__name__, value) from None

    return decode


def _literal(tp: Any) -> Decoder:
    allowed = typing.get_args(tp)
    name = type_name(tp)

    def decode(value: Any, path: str) -> Any:
        for option in allowed:
            if value == option and type(value) is type(option):
                return value
        raise _misfit(path, name, value)

    return decode


def _union(tp: Any) -> Decoder:
    args = typing.get_args(tp)
    optional = type(None) in args
    members = [decoder_for(a) for a in args if a is not type(None)]
    if len(members) == 1:
        # X | None: a value that is not None must be an X, with X's own message.
        (only,) = members

        def decode_optional(value: Any, path: str) -> Any:
            return None if value is None else only(value, path)

        return decode_optional
    name = type_name(tp)

    def decode(value: Any, path: str) -> Any:
        if value is None and optional:
            return None
        for member in members:  # the first member that accepts the value wins
            try:
                return member(value, path)
            except Misfit:
                continue
        raise _misfit(path, name, value)

    return decode


def _sequence(tp: Any, build: Callable[[list[Any]], Any]) -> Decoder:
    args = typing.get_args(tp)
    item = decoder_for(args[0]) if args else _identity
    name = type_name(tp)

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple | set | frozenset):
            raise _misfit(path, name, value)
        try:
            return build([item(v, f"{path}[{i}]") for i, v in enumerate(value)])
        except TypeError:  # unhashable items for a set
            raise _misfit(path, name, value) from None

    return decode


def _fixed_tuple(tp: Any) -> Decoder:
    items = [decoder_for(a) for a in typing.get_args(tp)]
    name = type_name(tp)

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise _misfit(path, name, value)
        return tuple(
            d(v, f"{path}[{i}]") for i, (d, v) in enumerate(zip(items, value, strict=True))
        )

    return decode


def _mapping(tp: Any) -> Decoder:
    args = typing.get_args(tp)
    key_type = args[0] if args else Any
    keys = decoder_for(key_type)
    values = decoder_for(args[1]) if len(args) > 1 else _identity
    name = type_name(tp)
    # JSON object keys are strings: an int (bool, float, IntEnum) key comes back as "1".
    keys_from_text = key_type is not str and key_type is not Any

    def decode_key(key: Any, path: str) -> Any:
        try:
            return keys(key, path)
        except Misfit:
            if not (keys_from_text and isinstance(key, str)):
                raise
        try:
            parsed = json.loads(key)
        except ValueError:
            raise _misfit(path, type_name(key_type), key) from None
        return keys(parsed, path)

    def decode(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _misfit(path, name, value)
        decoded = {}
        for key, item in value.items():
            item_path = key_path(path, key)
            decoded[decode_key(key, item_path)] = values(item, item_path)
        return decoded

    return decode


def _dataclass(cls: type) -> Decoder:
    name = cls.__name__

    def decode(value: Any, path: str) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise _misfit(path, name, value)
        return build_dataclass(cls, value, f"{path}.")

    return decode


def _other(tp: Any) -> Decoder:
    if not isinstance(tp, type):
        return _identity  # TypeVar, NewType, a string that did not resolve...
    name = tp.__name__

    def decode(value: Any, path: str) -> Any:
        try:
            if isinstance(value, tp):
                return value
        except TypeError:  # a Protocol or similar that isinstance() refuses
            return value
        raise _misfit(path, name, value)

    return decode


_SIMPLE: dict[Any, Decoder] = {
    Any: _identity,
    object: _identity,
    str: _strict(str, "str"),
    int: _strict(int, "int"),
    bool: _strict(bool, "bool"),
    type(None): _strict(type(None), "None"),
    float: _decode_float,
    decimal.Decimal: _decode_decimal,
    uuid.UUID: _decode_uuid,
    datetime.datetime: _parsed(datetime.datetime, dateparse.parse_datetime),
    datetime.date: _parsed(datetime.date, dateparse.parse_date, exclude=datetime.datetime),
    datetime.time: _parsed(datetime.time, dateparse.parse_time),
    datetime.timedelta: _parsed(datetime.timedelta, dateparse.parse_duration),
}

# typing.Sequence[int] and friends have the collections.abc class as their origin.
_LISTS = {list, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection}
_SETS = {set, frozenset, abc.Set, abc.MutableSet}
_MAPPINGS = {dict, abc.Mapping, abc.MutableMapping}


def decoder_for(tp: Any) -> Decoder:
    """A function turning a JSON value into ``tp`` (or raising ``Misfit``)."""
    try:
        simple = _SIMPLE.get(tp)
    except TypeError:  # an unhashable annotation
        simple = None
    if simple is not None:
        return simple
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return decoder_for(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return _union(tp)
    if origin is Literal:
        return _literal(tp)
    kind = origin or tp
    if kind in _LISTS:
        return _sequence(tp, list)
    if kind is tuple:
        args = typing.get_args(tp)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _sequence(tp, tuple)
        return _fixed_tuple(tp)
    if kind in _SETS:
        return _sequence(tp, frozenset if kind is frozenset else set)
    if kind in _MAPPINGS:
        return _mapping(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp)
    if typing.is_typeddict(tp):
        return _strict(dict, tp.__name__)
    return _other(origin or tp)


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    decode: Decoder
    required: bool


_plans: dict[type, list[_Field]] = {}


def _annotations(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # one unresolvable forward reference: resolve field by field
        module = sys.modules.get(cls.__module__)
        namespace = dict(vars(module)) if module else {}
        hints: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            annotation = f.type
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, namespace, dict(vars(cls)))
                except Exception:
                    annotation = Any
            hints[f.name] = annotation
        return hints


def _plan(cls: type) -> list[_Field]:
    plan = _plans.get(cls)
    if plan is None:
        hints = _annotations(cls)
        plan = [
            _Field(
                name=f.name,
                decode=decoder_for(hints.get(f.name, Any)),
                required=f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
            if f.init
        ]
        _plans[cls] = plan
    return plan


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """``cls(**fields)`` from ``data``, each field decoded from its annotation.

    Keys that are not fields are ignored; a required field that is missing is a ``Misfit``.
    """
    kwargs: dict[str, Any] = {}
    for f in _plan(cls):
        path = f"{prefix}{f.name}"
        if f.name in data:
            kwargs[f.name] = f.decode(data[f.name], path)
        elif f.required:
            raise Misfit(f"payload has no field {path!r}, which {cls.__name__} requires")
    return cls(**kwargs)
