"""System checks for the ``DJANGO_UOW`` setting, and for the event types and their handlers.

Ids are stable and never reused; docs/reference/checks.md lists each one (a test keeps
the page and this module in step).
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import string
from collections.abc import Callable
from datetime import timedelta
from numbers import Real
from typing import Any

from django.apps import apps
from django.core import checks
from django.utils.module_loading import import_string

from .conf import DEFAULTS, unknown_key_message
from .delivery.handlers import registry as handler_registry
from .events.base import event_type_of
from .events.base import registry as event_types

CELERY_PUBLISHER = "django_uow.publishers.CeleryPublisher"
STREAM_KEY_FIELDS = frozenset({"aggregate_type", "event_type"})
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
AMQP_SCHEMES = ("amqp://", "pyamqp://")
NATS_SCHEMES = ("nats://", "tls://")
NATS_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")
NATS_SUBJECT_TOKEN = re.compile(r"[^\s*>.]+")

Message = checks.CheckMessage


def _error(msg: str, hint: str, number: int) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"django_uow.E{number:03d}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _positive_int(key: str, number: int, minimum: int = 1) -> Callable[[Any], list[Message]]:
    def check(value: Any) -> list[Message]:
        if _is_int(value) and value >= minimum:
            return []
        return [
            _error(
                f"DJANGO_UOW[{key!r}] must be an integer >= {minimum}, not {value!r}.",
                f"For example DJANGO_UOW = {{{key!r}: {DEFAULTS[key]!r}}}.",
                number,
            )
        ]

    return check


def _check_relay_on_commit(value: Any) -> list[Message]:
    # True is accepted as an alias of "celery" (see conf.UowSettings.RELAY_ON_COMMIT).
    if _relays_in_celery(value) or value == "inline" or value is False:
        return []
    return [
        _error(
            f"DJANGO_UOW['RELAY_ON_COMMIT'] must be 'celery', 'inline' or False, not {value!r}.",
            "'celery' relays after commit (in-process with broker publishers, else the "
            "relay task), 'inline' relays in-process, "
            "False leaves relaying to relay_outbox / the beat task.",
            3,
        )
    ]


def _check_publishers(value: Any) -> list[Message]:
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        return [
            _error(
                f"DJANGO_UOW['PUBLISHERS'] must be a list of dotted paths, not {value!r}.",
                f"For example DJANGO_UOW = {{'PUBLISHERS': [{CELERY_PUBLISHER!r}]}}.",
                4,
            )
        ]
    if not value:
        return [
            _error(
                "DJANGO_UOW['PUBLISHERS'] is empty: relayed events would go nowhere.",
                "List at least one publisher, e.g. 'django_uow.publishers.InlinePublisher'.",
                4,
            )
        ]
    errors: list[Message] = []
    for path in value:
        if path == CELERY_PUBLISHER and not _celery_installed():
            continue  # reported once, clearly, as E018
        try:
            import_string(path)
        except ImportError as exc:
            errors.append(
                _error(
                    f"DJANGO_UOW['PUBLISHERS'] names {path!r}, which cannot be imported: {exc}",
                    "Check the spelling of the dotted path (module.ClassName) and that "
                    "its package is installed.",
                    5,
                )
            )
    return errors


def _check_backoff(value: Any) -> list[Message]:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(_is_number(v) for v in value)
        and 0 < value[0] <= value[1]
    ):
        return []
    return [
        _error(
            f"DJANGO_UOW['BACKOFF'] must be (base, max) seconds with 0 < base <= max, "
            f"not {value!r}.",
            "For example DJANGO_UOW = {'BACKOFF': (1.0, 300.0)}: the first retry waits up "
            "to 1 s, later ones double up to 300 s.",
            8,
        )
    ]


def _check_ordering(value: Any) -> list[Message]:
    if value in ("aggregate", "none"):
        return []
    return [
        _error(
            f"DJANGO_UOW['ORDERING'] must be 'aggregate' or 'none', not {value!r}.",
            "'aggregate' keeps per-aggregate order (the default); 'none' relays without it.",
            9,
        )
    ]


def _check_relay_mode(value: Any) -> list[Message]:
    if value in ("auto", "lease", "direct"):
        return []
    return [
        _error(
            f"DJANGO_UOW['RELAY_MODE'] must be 'auto', 'lease' or 'direct', not {value!r}.",
            "'auto' (the default) relays directly when every publisher is fast and the "
            "database skips locked rows; see the relay docs for the trade.",
            80,
        )
    ]


def _positive_age(value: Any) -> bool:
    if isinstance(value, timedelta):
        return value > timedelta(0)
    return _is_number(value) and value > 0


def _check_retention(value: Any) -> list[Message]:
    if not isinstance(value, dict):
        if _positive_age(value):
            return []
        return [
            _error(
                f"DJANGO_UOW['RETENTION'] must be a positive timedelta or number of seconds, "
                f"or a mapping of event types to those (or None), not {value!r}.",
                "For example DJANGO_UOW = {'RETENTION': timedelta(days=7)}, or "
                "{'RETENTION': {'*': timedelta(days=7), 'payments.*': None}}.",
                10,
            )
        ]
    errors: list[Message] = []
    for name, age in value.items():
        if not isinstance(name, str) or not (age is None or _positive_age(age)):
            errors.append(
                _error(
                    f"DJANGO_UOW['RETENTION'][{name!r}] = {age!r}: keys are event types, "
                    "'<app_label>.*' or '*'; values a positive timedelta or number of "
                    "seconds, or None to keep those events forever.",
                    "For example {'*': timedelta(days=7), 'payments.PaymentTaken': None}.",
                    10,
                )
            )
        elif (problem := _unknown_retention_name(name)) is not None:
            errors.append(
                _error(
                    f"DJANGO_UOW['RETENTION'] names {name!r}, {problem}",
                    "Use a registered event type (see the admin's event type filter), "
                    "'<app_label>.*' for every event of an installed app, or '*'.",
                    33,
                )
            )
    return errors


def _unknown_retention_name(name: str) -> str | None:
    """Why a ``RETENTION`` key names nothing, or ``None`` when it is fine."""
    if name == "*":
        return None
    if name.endswith(".*"):
        label = name[:-2]
        if label in {config.label for config in apps.get_app_configs()}:
            return None
        return f"but no installed app has the label {label!r}."
    if name in event_types.names():
        return None
    close = difflib.get_close_matches(name, event_types.names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"which no DomainEvent class is registered under{hint}."


def _check_lease(value: Any) -> list[Message]:
    if _is_number(value) and value > 0:
        return []
    return [
        _error(
            f"DJANGO_UOW['LEASE'] must be a positive number of seconds, not {value!r}.",
            "Use more than the time a relay needs to publish one batch, e.g. 60.",
            12,
        )
    ]


def _check_redis_url(value: Any) -> list[Message]:
    if isinstance(value, str) and value.startswith(REDIS_SCHEMES):
        return []
    return [
        _error(
            f"DJANGO_UOW['REDIS_URL'] must be a redis://, rediss:// or unix:// URL, not {value!r}.",
            "For example DJANGO_UOW = {'REDIS_URL': 'redis://127.0.0.1:6379/0'}.",
            13,
        )
    ]


def _check_stream_key(value: Any) -> list[Message]:
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
        _error(
            f"DJANGO_UOW['STREAM_KEY'] {problem}: {value!r}.",
            "Use a string with {aggregate_type} and/or {event_type}, "
            "e.g. 'django_uow:{aggregate_type}'.",
            14,
        )
    ]


def _check_stream_maxlen(value: Any) -> list[Message]:
    if value is None or (_is_int(value) and value > 0):
        return []
    return [
        _error(
            f"DJANGO_UOW['STREAM_MAXLEN'] must be a positive integer or None, not {value!r}.",
            "It caps each Redis stream (XADD MAXLEN ~); None keeps every entry.",
            15,
        )
    ]


def _check_celery_queue(value: Any) -> list[Message]:
    if value is None or (isinstance(value, str) and value):
        return []
    return [
        _error(
            f"DJANGO_UOW['CELERY_QUEUE'] must be a queue name or None, not {value!r}.",
            "None uses Celery's default queue.",
            16,
        )
    ]


def _check_celery_relay_task(value: Any) -> list[Message]:
    if isinstance(value, str) and value:
        return []
    return [
        _error(
            f"DJANGO_UOW['CELERY_RELAY_TASK'] must be a task name, not {value!r}.",
            f"The default is {DEFAULTS['CELERY_RELAY_TASK']!r}.",
            17,
        )
    ]


def _check_notify(value: Any) -> list[Message]:
    if isinstance(value, bool):
        return []
    return [
        _error(
            f"DJANGO_UOW['NOTIFY'] must be True or False, not {value!r}.",
            "True sends pg_notify after commits that wrote events (PostgreSQL only).",
            19,
        )
    ]


def _check_rabbitmq_url(value: Any) -> list[Message]:
    if isinstance(value, str) and value.startswith(AMQP_SCHEMES):
        return []
    return [
        _error(
            f"DJANGO_UOW['RABBITMQ_URL'] must be an amqp:// URL, not {value!r}.",
            "For example 'amqp://guest:guest@127.0.0.1:5672//' ('//' is the default vhost).",
            30,
        )
    ]


def _check_rabbitmq_exchange(value: Any) -> list[Message]:
    if isinstance(value, str) and value and not value.startswith("amq."):
        return []
    return [
        _error(
            f"DJANGO_UOW['RABBITMQ_EXCHANGE'] must be an exchange name, not {value!r}.",
            "A non-empty name not starting with 'amq.' (reserved by RabbitMQ); the default "
            f"is {DEFAULTS['RABBITMQ_EXCHANGE']!r}.",
            31,
        )
    ]


def _check_nats_url(value: Any) -> list[Message]:
    if isinstance(value, str) and value.startswith(NATS_SCHEMES):
        return []
    return [
        _error(
            f"DJANGO_UOW['NATS_URL'] must be a nats:// URL, not {value!r}.",
            "For example 'nats://127.0.0.1:4222' (tls:// for TLS).",
            60,
        )
    ]


def _check_nats_stream(value: Any) -> list[Message]:
    if isinstance(value, str) and NATS_STREAM_NAME.fullmatch(value):
        return []
    return [
        _error(
            f"DJANGO_UOW['NATS_STREAM'] must be a JetStream stream name, not {value!r}.",
            "Letters, digits, '-' and '_' (no spaces, '.', '*' or '>'); the default is "
            f"{DEFAULTS['NATS_STREAM']!r}.",
            61,
        )
    ]


def _check_nats_subject_prefix(value: Any) -> list[Message]:
    tokens = value.split(".") if isinstance(value, str) else [""]
    if all(token and NATS_SUBJECT_TOKEN.fullmatch(token) for token in tokens):
        return []
    return [
        _error(
            f"DJANGO_UOW['NATS_SUBJECT_PREFIX'] must be a NATS subject without wildcards, "
            f"not {value!r}.",
            "Dot-separated non-empty tokens without spaces, '*' or '>'; the default is "
            f"{DEFAULTS['NATS_SUBJECT_PREFIX']!r}.",
            62,
        )
    ]


def _check_timeout(value: Any) -> list[Message]:
    if value is None or (_is_number(value) and value > 0):
        return []
    return [
        _error(
            f"DJANGO_UOW['TIMEOUT'] must be a number of seconds > 0 or None, not {value!r}.",
            "It is the default time limit of every outermost unit of work; None: no limit.",
            34,
        )
    ]


def _check_health(value: Any) -> list[Message]:
    keys = list(DEFAULTS["HEALTH"])
    names = ", ".join(keys)
    hint = (
        "For example {'MAX_LAG': 300, 'MAX_FAILED': 0, 'MAX_CONSUMER_LAG': 600}: seconds of "
        "relay lag, dead letters (failed events plus failed handler deliveries), seconds "
        "of consumer lag; None never answers 503 for it."
    )
    if not isinstance(value, dict):
        return [
            _error(
                f"DJANGO_UOW['HEALTH'] must be a dict with any of {names}, not {value!r}.",
                hint,
                32,
            )
        ]
    found: list[Message] = [
        _error(f"DJANGO_UOW['HEALTH'] has no key {key!r}; its keys are {names}.", hint, 32)
        for key in value
        if key not in keys
    ]
    found += [
        _error(
            f"DJANGO_UOW['HEALTH'][{key!r}] must be a number >= 0 or None, not {number!r}.",
            hint,
            32,
        )
        for key in keys
        if not ((number := value.get(key)) is None or (_is_number(number) and number >= 0))
    ]
    return found


def _is_duration(value: Any) -> bool:
    if isinstance(value, timedelta):
        return value > timedelta(0)
    return _is_number(value) and value > 0


def _duration_text(key: str, value: Any) -> str:
    return f"DJANGO_UOW[{key!r}] must be a positive timedelta or number of seconds, not {value!r}."


def _check_handler_deadline_value(value: Any) -> list[Message]:
    if _is_duration(value):
        return []
    return [
        _error(
            _duration_text("HANDLER_DEADLINE", value),
            "For example DJANGO_UOW = {'HANDLER_DEADLINE': timedelta(minutes=15)}.",
            40,
        )
    ]


def _check_ordered_wait_value(value: Any) -> list[Message]:
    if _is_duration(value):
        return []
    return [
        _error(
            _duration_text("ORDERED_WAIT", value),
            "For example DJANGO_UOW = {'ORDERED_WAIT': timedelta(minutes=1)}: how long an "
            "ordered handler's delivery waits for its predecessor before it is blocked.",
            70,
        )
    ]


def _check_inbox_retention_value(value: Any) -> list[Message]:
    if _is_duration(value):
        return []
    return [
        _error(
            _duration_text("INBOX_RETENTION", value),
            "For example DJANGO_UOW = {'INBOX_RETENTION': timedelta(days=30)}.",
            41,
        )
    ]


def _check_fast_path_timeout(value: Any) -> list[Message]:
    if _is_number(value) and 0 < value <= 60:
        return []
    return [
        _error(
            f"DJANGO_UOW['FAST_PATH_TIMEOUT'] must be a number of seconds in (0, 60], "
            f"not {value!r}.",
            "It bounds the broker work a commit may wait for (connect + send), "
            "e.g. 0.2; what does not go out in time is left to the sweep.",
            20,
        )
    ]


def _check_fast_path_cooldown(value: Any) -> list[Message]:
    if _is_number(value) and value >= 0:
        return []
    return [
        _error(
            f"DJANGO_UOW['FAST_PATH_COOLDOWN'] must be a number of seconds >= 0, not {value!r}.",
            "After a broker failure commits skip the fast path this long, e.g. 5.0; "
            "0 makes every commit try the broker.",
            21,
        )
    ]


def _check_redact(value: Any) -> list[Message]:
    if isinstance(value, list | tuple) and all(
        isinstance(key, str) and key.strip(". ") for key in value
    ):
        return []
    return [
        _error(
            f"DJANGO_UOW['REDACT'] must be a list of key names or dotted paths, not {value!r}.",
            "For example DJANGO_UOW = {'REDACT': ['ssn', 'customer.card.number']}; the list "
            "extends the built-in one (authorization, password, token...).",
            50,
        )
    ]


VALIDATORS: dict[str, Callable[[Any], list[Message]]] = {
    "RELAY_ON_COMMIT": _check_relay_on_commit,
    "PUBLISHERS": _check_publishers,
    "BATCH_SIZE": _positive_int("BATCH_SIZE", 6),
    "MAX_ATTEMPTS": _positive_int("MAX_ATTEMPTS", 7),
    "BACKOFF": _check_backoff,
    "ORDERING": _check_ordering,
    "RELAY_MODE": _check_relay_mode,
    "RETENTION": _check_retention,
    "PRUNE_BATCH_SIZE": _positive_int("PRUNE_BATCH_SIZE", 11),
    "LEASE": _check_lease,
    "REDIS_URL": _check_redis_url,
    "STREAM_KEY": _check_stream_key,
    "STREAM_MAXLEN": _check_stream_maxlen,
    "CELERY_QUEUE": _check_celery_queue,
    "CELERY_RELAY_TASK": _check_celery_relay_task,
    "NOTIFY": _check_notify,
    "HEALTH": _check_health,
    "TIMEOUT": _check_timeout,
    "RABBITMQ_URL": _check_rabbitmq_url,
    "RABBITMQ_EXCHANGE": _check_rabbitmq_exchange,
    "NATS_URL": _check_nats_url,
    "NATS_STREAM": _check_nats_stream,
    "NATS_SUBJECT_PREFIX": _check_nats_subject_prefix,
    "HANDLER_DEADLINE": _check_handler_deadline_value,
    "ORDERED_WAIT": _check_ordered_wait_value,
    "HANDLER_BATCH": _positive_int("HANDLER_BATCH", 90),
    "INBOX_RETENTION": _check_inbox_retention_value,
    "FAST_PATH_TIMEOUT": _check_fast_path_timeout,
    "FAST_PATH_COOLDOWN": _check_fast_path_cooldown,
    "REDACT": _check_redact,
}


def _relays_in_celery(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value == "celery")


def _celery_installed() -> bool:
    return importlib.util.find_spec("celery") is not None


def _effective(user: dict[str, Any], key: str) -> Any:
    return user.get(key, DEFAULTS[key])


def _uses_celery(user: dict[str, Any]) -> list[str]:
    reasons = []
    if _relays_in_celery(_effective(user, "RELAY_ON_COMMIT")):
        reasons.append("RELAY_ON_COMMIT is 'celery'")
    publishers = _effective(user, "PUBLISHERS")
    if isinstance(publishers, list | tuple) and CELERY_PUBLISHER in publishers:
        reasons.append("PUBLISHERS lists CeleryPublisher")
    return reasons


def _beat_relay_entries(settings: Any, user: dict[str, Any]) -> list[str]:
    """Names of the ``CELERY_BEAT_SCHEDULE`` entries that run the relay task.

    None when Celery is not installed: no beat can run them, so they are irrelevant.
    """
    task = _effective(user, "CELERY_RELAY_TASK")
    schedule = getattr(settings, "CELERY_BEAT_SCHEDULE", None) or {}
    if not isinstance(schedule, dict) or not _celery_installed():
        return []
    return [
        str(name)
        for name, entry in schedule.items()
        if isinstance(entry, dict) and entry.get("task") == task
    ]


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """Validate every ``DJANGO_UOW`` key the project sets, and what they need installed."""
    from django.conf import settings

    user = getattr(settings, "DJANGO_UOW", None)
    if user is None:
        user = {}
    if not isinstance(user, dict):
        return [
            checks.Error(
                f"DJANGO_UOW must be a dict, not {type(user).__name__}.",
                hint="Set DJANGO_UOW = {...} with the keys documented in the configuration page.",
                id="django_uow.E001",
            )
        ]
    errors: list[Message] = []
    for key in sorted(set(user) - set(DEFAULTS)):
        errors.append(
            checks.Error(
                unknown_key_message(key),
                hint=f"Valid keys: {', '.join(sorted(DEFAULTS))}.",
                id="django_uow.E002",
            )
        )
    for key, validate in VALIDATORS.items():
        if key in user:
            errors.extend(validate(user[key]))

    uses_celery = _uses_celery(user)
    if uses_celery and not _celery_installed():
        errors.append(
            _error(
                f"Celery is not installed, but {' and '.join(uses_celery)}.",
                "Install the extra (pip install 'django-uow[celery]'), or set "
                "RELAY_ON_COMMIT to 'inline' or False and choose another publisher.",
                18,
            )
        )
    errors.extend(_check_sqlite_relays(settings, user))
    if _valid(user, "INBOX_RETENTION", "LEASE", "MAX_ATTEMPTS", "BACKOFF"):
        errors.extend(_check_inbox_retention(user))
    if uses_celery and _valid(user, "HANDLER_DEADLINE"):
        errors.extend(_check_handler_deadline(settings, user))
    if "ORDERED_WAIT" in user and _valid(user, "HANDLER_DEADLINE", "ORDERED_WAIT"):
        errors.extend(_check_ordered_wait(user))
    return errors


def _check_ordered_wait(user: dict[str, Any]) -> list[Message]:
    """A wait as long as the deadline lets the sweep publish a waiting delivery again."""
    wait = _seconds(_effective(user, "ORDERED_WAIT"))
    deadline = _seconds(_effective(user, "HANDLER_DEADLINE"))
    if wait < deadline:
        return []
    return [
        _error(
            f"DJANGO_UOW['ORDERED_WAIT'] ({wait:g} s) is not shorter than HANDLER_DEADLINE "
            f"({deadline:g} s): the deadline sweep would publish an ordered handler's "
            "delivery again while it is still waiting for its predecessor.",
            "Keep ORDERED_WAIT well below HANDLER_DEADLINE (defaults: 1 minute and 15 minutes).",
            71,
        )
    ]


def _valid(user: dict[str, Any], *keys: str) -> bool:
    """True when each of ``keys`` is unset or passes its validator (relations need values)."""
    return not any(key in user and VALIDATORS[key](user[key]) for key in keys)


def _seconds(value: Any) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def redelivery_window(user: dict[str, Any]) -> float:
    """The longest time (s) an event may come back: LEASE + MAX_ATTEMPTS x BACKOFF max."""
    _, cap = _effective(user, "BACKOFF")
    return float(_effective(user, "LEASE")) + int(_effective(user, "MAX_ATTEMPTS")) * float(cap)


def _check_inbox_retention(user: dict[str, Any]) -> list[Message]:
    """An inbox row pruned while its event can still come back lets the effect happen twice."""
    retention = _seconds(_effective(user, "INBOX_RETENTION"))
    window = redelivery_window(user)
    if retention >= window:
        return []
    return [
        _error(
            f"DJANGO_UOW['INBOX_RETENTION'] ({retention:g} s) is shorter than the longest "
            f"redelivery window, LEASE + MAX_ATTEMPTS x BACKOFF max ({window:g} s): an event "
            "redelivered after its inbox row was pruned would run its handlers again.",
            "Keep INBOX_RETENTION longer than that window (the default is 30 days), or lower "
            "MAX_ATTEMPTS or the BACKOFF maximum.",
            42,
        )
    ]


#: Celery's Redis/SQS visibility timeout when the project sets none (seconds).
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
#: A deadline below this republishes tasks that are only waiting behind a burst.
MIN_HANDLER_DEADLINE = 60.0


def _check_handler_deadline(settings: Any, user: dict[str, Any]) -> list[Message]:
    """Relate ``HANDLER_DEADLINE`` to the broker's own redelivery (``visibility_timeout``).

    Redis and SQS hand an unacknowledged task (a worker killed with prefetched tasks)
    to another worker after ``visibility_timeout``; a message lost by the broker (a
    restart without persistence) never comes back. The sweep republishes both after
    ``HANDLER_DEADLINE``. A deadline that is not shorter than the visibility timeout
    never beats the broker, so a lost message waits at least that long (an hour by
    default): W040. A deadline under a minute republishes tasks that are only queued or
    running, adding work to a queue that is already late: W041.
    """
    deadline = _seconds(_effective(user, "HANDLER_DEADLINE"))
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    visibility = DEFAULT_VISIBILITY_TIMEOUT
    if isinstance(options, dict) and _is_number(options.get("visibility_timeout")):
        visibility = float(options["visibility_timeout"])
    messages: list[Message] = []
    if deadline >= visibility:
        messages.append(
            checks.Warning(
                f"DJANGO_UOW['HANDLER_DEADLINE'] ({deadline:g} s) is not shorter than the "
                f"broker's visibility_timeout ({visibility:g} s): a handler task lost by the "
                "broker is republished only after the broker would have redelivered a killed "
                "worker's tasks itself.",
                hint="Use a deadline well below CELERY_BROKER_TRANSPORT_OPTIONS"
                "['visibility_timeout'] (defaults: 15 minutes and 1 hour).",
                id="django_uow.W040",
            )
        )
    if deadline < MIN_HANDLER_DEADLINE:
        messages.append(
            checks.Warning(
                f"DJANGO_UOW['HANDLER_DEADLINE'] ({deadline:g} s) is under "
                f"{MIN_HANDLER_DEADLINE:g} s: handler tasks still waiting in the queue or "
                "running are published again, and the copies lengthen the queue.",
                hint="Use more than the longest time a handler task waits in the queue and "
                "runs (the default is 15 minutes).",
                id="django_uow.W041",
            )
        )
    return messages


def _check_sqlite_relays(settings: Any, user: dict[str, Any]) -> list[Message]:
    """Warn when relays may run side by side on SQLite, which cannot SKIP LOCKED.

    The condition: the default database is SQLite and relaying is handed to Celery
    workers (``RELAY_ON_COMMIT = "celery"``) or to a beat entry for the relay task. Such
    relays run concurrently; SQLite serialises them with a database-wide write lock
    ("database is locked" under load). ``"inline"`` or ``False`` plus a single
    ``relay_outbox`` process is fine.
    """
    databases = getattr(settings, "DATABASES", {}) or {}
    engine = str(databases.get("default", {}).get("ENGINE", ""))
    if not engine.endswith("sqlite3"):
        return []
    reasons = []
    remedies = []
    if _relays_in_celery(_effective(user, "RELAY_ON_COMMIT")):
        reasons.append("RELAY_ON_COMMIT is 'celery'")
        remedies.append("set RELAY_ON_COMMIT to 'inline' or False and run one relay_outbox")
    entries = _beat_relay_entries(settings, user)
    if entries:
        names = ", ".join(f"CELERY_BEAT_SCHEDULE[{name!r}]" for name in entries)
        reasons.append(f"{names} runs the relay task")
        remedies.append(f"remove {names} (one relay_outbox process sweeps instead)")
    if not reasons:
        return []
    return [
        checks.Warning(
            f"The default database is SQLite and {' and '.join(reasons)}: relays running "
            "side by side serialise on SQLite's write lock (it has no SKIP LOCKED).",
            hint="Use PostgreSQL (or MySQL 8 / MariaDB 10.6+) in production, or "
            f"{'; and '.join(remedies)}. "
            "Silence with SILENCED_SYSTEM_CHECKS = ['django_uow.W001'] for a demo.",
            id="django_uow.W001",
        )
    ]


@checks.register()
def check_handlers(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """List each event type with its handlers (I100); warn of one nothing handles (W100).

    W100 needs every configured publisher to run this project's handlers and nothing
    else (``runs_handlers = True``: ``InlinePublisher``, ``CeleryPublisher``): an event
    without a handler is then marked dispatched and has no effect. A publisher that
    hands events to a broker (Redis streams, RabbitMQ, NATS) may have consumers
    elsewhere, so it turns the warning off.
    """
    from django.conf import settings

    user = getattr(settings, "DJANGO_UOW", None) or {}
    only_handlers = isinstance(user, dict) and _publishers_only_run_handlers(user)
    by_type: dict[str, list[str]] = {}
    for handler in handler_registry.all():
        by_type.setdefault(handler.event_type, []).append(handler.name)
    classes = {
        event_type_of(cls): cls for cls in event_types.classes() if _in_apps(cls, app_configs)
    }
    messages: list[Message] = []
    for event_type in sorted(set(classes) | (set(by_type) if app_configs is None else set())):
        names = sorted(by_type.get(event_type, []))
        cls = classes.get(event_type)
        needs = True if cls is None else cls.needs_handler
        if not isinstance(needs, bool):
            messages.append(
                checks.Error(
                    f"{_label(cls)}.needs_handler must be True or False, not {needs!r}.",
                    hint="Set needs_handler = False on an event class that no handler of "
                    "this project consumes on purpose; leave it out otherwise.",
                    obj=event_type,
                    id="django_uow.E100",
                )
            )
        elif names:
            messages.append(
                checks.Info(f"handlers: {', '.join(names)}", obj=event_type, id="django_uow.I100")
            )
        elif only_handlers and needs:
            messages.append(
                checks.Warning(
                    f"No handler is registered for {_label(cls)}, and every publisher in "
                    "DJANGO_UOW['PUBLISHERS'] runs this project's handlers: its events "
                    "would be marked dispatched and nothing would happen.",
                    hint=f"Register one with @event_handler({_label(cls, short=True)}) in a "
                    "handlers module of an installed app (or in AppConfig.ready(), so that "
                    "every process sees it); set needs_handler = False on the class if "
                    "nothing should consume it, or silence with "
                    "SILENCED_SYSTEM_CHECKS = ['django_uow.W100'].",
                    obj=event_type,
                    id="django_uow.W100",
                )
            )
        else:
            why = "needs_handler = False" if not needs else "published for consumers elsewhere"
            messages.append(
                checks.Info(f"no handler ({why})", obj=event_type, id="django_uow.I100")
            )
    return messages


def _publishers_only_run_handlers(user: dict[str, Any]) -> bool:
    """True when each configured publisher class says ``runs_handlers`` (all import)."""
    paths = _effective(user, "PUBLISHERS")
    if not isinstance(paths, list | tuple) or not paths:
        return False  # E004 says what is wrong
    for path in paths:
        try:
            cls = import_string(path)
        except ImportError:  # E005 reports it; an unknown publisher may publish elsewhere
            return False
        if getattr(cls, "runs_handlers", False) is not True:
            return False
    return True


def _in_apps(cls: type, app_configs: Any) -> bool:
    """An event class of an installed app (of ``app_configs`` when the command names some)."""
    config = apps.get_containing_app_config(cls.__module__)
    if config is None:
        return False
    return app_configs is None or config in app_configs


def _label(cls: type | None, *, short: bool = False) -> str:
    if cls is None:
        return "?"
    return cls.__name__ if short else f"{cls.__module__}.{cls.__qualname__}"
