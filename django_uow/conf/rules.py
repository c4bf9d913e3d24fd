"""The value rules of ``DJANGO_UOW`` keys: plain functions, value in, problems out.

Each rule looks at one key's value alone; rules across keys, or that need the installed
apps, live in ``django_uow.checks``. A rule returns a list of ``Problem``: what is wrong,
what to write instead, and (rarely) a check id of its own.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from numbers import Real
from typing import Any

from django.utils.module_loading import import_string


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a value: the message, the fix, and an id when it is not the
    setting's own (``django_uow.E<id>``)."""

    message: str
    hint: str
    check_id: int | None = None


Rule = Callable[[str, Any], list[Problem]]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def is_duration(value: Any) -> bool:
    """A positive ``timedelta`` or number of seconds."""
    if isinstance(value, timedelta):
        return value > timedelta(0)
    return is_number(value) and value > 0


def _name(key: str) -> str:
    return f"DJANGO_UOW[{key!r}]"


def integer(minimum: int = 1, *, none: bool = False, hint: str = "") -> Rule:
    """An integer >= ``minimum`` (or None when ``none``)."""

    def rule(key: str, value: Any) -> list[Problem]:
        if (none and value is None) or (is_int(value) and value >= minimum):
            return []
        what = f"an integer >= {minimum}" + (" or None" if none else "")
        return [Problem(f"{_name(key)} must be {what}, not {value!r}.", hint)]

    return rule


def seconds(
    *,
    above: float = 0.0,
    at_most: float | None = None,
    zero: bool = False,
    none: bool = False,
    hint: str = "",
) -> Rule:
    """A number of seconds > ``above`` (>= when ``zero``), <= ``at_most``, or None."""

    def rule(key: str, value: Any) -> list[Problem]:
        if none and value is None:
            return []
        if is_number(value):
            low_ok = value >= above if zero else value > above
            if low_ok and (at_most is None or value <= at_most):
                return []
        bound = (">= " if zero else "> ") + f"{above:g}"
        if at_most is not None:
            bound = f"in {'[' if zero else '('}{above:g}, {at_most:g}]"
        what = f"a number of seconds {bound}" + (" or None" if none else "")
        return [Problem(f"{_name(key)} must be {what}, not {value!r}.", hint)]

    return rule


def duration(hint: str) -> Rule:
    """A positive ``timedelta`` or number of seconds."""

    def rule(key: str, value: Any) -> list[Problem]:
        if is_duration(value):
            return []
        return [
            Problem(
                f"{_name(key)} must be a positive timedelta or number of seconds, not {value!r}.",
                hint,
            )
        ]

    return rule


def choice(*allowed: Any, hint: str) -> Rule:
    """One of ``allowed``."""
    names = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"

    def rule(key: str, value: Any) -> list[Problem]:
        if any(value is a or (type(value) is type(a) and value == a) for a in allowed):
            return []
        return [Problem(f"{_name(key)} must be {names}, not {value!r}.", hint)]

    return rule


def text(
    *,
    none: bool = False,
    prefixes: Iterable[str] = (),
    pattern: str = "",
    what: str,
    hint: str,
    refuse: Callable[[str], bool] | None = None,
) -> Rule:
    """A non-empty string (or None), starting with one of ``prefixes``, matching
    ``pattern`` whole, and not refused by ``refuse``."""
    starts = tuple(prefixes)
    matcher = re.compile(pattern) if pattern else None

    def rule(key: str, value: Any) -> list[Problem]:
        if none and value is None:
            return []
        ok = isinstance(value, str) and bool(value)
        ok = ok and (not starts or value.startswith(starts))
        ok = ok and (matcher is None or bool(matcher.fullmatch(value)))
        ok = ok and not (refuse is not None and refuse(value))
        if ok:
            return []
        return [Problem(f"{_name(key)} must be {what}, not {value!r}.", hint)]

    return rule


def relay_on_commit(key: str, value: Any) -> list[Problem]:
    # True is accepted as an alias of "celery".
    if value is True or value in ("celery", "inline") or value is False:
        return []
    return [
        Problem(
            f"{_name(key)} must be 'celery', 'inline' or False, not {value!r}.",
            "'celery' relays after commit (in-process with broker publishers, else the "
            "relay task), 'inline' relays in-process, "
            "False leaves relaying to relay_outbox / the beat task.",
        )
    ]


CELERY_PUBLISHER = "django_uow.publishers.CeleryPublisher"


def publishers(key: str, value: Any) -> list[Problem]:
    """A non-empty list of importable dotted paths (Celery's own is checked with E018)."""
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        return [
            Problem(
                f"{_name(key)} must be a list of dotted paths, not {value!r}.",
                f"For example DJANGO_UOW = {{'PUBLISHERS': [{CELERY_PUBLISHER!r}]}}.",
            )
        ]
    if not value:
        return [
            Problem(
                f"{_name(key)} is empty: relayed events would go nowhere.",
                "List at least one publisher, e.g. 'django_uow.publishers.InlinePublisher'.",
            )
        ]
    problems: list[Problem] = []
    for path in value:
        if path == CELERY_PUBLISHER and not celery_installed():
            continue  # reported once, clearly, as E018
        try:
            import_string(path)
        except ImportError as exc:
            problems.append(
                Problem(
                    f"{_name(key)} names {path!r}, which cannot be imported: {exc}",
                    "Check the spelling of the dotted path (module.ClassName) and that "
                    "its package is installed.",
                    check_id=5,
                )
            )
    return problems


def celery_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("celery") is not None


def backoff(key: str, value: Any) -> list[Problem]:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(is_number(v) for v in value)
        and 0 < value[0] <= value[1]
    ):
        return []
    return [
        Problem(
            f"{_name(key)} must be (base, max) seconds with 0 < base <= max, not {value!r}.",
            "For example DJANGO_UOW = {'BACKOFF': (1.0, 300.0)}: the first retry waits up "
            "to 1 s, later ones double up to 300 s.",
        )
    ]


def retention(key: str, value: Any) -> list[Problem]:
    """One age, or a mapping of event types (or patterns) to ages or None."""
    if not isinstance(value, dict):
        if is_duration(value):
            return []
        return [
            Problem(
                f"{_name(key)} must be a positive timedelta or number of seconds, or a "
                f"mapping of event types to those (or None), not {value!r}.",
                "For example DJANGO_UOW = {'RETENTION': timedelta(days=7)}, or "
                "{'RETENTION': {'*': timedelta(days=7), 'payments.*': None}}.",
            )
        ]
    return [
        Problem(
            f"{_name(key)}[{name!r}] = {age!r}: keys are event types, '<app_label>.*' or "
            "'*'; values a positive timedelta or number of seconds, or None to keep those "
            "events forever.",
            "For example {'*': timedelta(days=7), 'payments.PaymentTaken': None}.",
        )
        for name, age in value.items()
        if not isinstance(name, str) or not (age is None or is_duration(age))
    ]


STREAM_KEY_FIELDS = frozenset({"aggregate_type", "event_type"})


def stream_key(key: str, value: Any) -> list[Problem]:
    problem = None
    if not isinstance(value, str) or not value:
        problem = "must be a non-empty string"
    else:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            problem = f"is not a valid format string ({exc})"
        else:
            unknown = fields - STREAM_KEY_FIELDS
            if unknown:
                problem = f"uses unknown placeholder(s) {', '.join(sorted(unknown))}"
    if problem is None:
        return []
    return [
        Problem(
            f"{_name(key)} {problem}: {value!r}.",
            "Use a string with {aggregate_type} and/or {event_type}, "
            "e.g. 'django_uow:{aggregate_type}'.",
        )
    ]


NATS_SUBJECT_TOKEN = re.compile(r"[^\s*>.]+")


def nats_subject(key: str, value: Any) -> list[Problem]:
    tokens = value.split(".") if isinstance(value, str) else [""]
    if all(token and NATS_SUBJECT_TOKEN.fullmatch(token) for token in tokens):
        return []
    return [
        Problem(
            f"{_name(key)} must be a NATS subject without wildcards, not {value!r}.",
            "Dot-separated non-empty tokens without spaces, '*' or '>'; the default is "
            "'django_uow'.",
        )
    ]


HEALTH_KEYS = ("MAX_LAG", "MAX_FAILED", "MAX_CONSUMER_LAG")


def health(key: str, value: Any) -> list[Problem]:
    names = ", ".join(HEALTH_KEYS)
    hint = (
        "For example {'MAX_LAG': 300, 'MAX_FAILED': 0, 'MAX_CONSUMER_LAG': 600}: seconds of "
        "relay lag, dead letters (failed events plus failed handler deliveries), seconds "
        "of consumer lag; None never answers 503 for it."
    )
    if not isinstance(value, dict):
        return [Problem(f"{_name(key)} must be a dict with any of {names}, not {value!r}.", hint)]
    found = [
        Problem(f"{_name(key)} has no key {name!r}; its keys are {names}.", hint)
        for name in value
        if name not in HEALTH_KEYS
    ]
    found += [
        Problem(f"{_name(key)}[{name!r}] must be a number >= 0 or None, not {number!r}.", hint)
        for name in HEALTH_KEYS
        if not ((number := value.get(name)) is None or (is_number(number) and number >= 0))
    ]
    return found


def redact(key: str, value: Any) -> list[Problem]:
    if isinstance(value, list | tuple) and all(
        isinstance(name, str) and name.strip(". ") for name in value
    ):
        return []
    return [
        Problem(
            f"{_name(key)} must be a list of key names or dotted paths, not {value!r}.",
            "For example DJANGO_UOW = {'REDACT': ['ssn', 'customer.card.number']}; the list "
            "extends the built-in one (authorization, password, token...).",
        )
    ]


def boolean(hint: str) -> Rule:
    def rule(key: str, value: Any) -> list[Problem]:
        if isinstance(value, bool):
            return []
        return [Problem(f"{_name(key)} must be True or False, not {value!r}.", hint)]

    return rule
