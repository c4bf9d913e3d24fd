"""Domain events: the base class, the event-type registry, JSON (de)serialisation, the envelope.

An event is a frozen dataclass. It is stored as one flat JSON object of its fields
(Django's JSON encoder rules: Decimal, UUID, dates...), under a stable type name that a
registry maps back to the class, so handlers receive typed events. No pickle anywhere.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import dateparse, timezone

from ..exceptions import EventDecodeError, EventSerializationError, UnknownEventType
from ..tracing import inject_trace_context
from . import decoding, encoding
from .audit import audit_headers
from .redaction import redact
from .scheduling import due_time, seconds

E = TypeVar("E", bound="DomainEvent")

SCHEMA_VERSION_HEADER = "schema_version"
#: The outbox columns' lengths (``OutboxEvent`` declares its fields with them): a longer
#: value is refused at ``record_event()``, where PostgreSQL and MariaDB would refuse it
#: at COMMIT and SQLite would store it.
EVENT_TYPE_MAX_LENGTH = 255
AGGREGATE_ID_MAX_LENGTH = 255


class _EventMeta(type):
    """Refuses a non-frozen ``@dataclass`` on an event class while the class is defined.

    ``@dataclass`` runs after ``__init_subclass__``, and the first thing it sets on the
    class is ``__dataclass_params__``: that is where a mutable event is caught.
    """

    def __setattr__(cls, name: str, value: Any) -> None:
        if name == "__dataclass_params__" and not getattr(value, "frozen", True):
            registry.discard(cls)  # type: ignore[arg-type]
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} is a DomainEvent declared with a "
                "non-frozen dataclass. Events are facts that must not change after they "
                "are recorded: declare it with @dataclass(frozen=True)."
            )
        super().__setattr__(name, value)


class DomainEvent(metaclass=_EventMeta):
    """Base class of domain events; subclasses are ``@dataclass(frozen=True)``.

    Class attributes a subclass may set:

    - ``event_type``: the stable stored name. Default ``"<app_label>.<ClassName>"``
      (the app containing the module), or the class name outside any app. Set it
      explicitly before renaming or moving a class, so stored events still resolve.
    - ``event_version``: the schema version of the payload (default 1).
    - ``upcast(payload, version)``: classmethod turning an older stored payload into the
      current shape.
    - ``needs_handler``: ``False`` for an event that no handler of this project consumes
      on purpose (kept for the record, read from the outbox by another system); it
      silences the ``django_uow.W100`` check. Inherited like any class attribute.
    """

    event_type: ClassVar[str]
    event_version: ClassVar[int] = 1
    needs_handler: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        registry.add(cls)

    @classmethod
    def upcast(cls, payload: dict[str, Any], version: int) -> dict[str, Any]:
        """Return ``payload`` (stored with schema ``version``) in the current shape.

        The default accepts only the current version; override it when you bump
        ``event_version``.
        """
        if version != cls.event_version:
            # Permanent (an EventDecodeError is a ValueError): retrying cannot change it.
            raise EventDecodeError(
                event_type_of(cls),
                f"{cls.__name__} is at schema version {cls.event_version} but the stored "
                f"payload has version {version}; define {cls.__name__}.upcast() to convert it",
            )
        return payload

    def to_payload(self) -> dict[str, Any]:
        """Return the fields as JSON-ready primitives, or raise ``EventSerializationError``."""
        return encode_payload(self)

    @classmethod
    def from_payload(cls: type[E], payload: Mapping[str, Any], version: int | None = None) -> E:
        """Rebuild a typed event from its stored payload, upcasting older versions.

        Each field is decoded from its annotation; keys that are not fields are ignored.
        Raises ``EventDecodeError`` (a permanent failure) when the payload does not fit.
        """
        if not isinstance(payload, Mapping):
            shown = redact(payload)  # a list may hold secret keys: the text reaches logs
            raise EventDecodeError(
                event_type_of(cls), f"payload is not a JSON object: {shown!r:.200}"
            )
        data = dict(payload)
        if version is not None and version != cls.event_version:
            data = cls.upcast(data, version)
        try:
            event: E = decoding.build_dataclass(cls, data)
            return event
        except decoding.Misfit as exc:
            raise EventDecodeError(event_type_of(cls), exc.detail) from None


# --------------------------------------------------------------------------- registry


class EventRegistry:
    """Maps stable event-type names to ``DomainEvent`` classes."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[DomainEvent]] = {}
        self._deferred: list[type[DomainEvent]] = []

    def add(self, cls: type[DomainEvent]) -> None:
        if "event_type" not in cls.__dict__ and not apps.apps_ready:
            # The default name needs the app registry; resolve it in AppConfig.ready().
            self._deferred.append(cls)
            return
        self._register(cls)

    def resolve_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for cls in deferred:
            self._register(cls)

    def _register(self, cls: type[DomainEvent]) -> None:
        if "event_type" not in cls.__dict__:
            cls.event_type = default_event_type(cls)
        name = cls.event_type
        existing = self._by_name.get(name)
        if existing is not None and existing is not cls and not _same_definition(existing, cls):
            raise ImproperlyConfigured(
                f"Two DomainEvent classes claim event type {name!r}: "
                f"{existing.__module__}.{existing.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}. Give one of them its own "
                "`event_type = '...'` class attribute."
            )
        self._by_name[name] = cls

    def discard(self, cls: type[DomainEvent]) -> None:
        """Forget ``cls`` (a class refused while it was being defined)."""
        self._deferred = [c for c in self._deferred if c is not cls]
        self._by_name = {n: c for n, c in self._by_name.items() if c is not cls}

    def get(self, name: str) -> type[DomainEvent]:
        if self._deferred:
            self.resolve_deferred()
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownEventType(name) from None

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def classes(self) -> list[type[DomainEvent]]:
        """The registered classes, in event-type order."""
        if self._deferred:
            self.resolve_deferred()
        return [self._by_name[name] for name in self.names()]


def _same_definition(a: type, b: type) -> bool:
    # Re-executing a module (autoreload, dataclass(slots=True) rebuilding the class)
    # defines "the same" class again: let the newest win.
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def default_event_type(cls: type[DomainEvent]) -> str:
    """``"<app_label>.<ClassName>"`` for a class inside an installed app, else the class name."""
    app_config = apps.get_containing_app_config(cls.__module__) if apps.apps_ready else None
    if app_config is None:
        return cls.__name__
    return f"{app_config.label}.{cls.__name__}"


registry = EventRegistry()


def event_type_of(event_or_class: DomainEvent | type[DomainEvent]) -> str:
    cls = event_or_class if isinstance(event_or_class, type) else type(event_or_class)
    if "event_type" not in cls.__dict__:
        registry.resolve_deferred()
    return cls.event_type


# --------------------------------------------------------------------------- payloads


#: Types whose values ``json.loads(json.dumps(v))`` gives back unchanged (exact types:
#: an ``IntEnum`` is an ``int`` subclass whose JSON form is its value, not itself).
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def encode_payload(event: DomainEvent) -> dict[str, Any]:
    """Encode the dataclass fields of ``event`` into JSON primitives.

    One ``json.dumps`` of all fields plus one scan of its text on the happy path; only
    when that fails are the values walked, so the error can name the field.
    """
    return encode_payload_text(event)[0]


def encode_payload_text(event: DomainEvent) -> tuple[dict[str, Any], str]:
    """``encode_payload(event)`` and its JSON text, which the outbox stores as it is.

    The event is encoded once: the text checked here is the text written at commit.
    """
    if not dataclasses.is_dataclass(event):
        raise TypeError(
            f"{type(event).__name__} must be a dataclass: decorate it with @dataclass(frozen=True)."
        )
    values = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    try:
        text = encoding.dumps(values)
    except (TypeError, ValueError) as exc:
        error = _serialization_error(event, values)
        raise error or EventSerializationError(event_type_of(event), "", values, str(exc)) from exc
    if encoding.may_hold_unstorable_text(text):
        error = _serialization_error(event, values)
        if error is not None:  # else "\\u0000" was six ordinary characters
            raise error
    scalars = all(type(value) in _JSON_SCALARS for value in values.values())
    # All scalars: already what decoding the text would give (field names never collide).
    try:
        payload = values if scalars else encoding.loads_unique(text)
    except encoding.KeysCollide:
        error = _collision_error(event, values)
        raise error or EventSerializationError(
            event_type_of(event), "", values, problem="has dict keys that JSON writes alike"
        ) from None
    if encoding.may_hold_unsteady_numbers(text):
        steady = encoding.steady_numbers(payload)
        if steady is not payload:
            payload, text = steady, encoding.dumps(steady)
    return payload, text


def _collision_error(event: DomainEvent, values: dict[str, Any]) -> EventSerializationError | None:
    for name, value in values.items():
        problem = encoding.find_collision(value, name)
        if problem is not None:
            return EventSerializationError(
                event_type_of(event),
                name,
                problem.value,
                path=problem.path,
                problem=problem.problem,
                advice=problem.advice,
            )
    return None


def check_storable_text(event_type: str, what: str, value: str, limit: int | None = None) -> None:
    """Refuse ``value`` (``what`` it is: "its aggregate id"...) if a column would refuse it.

    Raises ``EventSerializationError`` naming it, the limit and what to do.
    """
    if limit is not None and len(value) > limit:
        raise EventSerializationError(
            event_type,
            "",
            value,
            subject=what,
            problem=f"is {len(value)} characters long ({value[:40]!r}...), over the "
            f"outbox column's limit of {limit}, which PostgreSQL and MariaDB refuse at COMMIT",
            advice="Use a shorter value (a surrogate key, or a hash of the long one).",
        )
    if value.isascii() and "\x00" not in value:
        return
    problem = encoding.text_problem(what, value, "text")
    if problem is not None:
        raise EventSerializationError(
            event_type,
            "",
            value,
            subject=what,
            problem=problem.problem,
            advice=problem.advice,
        )


def check_aggregate_id(event_type: str, pk: Any) -> None:
    """Refuse an aggregate pk the outbox's ``aggregate_id`` column cannot hold."""
    check_storable_text(event_type, "its aggregate id", str(pk), AGGREGATE_ID_MAX_LENGTH)


def _check_headers(event_type: str, headers: dict[str, Any]) -> None:
    for key, value in headers.items():
        if isinstance(value, str):
            check_storable_text(event_type, f"its header {key!r}", value)
        elif value is not None and not isinstance(value, int | float):
            problem = encoding.find_problem(value, key)
            if problem is not None:
                raise EventSerializationError(
                    event_type,
                    "",
                    problem.value,
                    subject=f"its header {key!r}",
                    problem=problem.problem,
                    advice=problem.advice,
                )


def _serialization_error(
    event: DomainEvent, values: dict[str, Any]
) -> EventSerializationError | None:
    """The error naming the first field that cannot be stored, if any."""
    for name, value in values.items():
        problem = encoding.find_problem(value, name)
        if problem is not None:
            return EventSerializationError(
                event_type_of(event),
                name,
                problem.value,
                problem.reason,
                path=problem.path,
                problem=problem.problem,
                advice=problem.advice,
            )
    return None


# --------------------------------------------------------------------------- context

_causation: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "django_uow_causation", default=(None, None)
)


@contextmanager
def event_context(
    *, correlation_id: str | None = None, causation_id: str | None = None
) -> Iterator[None]:
    """Set the correlation and causation ids that events recorded inside will carry.

    The relay sets it around each handler, so events a handler records point back to
    the event that caused them.
    """
    token = _causation.set((correlation_id, causation_id))
    try:
        yield
    finally:
        _causation.reset(token)


def current_event_context() -> tuple[str | None, str | None]:
    return _causation.get()


def ensure_correlation(
    default_id: str,
) -> contextvars.Token[tuple[str | None, str | None]] | None:
    """Give events a correlation id for this business transaction, unless one is set.

    Returns a token for ``reset_event_context`` when it set one.
    """
    correlation_id, causation_id = _causation.get()
    if correlation_id:
        return None
    return _causation.set((default_id, causation_id))


def reset_event_context(token: contextvars.Token[tuple[str | None, str | None]] | None) -> None:
    if token is not None:
        # Reset from another context: nothing of ours to undo there.
        with suppress(ValueError):
            _causation.reset(token)


# --------------------------------------------------------------------------- envelopes


#: Encodes messages (Django's JSON rules: datetimes, decimals, UUIDs); stateless, shared.
_MESSAGE_ENCODER = DjangoJSONEncoder()


@dataclass(frozen=True)
class Envelope:
    """An event as stored and published: identity and routing data beside the payload."""

    event_id: uuid.UUID
    event_type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int | None
    occurred_at: datetime.datetime
    payload: dict[str, Any]
    headers: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0

    @property
    def schema_version(self) -> int:
        value = self.headers.get(SCHEMA_VERSION_HEADER, 1)
        if type(value) is int:
            return value
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
            return int(value)
        # Permanent, like a payload that does not decode: no retry makes it a number.
        raise EventDecodeError(
            self.event_type,
            f"header {SCHEMA_VERSION_HEADER!r} is not a schema version number: {value!r:.50}",
        )

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get("correlation_id")

    @property
    def causation_id(self) -> str | None:
        return self.headers.get("causation_id")

    def event_class(self) -> type[DomainEvent]:
        return registry.get(self.event_type)

    def to_event(self) -> DomainEvent:
        """Rebuild the typed event (raises ``UnknownEventType`` for an unregistered name)."""
        return self.event_class().from_payload(self.payload, self.schema_version)

    def to_json(self) -> str:
        """``to_message()`` as JSON text, the body the shipped publishers send.

        One encoder instance serves every call: ``json.dumps(cls=...)`` would build a new
        one per event, a measurable share of a relay batch.
        """
        return _MESSAGE_ENCODER.encode(self.to_message())

    def to_message(self) -> dict[str, Any]:
        """A JSON-ready dict, the wire format used by the shipped publishers."""
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "aggregate_version": self.aggregate_version,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": self.payload,
            "headers": self.headers,
        }

    @classmethod
    def of_row(cls, row: Any) -> Envelope:
        """The envelope of a stored outbox row (the model, or the relay's ``ClaimedRow``)."""
        return cls(
            event_id=row.event_id,
            event_type=row.event_type,
            aggregate_type=row.aggregate_type,
            aggregate_id=row.aggregate_id,
            aggregate_version=row.aggregate_version,
            occurred_at=row.occurred_at,
            payload=row.payload,
            headers=row.headers,
            attempts=row.attempts,
        )

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Envelope:
        occurred = dateparse.parse_datetime(message["occurred_at"])
        assert occurred is not None
        return cls(
            event_id=uuid.UUID(str(message["event_id"])),
            event_type=message["event_type"],
            aggregate_type=message.get("aggregate_type", ""),
            aggregate_id=message.get("aggregate_id", ""),
            aggregate_version=message.get("aggregate_version"),
            occurred_at=occurred,
            payload=dict(message.get("payload") or {}),
            headers=dict(message.get("headers") or {}),
        )


@dataclass
class StagedEvent:
    """An event recorded in a unit of work and not yet written to the outbox.

    The aggregate id and version are filled in at staging time: a new aggregate has
    no pk when it records its first event.
    """

    event: DomainEvent
    event_id: uuid.UUID
    event_type: str
    occurred_at: datetime.datetime
    payload: dict[str, Any]
    headers: dict[str, Any]
    #: When a scheduled event is due (``None``: due when committed, an ordinary event);
    #: for a ``delay`` this process's estimate, the database counts from the commit.
    deliver_at: datetime.datetime | None = None
    #: ``record_event(delay=...)``: seconds after the commit (``None`` otherwise).
    delay: float | None = None
    #: ``payload`` as JSON text, encoded once at ``record_event()`` and written at commit.
    payload_json: str | None = None

    @classmethod
    def from_event(
        cls, event: DomainEvent, *, delay: Any = None, deliver_at: Any = None
    ) -> StagedEvent:
        """Encode ``event`` now; a bad payload or schedule raises before anything is staged."""
        if not isinstance(event, DomainEvent):
            raise TypeError(
                f"record_event() takes a DomainEvent instance, got {type(event).__name__}. "
                "Subclass django_uow.DomainEvent and decorate it with @dataclass(frozen=True)."
            )
        now = timezone.now()
        due = due_time(delay=delay, deliver_at=deliver_at, now=now)
        after_commit = seconds(delay) if delay is not None and due is not None else None
        payload, payload_json = encode_payload_text(event)
        correlation_id, causation_id = current_event_context()
        headers: dict[str, Any] = {SCHEMA_VERSION_HEADER: type(event).event_version}
        if correlation_id:
            headers["correlation_id"] = correlation_id
        if causation_id:
            headers["causation_id"] = causation_id
        headers.update(audit_headers())

        inject_trace_context(headers)
        event_type = event_type_of(event)
        check_storable_text(event_type, "its event type", event_type, EVENT_TYPE_MAX_LENGTH)
        _check_headers(event_type, headers)
        return cls(
            event=event,
            event_id=uuid.uuid4(),
            event_type=event_type,
            occurred_at=now,
            payload=payload,
            headers=headers,
            deliver_at=due,
            delay=after_commit,
            payload_json=payload_json,
        )
