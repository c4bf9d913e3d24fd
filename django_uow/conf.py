"""The settings object: the one place where a ``DJANGO_UOW`` default is written.

Every property reads ``settings.DJANGO_UOW`` on each access, so ``override_settings``
works in tests. Value validation lives in ``checks.py``; the keys are also validated
here, once per ``DJANGO_UOW`` dict, so a misspelled key raises at first use in every
process (a worker or a script that skips the system checks included).
"""

from __future__ import annotations

import difflib
from datetime import timedelta
from typing import Any, Literal

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = {
    # "celery": enqueue the relay task after commit; "inline": relay in-process; False: off.
    "RELAY_ON_COMMIT": "celery",
    "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"],
    "BATCH_SIZE": 500,
    "MAX_ATTEMPTS": 10,
    # (base seconds, max seconds) of the exponential backoff with full jitter.
    "BACKOFF": (1.0, 300.0),
    "ORDERING": "aggregate",
    "RETENTION": timedelta(days=7),
    "PRUNE_BATCH_SIZE": 5000,
    # How long a relay owns the events it claimed before another relay may take them. A
    # relay renews it every LEASE / 3 seconds while a batch is in flight, so it can be
    # short: a relay that dies blocks its aggregates for about this long.
    "LEASE": 10.0,
    # "lease": claim under a lease, publish outside any transaction, fenced ack (two
    # writes per row); "direct": claim, publish and mark dispatched in one transaction
    # (one write per row, row locks held while publishing); "auto": direct when every
    # publisher is fast (direct_relay = True) and the database can skip locked rows.
    "RELAY_MODE": "auto",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "STREAM_KEY": "django_uow:{aggregate_type}",
    "STREAM_MAXLEN": 100_000,
    # Thresholds of django_uow.views.health: past them it answers 503 (None: never).
    # MAX_LAG: seconds of relay lag; MAX_FAILED: failed events plus failed handler
    # deliveries; MAX_CONSUMER_LAG: seconds since the oldest delivery not handled yet
    # was first published.
    "HEALTH": {"MAX_LAG": None, "MAX_FAILED": None, "MAX_CONSUMER_LAG": None},
    # Default time limit (seconds) of every outermost unit of work; None: no limit.
    "TIMEOUT": None,
    "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672//",
    "RABBITMQ_EXCHANGE": "django_uow",
    "NATS_URL": "nats://127.0.0.1:4222",
    # The JetStream stream NatsJetStreamPublisher writes to (created if missing).
    "NATS_STREAM": "DJANGO_UOW",
    # Subjects are "<prefix>.<event type>"; the stream captures "<prefix>.>".
    "NATS_SUBJECT_PREFIX": "django_uow",
    "CELERY_QUEUE": None,
    "CELERY_RELAY_TASK": "django_uow.tasks.relay_outbox",
    # PostgreSQL: send NOTIFY after each commit that wrote events, waking LISTENing relays.
    "NOTIFY": False,
    # A handler delivery published this long ago and neither succeeded nor failed is
    # published again by the sweep (a lost broker message costs this, not the event).
    "HANDLER_DEADLINE": timedelta(minutes=15),
    # How long a delivery of an ordered handler (@event_handler(..., ordered=True)) waits
    # for its aggregate's previous event before it is reported blocked. Unset, it is
    # also at most half of HANDLER_DEADLINE.
    "ORDERED_WAIT": timedelta(minutes=1),
    # CeleryPublisher: up to this many deliveries of one handler in one Celery task
    # (django_uow.tasks.handle_events). 1: one task per event and handler.
    "HANDLER_BATCH": 1,
    # Succeeded handler deliveries (the inbox) are pruned after this.
    "INBOX_RETENTION": timedelta(days=30),
    # Seconds the commit path may spend on broker work (connect + send) in the fast path.
    "FAST_PATH_TIMEOUT": 0.2,
    # Seconds commits skip the fast path after a broker failure (the circuit breaker).
    "FAST_PATH_COOLDOWN": 5.0,
    # Payload/header keys (names or dotted paths) masked wherever events are shown, on
    # top of django_uow.redaction.DEFAULT_KEYS (authorization, password, token...).
    "REDACT": [],
}

RelayOnCommit = Literal["celery", "inline", False]
_UNSET: dict[str, Any] = {}


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


def _as_age(value: Any) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    return timedelta(seconds=float(value))


class UowSettings:
    """Read-through view of ``settings.DJANGO_UOW`` with defaults."""

    #: The ``DJANGO_UOW`` dict whose keys were validated last (compared by identity, so
    #: ``override_settings``, which installs a new dict, is validated again).
    _validated: Any = None

    def _get(self, key: str) -> Any:
        user = getattr(settings, "DJANGO_UOW", None) or _UNSET
        if user is not self._validated:
            validate_keys(user)
            self._validated = user
        return user.get(key, DEFAULTS[key])

    @property
    def user_settings(self) -> dict[str, Any]:
        return dict(getattr(settings, "DJANGO_UOW", None) or {})

    @property
    def RELAY_ON_COMMIT(self) -> RelayOnCommit:
        value: RelayOnCommit | Literal[True] = self._get("RELAY_ON_COMMIT")
        return "celery" if value is True else value

    @property
    def PUBLISHERS(self) -> list[str]:
        return list(self._get("PUBLISHERS"))

    @property
    def BATCH_SIZE(self) -> int:
        return int(self._get("BATCH_SIZE"))

    @property
    def MAX_ATTEMPTS(self) -> int:
        return int(self._get("MAX_ATTEMPTS"))

    @property
    def BACKOFF(self) -> tuple[float, float]:
        base, cap = self._get("BACKOFF")
        return float(base), float(cap)

    @property
    def ORDERING(self) -> Literal["aggregate", "none"]:
        ordering: Literal["aggregate", "none"] = self._get("ORDERING")
        return ordering

    @property
    def RETENTION(self) -> timedelta:
        """The retention of event types no ``RETENTION`` mapping names (``"*"``)."""
        default = self.RETENTION_BY_TYPE["*"]
        return default if default is not None else timedelta.max

    @property
    def RETENTION_BY_TYPE(self) -> dict[str, timedelta | None]:
        """``RETENTION`` as a mapping ``{event_type, "app.*" or "*": age, None = forever}``.

        A plain value is ``{"*": value}``; a mapping without ``"*"`` keeps the default
        for the types it does not name.
        """
        value = self._get("RETENTION")
        if not isinstance(value, dict):
            value = {"*": value}
        policy = {"*": DEFAULTS["RETENTION"], **value}
        return {key: _as_age(age) for key, age in policy.items()}

    @property
    def PRUNE_BATCH_SIZE(self) -> int:
        return int(self._get("PRUNE_BATCH_SIZE"))

    @property
    def LEASE(self) -> float:
        return float(self._get("LEASE"))

    @property
    def REDIS_URL(self) -> str:
        return str(self._get("REDIS_URL"))

    @property
    def STREAM_KEY(self) -> str:
        return str(self._get("STREAM_KEY"))

    @property
    def STREAM_MAXLEN(self) -> int | None:
        value = self._get("STREAM_MAXLEN")
        return None if value is None else int(value)

    @property
    def TIMEOUT(self) -> float | None:
        value = self._get("TIMEOUT")
        return None if value is None else float(value)

    @property
    def HEALTH(self) -> dict[str, Any]:
        return {**DEFAULTS["HEALTH"], **self._get("HEALTH")}

    @property
    def RABBITMQ_URL(self) -> str:
        return str(self._get("RABBITMQ_URL"))

    @property
    def RABBITMQ_EXCHANGE(self) -> str:
        return str(self._get("RABBITMQ_EXCHANGE"))

    @property
    def NATS_URL(self) -> str:
        return str(self._get("NATS_URL"))

    @property
    def NATS_STREAM(self) -> str:
        return str(self._get("NATS_STREAM"))

    @property
    def NATS_SUBJECT_PREFIX(self) -> str:
        return str(self._get("NATS_SUBJECT_PREFIX"))

    @property
    def CELERY_QUEUE(self) -> str | None:
        queue: str | None = self._get("CELERY_QUEUE")
        return queue

    @property
    def CELERY_RELAY_TASK(self) -> str:
        return str(self._get("CELERY_RELAY_TASK"))

    @property
    def RELAY_MODE(self) -> str:
        return str(self._get("RELAY_MODE"))

    @property
    def NOTIFY(self) -> bool:
        return bool(self._get("NOTIFY"))

    @property
    def HANDLER_DEADLINE(self) -> timedelta:
        return as_timedelta(self._get("HANDLER_DEADLINE"))

    @property
    def ORDERED_WAIT(self) -> timedelta:
        wait = as_timedelta(self._get("ORDERED_WAIT"))
        if "ORDERED_WAIT" in self.user_settings:
            return wait
        return min(wait, self.HANDLER_DEADLINE / 2)

    @property
    def HANDLER_BATCH(self) -> int:
        return int(self._get("HANDLER_BATCH"))

    @property
    def INBOX_RETENTION(self) -> timedelta:
        return as_timedelta(self._get("INBOX_RETENTION"))

    @property
    def FAST_PATH_TIMEOUT(self) -> float:
        return float(self._get("FAST_PATH_TIMEOUT"))

    @property
    def FAST_PATH_COOLDOWN(self) -> float:
        return float(self._get("FAST_PATH_COOLDOWN"))

    @property
    def REDACT(self) -> list[str]:
        return [str(key) for key in self._get("REDACT")]


def as_timedelta(value: Any) -> timedelta:
    """A duration setting: a ``timedelta``, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    return timedelta(seconds=float(value))


uow_settings = UowSettings()
