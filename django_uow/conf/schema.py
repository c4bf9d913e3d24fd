"""Every ``DJANGO_UOW`` key, declared once: default, how it is read, its rule, its check id,
and one line for the reference.

``UowSettings`` reads ``settings.DJANGO_UOW`` on every access, so ``override_settings``
works in tests; its attributes are the ``Setting`` declarations below. The system checks
(``django_uow.checks``), ``DEFAULTS`` and docs/reference/settings.md come from, or are
checked against, these declarations.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, Literal, TypeVar, overload

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import rules
from .rules import Rule

T = TypeVar("T")
RelayOnCommit = Literal["celery", "inline", False]


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One key: ``default``, ``read`` (the stored value as code uses it), ``rule`` (what a
    value may be), ``check_id`` (``django_uow.E<id>`` when the rule fails) and ``doc``."""

    default: Any
    read: Callable[[Any], T]
    rule: Rule
    check_id: int
    doc: str
    #: Derives the value from others when the project did not set this key.
    derive: Callable[[UowSettings, T], T] | None = None
    name: str = field(default="", init=False)

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "name", name)

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[T]: ...

    @overload
    def __get__(self, obj: UowSettings, owner: type) -> T: ...

    def __get__(self, obj: UowSettings | None, owner: type) -> Setting[T] | T:
        if obj is None:
            return self
        user = obj.user_dict()
        value = self.read(user.get(self.name, self.default))
        if self.derive is not None and self.name not in user:
            value = self.derive(obj, value)
        return value


def as_timedelta(value: Any) -> timedelta:
    """A duration setting: a ``timedelta``, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    return timedelta(seconds=float(value))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _pair(value: Any) -> tuple[float, float]:
    base, cap = value
    return float(base), float(cap)


def _relay_on_commit(value: Any) -> RelayOnCommit:
    relay: RelayOnCommit = "celery" if value is True else value
    return relay


def _literal(value: Any) -> Any:
    return value


def _age(value: Any) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    return timedelta(seconds=float(value))


def retention_by_type(value: Any) -> dict[str, timedelta | None]:
    """``RETENTION`` as a mapping ``{event_type, "app.*" or "*": age, None = forever}``.

    A plain value is ``{"*": value}``; a mapping without ``"*"`` keeps the default for
    the types it does not name.
    """
    if not isinstance(value, dict):
        value = {"*": value}
    policy = {"*": UowSettings.RETENTION.default, **value}
    return {key: _age(age) for key, age in policy.items()}


def _retention_default(value: Any) -> timedelta:
    default = retention_by_type(value)["*"]
    return default if default is not None else timedelta.max


def _health(value: Any) -> dict[str, Any]:
    return {**dict.fromkeys(rules.HEALTH_KEYS), **value}


def _half_the_deadline(uow: UowSettings, wait: timedelta) -> timedelta:
    return min(wait, uow.HANDLER_DEADLINE / 2)


_UNSET: dict[str, Any] = {}


class UowSettings:
    """Read-through view of ``settings.DJANGO_UOW`` with defaults.

    A misspelled key raises ``ImproperlyConfigured`` at the first read in every process
    (a worker or a script that skips the system checks included), once per dict.
    """

    # -- relaying --------------------------------------------------------------------
    RELAY_ON_COMMIT = Setting(
        "celery",
        _relay_on_commit,
        rules.relay_on_commit,
        3,
        "after commit: 'celery' (relay here with brokers, else the relay task), 'inline', or False",
    )
    PUBLISHERS = Setting(
        ["django_uow.publishers.CeleryPublisher"],
        list,
        rules.publishers,
        4,
        "dotted paths of the publishers every batch goes to",
    )
    BATCH_SIZE = Setting(
        500,
        int,
        rules.integer(hint="For example DJANGO_UOW = {'BATCH_SIZE': 500}."),
        6,
        "events per claim",
    )
    MAX_ATTEMPTS = Setting(
        10,
        int,
        rules.integer(hint="For example DJANGO_UOW = {'MAX_ATTEMPTS': 10}."),
        7,
        "attempts before an event or a handler delivery is a dead letter",
    )
    BACKOFF = Setting(
        (1.0, 300.0),
        _pair,
        rules.backoff,
        8,
        "base and cap (seconds) of the exponential backoff with full jitter",
    )
    ORDERING = Setting[Literal["aggregate", "none"]](
        "aggregate",
        _literal,
        rules.choice(
            "aggregate",
            "none",
            hint="'aggregate' keeps per-aggregate order (the default); 'none' relays without it.",
        ),
        9,
        "'aggregate' keeps each aggregate's events in order; 'none' gives it up",
    )
    LEASE = Setting(
        10.0,
        float,
        rules.seconds(hint="Use more than the time a relay needs to publish one batch, e.g. 60."),
        12,
        "seconds a relay owns what it claimed; renewed every LEASE / 3 while in flight",
    )
    RELAY_MODE = Setting(
        "auto",
        str,
        rules.choice(
            "auto",
            "lease",
            "direct",
            hint="'auto' (the default) relays directly when every publisher is fast and the "
            "database skips locked rows; see the relay docs for the trade.",
        ),
        80,
        "'lease' (two writes a row), 'direct' (one, row locks held while publishing), 'auto'",
    )
    NOTIFY = Setting(
        False,
        bool,
        rules.boolean("True sends pg_notify after commits that wrote events (PostgreSQL only)."),
        19,
        "PostgreSQL: NOTIFY after each commit that wrote events, waking LISTENing relays",
    )
    HANDLER_DEADLINE = Setting(
        timedelta(minutes=15),
        as_timedelta,
        rules.duration("For example DJANGO_UOW = {'HANDLER_DEADLINE': timedelta(minutes=15)}."),
        40,
        "a delivery not handled this long after it was due is published again (once its "
        "copy is no longer queued)",
    )
    ORDERED_WAIT = Setting(
        timedelta(minutes=1),
        as_timedelta,
        rules.duration(
            "For example DJANGO_UOW = {'ORDERED_WAIT': timedelta(minutes=1)}: how long an "
            "ordered handler's delivery waits for its predecessor before it is blocked."
        ),
        70,
        "how long an ordered delivery waits for its predecessor before it is blocked "
        "(unset: at most half of HANDLER_DEADLINE)",
        derive=_half_the_deadline,
    )
    HANDLER_BATCH = Setting(
        1,
        int,
        rules.integer(hint="For example DJANGO_UOW = {'HANDLER_BATCH': 20}."),
        90,
        "CeleryPublisher: up to this many deliveries of one handler in one task",
    )
    FAST_PATH_TIMEOUT = Setting(
        0.2,
        float,
        rules.seconds(
            at_most=60,
            hint="It bounds the broker work a commit may wait for (connect + send), e.g. "
            "0.2; what does not go out in time is left to the sweep.",
        ),
        20,
        "seconds a commit may wait on brokers in the fast path",
    )
    BROKER_TIMEOUT = Setting(
        5.0,
        float,
        rules.seconds(
            at_most=300,
            hint="It bounds each broker call of the sweep (connect, send, confirm), e.g. "
            "5.0; a broker that does not answer in time is an outage, retried later.",
        ),
        22,
        "seconds each broker call of the sweep may take (connect, send, confirm)",
    )
    FAST_PATH_COOLDOWN = Setting(
        5.0,
        float,
        rules.seconds(
            zero=True,
            hint="After a broker failure commits skip the fast path this long, e.g. 5.0; "
            "0 makes every commit try the broker.",
        ),
        21,
        "seconds commits skip the fast path after a broker failure (the breaker)",
    )
    CELERY_QUEUE = Setting(
        None,
        _optional_str,
        rules.text(
            none=True, what="a queue name or None", hint="None uses Celery's default queue."
        ),
        16,
        "the queue of django-uow's tasks (None: Celery's default)",
    )
    CELERY_RELAY_TASK = Setting(
        "django_uow.tasks.relay_outbox",
        str,
        rules.text(what="a task name", hint="The default is 'django_uow.tasks.relay_outbox'."),
        17,
        "the task the fast path enqueues when the worker relays",
    )
    # -- retention -------------------------------------------------------------------
    RETENTION = Setting(
        timedelta(days=7),
        _retention_default,
        rules.retention,
        10,
        "age of dispatched and discarded events to prune; or a mapping per event type",
    )
    INBOX_RETENTION = Setting(
        timedelta(days=30),
        as_timedelta,
        rules.duration("For example DJANGO_UOW = {'INBOX_RETENTION': timedelta(days=30)}."),
        41,
        "age of succeeded handler deliveries to prune",
    )
    PRUNE_BATCH_SIZE = Setting(
        5000,
        int,
        rules.integer(hint="For example DJANGO_UOW = {'PRUNE_BATCH_SIZE': 5000}."),
        11,
        "rows per retention DELETE",
    )
    # -- brokers ---------------------------------------------------------------------
    REDIS_URL = Setting(
        "redis://127.0.0.1:6379/0",
        str,
        rules.text(
            prefixes=("redis://", "rediss://", "unix://"),
            what="a redis://, rediss:// or unix:// URL",
            hint="For example DJANGO_UOW = {'REDIS_URL': 'redis://127.0.0.1:6379/0'}.",
        ),
        13,
        "RedisStreamPublisher's server",
    )
    STREAM_KEY = Setting(
        "django_uow:{aggregate_type}",
        str,
        rules.stream_key,
        14,
        "the stream of each event: {aggregate_type} and/or {event_type}",
    )
    STREAM_MAXLEN = Setting(
        100_000,
        _optional_int,
        rules.integer(
            none=True, hint="It caps each Redis stream (XADD MAXLEN ~); None keeps every entry."
        ),
        15,
        "each stream's approximate cap (None: no cap)",
    )
    RABBITMQ_URL = Setting(
        "amqp://guest:guest@127.0.0.1:5672//",
        str,
        rules.text(
            prefixes=("amqp://", "pyamqp://"),
            what="an amqp:// URL",
            hint="For example 'amqp://guest:guest@127.0.0.1:5672//' ('//' is the default vhost).",
        ),
        30,
        "RabbitMQPublisher's broker",
    )
    RABBITMQ_EXCHANGE = Setting(
        "django_uow",
        str,
        rules.text(
            what="an exchange name",
            refuse=lambda name: name.startswith("amq."),
            hint="A non-empty name not starting with 'amq.' (reserved by RabbitMQ); the "
            "default is 'django_uow'.",
        ),
        31,
        "the topic exchange events are published to",
    )
    NATS_URL = Setting(
        "nats://127.0.0.1:4222",
        str,
        rules.text(
            prefixes=("nats://", "tls://"),
            what="a nats:// URL",
            hint="For example 'nats://127.0.0.1:4222' (tls:// for TLS).",
        ),
        60,
        "NatsJetStreamPublisher's server",
    )
    NATS_STREAM = Setting(
        "DJANGO_UOW",
        str,
        rules.text(
            pattern=r"[A-Za-z0-9_-]+",
            what="a JetStream stream name",
            hint="Letters, digits, '-' and '_' (no spaces, '.', '*' or '>'); the default is "
            "'DJANGO_UOW'.",
        ),
        61,
        "the JetStream stream (created if missing)",
    )
    NATS_SUBJECT_PREFIX = Setting(
        "django_uow",
        str,
        rules.nats_subject,
        62,
        "subjects are '<prefix>.<event type>'; the stream captures '<prefix>.>'",
    )
    # -- operations ------------------------------------------------------------------
    HEALTH = Setting(
        {"MAX_LAG": None, "MAX_FAILED": None, "MAX_CONSUMER_LAG": None},
        _health,
        rules.health,
        32,
        "thresholds past which the health view answers 503 (None: never)",
    )
    TIMEOUT = Setting(
        None,
        _optional_float,
        rules.seconds(
            none=True,
            hint="It is the default time limit of every outermost unit of work; None: no limit.",
        ),
        34,
        "default time limit (seconds) of every outermost unit of work",
    )
    REDACT = Setting(
        [],
        lambda keys: [str(key) for key in keys],
        rules.redact,
        50,
        "payload and header keys masked wherever events are shown, beside the built-in list",
    )

    #: The ``DJANGO_UOW`` dict whose keys were validated last (compared by identity, so
    #: ``override_settings``, which installs a new dict, is validated again).
    _validated: Any = None

    @classmethod
    def declared(cls) -> Iterator[Setting[Any]]:
        """Every key's declaration, in the order above."""
        for value in vars(cls).values():
            if isinstance(value, Setting):
                yield value

    def user_dict(self) -> dict[str, Any]:
        user = getattr(settings, "DJANGO_UOW", None) or _UNSET
        if user is not self._validated:
            validate_keys(user)
            self._validated = user
        result: dict[str, Any] = user
        return result

    @property
    def user_settings(self) -> dict[str, Any]:
        return dict(getattr(settings, "DJANGO_UOW", None) or {})

    @property
    def RETENTION_BY_TYPE(self) -> dict[str, timedelta | None]:
        """``RETENTION`` as a mapping (see ``retention_by_type``)."""
        return retention_by_type(self.user_dict().get("RETENTION", UowSettings.RETENTION.default))


DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in UowSettings.declared()}


def unknown_key_message(key: str) -> str:
    """``"DJANGO_UOW has an unknown key 'X'; did you mean 'Y'?"`` (the closest known key)."""
    close = difflib.get_close_matches(str(key), list(DEFAULTS), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(DEFAULTS))}."
    return f"DJANGO_UOW has an unknown key {key!r}; {hint}"


def validate_keys(user: Any) -> None:
    """Raise ``ImproperlyConfigured``: ``DJANGO_UOW`` is not a dict, or has an unknown key."""
    if not isinstance(user, dict):
        raise ImproperlyConfigured(f"DJANGO_UOW must be a dict, not {type(user).__name__}.")
    unknown = sorted(set(user) - set(DEFAULTS), key=str)
    if unknown:
        raise ImproperlyConfigured(unknown_key_message(unknown[0]))
