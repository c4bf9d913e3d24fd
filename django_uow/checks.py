"""System checks for the ``DJANGO_UOW`` setting, and for the event types and their handlers.

Ids are stable and never reused; docs/reference/checks.md lists each one (a test keeps
the page and this module in step).
"""

from __future__ import annotations

import difflib
from datetime import timedelta
from typing import Any

from django.apps import apps
from django.core import checks
from django.utils.module_loading import import_string

from .conf import DEFAULTS, UowSettings, unknown_key_message
from .conf.rules import CELERY_PUBLISHER, celery_installed, is_number
from .delivery.handlers import registry as handler_registry
from .events.base import event_type_of
from .events.base import registry as event_types

Message = checks.CheckMessage

#: The checks across keys (or of the project around them), by id: each id one meaning. A
#: key's own rule has the id of its declaration (``conf.schema``); a test proves no two
#: share one.
CROSS_CHECKS: dict[str, str] = {
    "E001": "DJANGO_UOW is not a dict",
    "E002": "DJANGO_UOW has an unknown key",
    "E018": "Celery is needed and not installed",
    "E033": "RETENTION names an event type or app that does not exist",
    "E042": "INBOX_RETENTION is shorter than the redelivery window",
    "E071": "ORDERED_WAIT is not shorter than HANDLER_DEADLINE",
    "W001": "several relays on SQLite",
    "W040": "HANDLER_DEADLINE is not shorter than the broker's visibility timeout",
    "W041": "HANDLER_DEADLINE is under a minute",
    "E100": "an event class's needs_handler is not a bool",
    "I100": "the handlers of an event type",
    "W100": "an event type nobody handles",
}


def _error(msg: str, hint: str, number: int) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"django_uow.E{number:03d}")


def _retention_names(value: Any) -> list[Message]:
    """E033: each ``RETENTION`` mapping key names a registered event type, an app or "*"."""
    if not isinstance(value, dict):
        return []
    return [
        _error(
            f"DJANGO_UOW['RETENTION'] names {name!r}, {problem}",
            "Use a registered event type (see the admin's event type filter), "
            "'<app_label>.*' for every event of an installed app, or '*'.",
            33,
        )
        for name in value
        if isinstance(name, str) and (problem := _unknown_retention_name(name)) is not None
    ]


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


def value_messages(user: dict[str, Any]) -> list[Message]:
    """Each set key's own rule, as declared in ``conf.schema`` (one id per key)."""
    found: list[Message] = []
    for setting in UowSettings.declared():
        if setting.name in user:
            for problem in setting.rule(setting.name, user[setting.name]):
                found.append(
                    _error(problem.message, problem.hint, problem.check_id or setting.check_id)
                )
    return found


def _relays_in_celery(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value == "celery")


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
    if not isinstance(schedule, dict) or not celery_installed():
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
    errors.extend(value_messages(user))
    if "RETENTION" in user:
        errors.extend(_retention_names(user["RETENTION"]))

    uses_celery = _uses_celery(user)
    if uses_celery and not celery_installed():
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
    declared = {setting.name: setting for setting in UowSettings.declared()}
    return not any(key in user and declared[key].rule(key, user[key]) for key in keys)


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
    if isinstance(options, dict) and is_number(options.get("visibility_timeout")):
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
        for handled in handler.known_types():
            by_type.setdefault(handled, []).append(handler.name)
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
