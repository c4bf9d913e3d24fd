"""Each handler's own delivery policy: ``max_attempts``, ``backoff``, ``timeout``,
``retry_on`` and ``give_up_on`` on ``@event_handler``; the settings stay the defaults.

The promises are proven on a real Celery worker (``tests.testapp.show_handlers`` holds
the ``hooks.*`` handlers it runs); the inline relay follows the same policy.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from django_uow import DomainEvent, Envelope
from django_uow.delivery.handlers import event_handler, registry
from django_uow.events.base import registry as event_types
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.publishers import CeleryPublisher
from django_uow.relay import relay_pending
from tests.support.delivery import CELERY, outbox_rows
from tests.support.processes import running, start_worker, wait_for
from tests.testapp.models import Effect

INLINE = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}


@dataclass(frozen=True)
class Flaked(DomainEvent):
    """Only this module's handlers take it."""

    event_type = "tests.policy.flaked"

    what: str


@pytest.fixture
def temp_handlers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


@pytest.fixture(scope="module", autouse=True)
def _forget_event_type() -> Iterator[None]:
    yield
    event_types.discard(Flaked)


def rows_of(event: OutboxEvent) -> dict[str, tuple[str, int]]:
    return {
        r.handler: (r.status, r.attempts)
        for r in ProcessedEvent.objects.filter(event_id=event.event_id)
    }


def settled(*events: OutboxEvent, handlers: int = 5) -> bool:
    for event in events:
        found = rows_of(event)
        if len(found) < handlers or any(
            s not in ("succeeded", "failed") for s, _ in found.values()
        ):
            return False
    return True


# ----------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts is a whole number of 1 or more"),
        ({"max_attempts": True}, ValueError, "max_attempts is a whole number"),
        ({"backoff": (5, 1)}, ValueError, "0 < base <= max"),
        ({"backoff": 3}, ValueError, "backoff is (base, max) seconds"),
        ({"timeout": 0}, ValueError, "timeout is seconds > 0"),
        ({"timeout": "5s"}, ValueError, "timeout is seconds > 0"),
        ({"retry_on": "TimeoutError"}, TypeError, "takes an exception class or a list"),
        ({"give_up_on": [KeyError("x")]}, TypeError, "is not an exception class"),
        ({"queue": ""}, TypeError, "queue is the name of a Celery queue"),
    ],
)
def test_a_bad_policy_option_is_refused_naming_it(
    options: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        event_handler(Flaked, name="tests.policy.bad", **options)
    assert words in str(caught.value)
    assert next(iter(options)) in str(caught.value)
    with pytest.raises(LookupError):
        registry.get("tests.policy.bad")


def test_options_left_out_follow_the_settings_read_when_asked(temp_handlers: list[str]) -> None:
    @event_handler(Flaked, name="tests.policy.defaults")
    def plain(event: Flaked) -> None: ...

    @event_handler(Flaked, name="tests.policy.own", max_attempts=2, backoff=(0.5, 4))
    def own(event: Flaked) -> None: ...

    temp_handlers.extend(["tests.policy.defaults", "tests.policy.own"])
    with override_settings(DJANGO_UOW={"MAX_ATTEMPTS": 7, "BACKOFF": (2.0, 9.0)}):
        assert registry.get("tests.policy.defaults").policy.attempts() == 7
        assert registry.get("tests.policy.defaults").policy.backoff_bounds() == (2.0, 9.0)
        assert registry.get("tests.policy.own").policy.attempts() == 2
        assert registry.get("tests.policy.own").policy.backoff_bounds() == (0.5, 4.0)


def test_give_up_on_wins_over_retry_on_and_retry_on_takes_subclasses(
    temp_handlers: list[str],
) -> None:
    @event_handler(
        Flaked, name="tests.policy.both", retry_on=OSError, give_up_on=[FileNotFoundError]
    )
    def both(event: Flaked) -> None: ...

    temp_handlers.append("tests.policy.both")
    policy = registry.get("tests.policy.both").policy
    assert not policy.gives_up(ConnectionResetError())  # an OSError: retried
    assert policy.gives_up(FileNotFoundError())  # an OSError too, but given up on
    assert policy.gives_up(ValueError())  # not in retry_on


# ----------------------------------------------------------------------- inline relay


def _relay_until_settled(event: OutboxEvent, rounds: int = 12) -> None:
    for _ in range(rounds):
        relay_pending()
        event.refresh_from_db()
        if event.status in ("dispatched", "failed"):
            return
        time.sleep(0.06)


@pytest.mark.django_db
def test_inline_a_handler_with_max_attempts_dead_letters_its_event_after_its_own_count(
    temp_handlers: list[str],
) -> None:
    calls: list[str] = []

    @event_handler(Flaked, name="tests.policy.two_tries", max_attempts=2, backoff=(0.01, 0.02))
    def two_tries(event: Flaked) -> None:
        calls.append(event.what)
        raise ValueError("upstream 503")

    temp_handlers.append("tests.policy.two_tries")
    with override_settings(DJANGO_UOW={**INLINE, "MAX_ATTEMPTS": 6, "BACKOFF": (0.01, 0.02)}):
        (event,) = outbox_rows(Flaked.event_type, [{"what": "a"}], aggregate_id="")
        _relay_until_settled(event)
    assert (event.status, event.attempts) == ("failed", 2)  # not MAX_ATTEMPTS = 6
    assert rows_of(event) == {"tests.policy.two_tries": ("failed", 2)}
    assert calls == ["a", "a"]


@pytest.mark.django_db
def test_inline_give_up_on_dead_letters_at_once_and_other_errors_retry(
    temp_handlers: list[str],
) -> None:
    @event_handler(Flaked, name="tests.policy.strict", give_up_on=LookupError)
    def strict(event: Flaked) -> None:
        raise (KeyError if event.what == "missing" else ValueError)(event.what)

    temp_handlers.append("tests.policy.strict")
    with override_settings(DJANGO_UOW={**INLINE, "MAX_ATTEMPTS": 6, "BACKOFF": (30.0, 60.0)}):
        missing, other = outbox_rows(
            Flaked.event_type, [{"what": "missing"}, {"what": "other"}], aggregate_id=""
        )
        relay_pending()
    missing.refresh_from_db()
    other.refresh_from_db()
    assert (missing.status, missing.attempts) == ("failed", 1)
    assert rows_of(missing) == {"tests.policy.strict": ("failed", 1)}
    assert other.status == "pending"  # due again after BACKOFF
    assert rows_of(other) == {"tests.policy.strict": ("retrying", 1)}


@pytest.mark.django_db
def test_inline_a_handler_past_its_timeout_fails_the_attempt_and_keeps_no_effect(
    temp_handlers: list[str],
) -> None:
    @event_handler(Flaked, name="tests.policy.slow", timeout=0.2, max_attempts=3)
    def slow(event: Flaked, envelope: Envelope) -> None:
        Effect.objects.create(event_id=envelope.event_id, handler="slow")
        time.sleep(0.5)

    temp_handlers.append("tests.policy.slow")
    with override_settings(DJANGO_UOW={**INLINE, "BACKOFF": (30.0, 60.0)}):
        (event,) = outbox_rows(Flaked.event_type, [{"what": "slow"}], aggregate_id="")
        relay_pending()
    found = ProcessedEvent.objects.get(event_id=event.event_id)
    assert (found.status, found.attempts) == ("retrying", 1)
    assert "past its timeout of 0.2s" in found.last_error
    assert found.last_error.startswith("HandlerTimeout")
    assert not Effect.objects.filter(handler="slow").exists()  # rolled back


# ----------------------------------------------------------------------- real workers


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_on_a_worker_each_handler_keeps_its_own_attempts_and_error_classes(
    celery_app: Any,
) -> None:
    """max_attempts=3 dead-letters after 3 while a handler without one keeps
    MAX_ATTEMPTS; give_up_on dead-letters at once; retry_on retries only its classes."""
    policy = {**CELERY, "MAX_ATTEMPTS": 5, "BACKOFF": [0.01, 0.05]}
    flaky, missing, slow, bad = outbox_rows(
        "hooks.fired",
        [{"hook": h} for h in ("flaky", "missing", "slow-upstream", "bad-request")],
        aggregate_id="",
    )
    worker = start_worker(extra=policy)
    with running(worker), override_settings(DJANGO_UOW=policy):
        assert relay_pending(publishers=[CeleryPublisher(celery_app)]).relayed == 4
        assert wait_for(lambda: settled(flaky, missing, slow, bad), timeout=90), [
            rows_of(e) for e in (flaky, missing, slow, bad)
        ]
        time.sleep(1.0)  # one attempt too many would show here
    ok = ("succeeded", 1)
    assert rows_of(flaky) == {
        "hooks.three_tries": ("failed", 3),
        "hooks.default_policy": ("failed", 5),
        "hooks.gives_up": ok,
        "hooks.retries_timeouts": ok,
        "hooks.deadline": ok,
    }
    assert rows_of(missing)["hooks.gives_up"] == ("failed", 1)
    assert rows_of(slow)["hooks.retries_timeouts"] == ("failed", 3)  # TimeoutError: retried
    assert rows_of(bad)["hooks.retries_timeouts"] == ("failed", 1)  # ValueError: not retried
    assert (
        "KeyError"
        in ProcessedEvent.objects.get(
            event_id=missing.event_id, handler="hooks.gives_up"
        ).last_error
    )
    assert set(Effect.objects.values_list("handler", flat=True)) == {
        "hooks.three_tries",
        "hooks.default_policy",
        "hooks.gives_up",
        "hooks.retries_timeouts",
        "hooks.deadline",
    }
    assert not Effect.objects.filter(event_id=flaky.event_id, handler="hooks.three_tries").exists()


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_on_a_worker_a_hanging_handler_is_ended_by_its_timeout_as_a_failed_attempt(
    celery_app: Any,
) -> None:
    """``hooks.deadline`` (timeout=1, max_attempts=2) sleeps 30 s for a "hang": Celery's
    soft time limit ends each attempt, so it dead-letters after two, long before 60 s."""
    (hang,) = outbox_rows("hooks.fired", [{"hook": "hang"}], aggregate_id="")
    worker = start_worker("--pool=prefork", "--concurrency=2", extra=CELERY)
    started = time.monotonic()
    with running(worker), override_settings(DJANGO_UOW=CELERY):
        assert relay_pending(publishers=[CeleryPublisher(celery_app)]).relayed == 1
        assert wait_for(lambda: settled(hang), timeout=50), rows_of(hang)
    assert time.monotonic() - started < 58  # two 30 s sleeps would take 60 s
    assert rows_of(hang)["hooks.deadline"] == ("failed", 2)
    row = ProcessedEvent.objects.get(event_id=hang.event_id, handler="hooks.deadline")
    assert "SoftTimeLimitExceeded" in row.last_error
    assert not Effect.objects.filter(handler="hooks.deadline").exists()
    assert rows_of(hang)["hooks.three_tries"] == ("succeeded", 1)


def test_the_celery_task_of_a_handler_with_a_timeout_carries_the_soft_time_limit() -> None:
    """What the publisher hands Celery (one delivery, and a batch of three)."""
    from django_uow.publishers.celery_messages import Delivery

    envelope = Envelope(
        event_id=uuid.uuid4(),
        event_type="hooks.fired",
        aggregate_type="",
        aggregate_id="",
        aggregate_version=None,
        occurred_at=timezone.now(),
        payload={"hook": "x"},
    )
    one = Delivery(envelope, "hooks.deadline", None, {}, "id", timeout=1.0)
    assert one.soft_time_limit == 1.0
    three = Delivery(
        envelope, "hooks.deadline", None, {}, "id", more=((envelope, {}),) * 2, timeout=1.0
    )
    assert three.soft_time_limit == 3.0
    assert Delivery(envelope, "hooks.three_tries", None, {}, "id").soft_time_limit is None


# ----------------------------------------------------------------------- shown to operators


@pytest.mark.django_db
def test_outbox_status_shows_each_handlers_policy_in_json_and_text() -> None:
    with override_settings(DJANGO_UOW={"MAX_ATTEMPTS": 7, "BACKOFF": (2.0, 9.0)}):
        out = io.StringIO()
        call_command("outbox_status", "--json", stdout=out)
        by_name = {h["name"]: h for h in json.loads(out.getvalue())["handlers"]}
        text = io.StringIO()
        call_command("outbox_status", stdout=text)
    assert by_name["hooks.three_tries"] | {"event_types": None} == {
        "name": "hooks.three_tries",
        "event_types": None,
        "queue": None,
        "ordered": False,
        "idempotent": True,
        "retries": 0,
        "max_attempts": 3,
        "backoff": [0.01, 0.05],
        "timeout": None,
        "retry_on": [],
        "give_up_on": [],
        "own": ["backoff", "max_attempts"],
    }
    assert by_name["hooks.three_tries"]["event_types"] == ["hooks.fired"]
    default = by_name["hooks.default_policy"]
    assert (default["max_attempts"], default["backoff"], default["own"]) == (7, [2.0, 9.0], [])
    assert by_name["hooks.gives_up"]["give_up_on"] == ["LookupError"]
    assert by_name["hooks.deadline"]["timeout"] == 1.0
    assert by_name["shows.audit"]["event_types"] == [
        "testapp.SeatsReleased",
        "testapp.SeatsReserved",
        "testapp.ShowEvent",
        "testapp.ShowSoldOut",
    ]
    lines = text.getvalue().splitlines()
    assert (
        "  hooks.three_tries (hooks.fired): max_attempts 3*, backoff 0.01-0.05s*, no timeout"
        in lines
    )
    assert "  hooks.default_policy (hooks.fired): max_attempts 7, backoff 2-9s, no timeout" in lines
    assert any(
        line.startswith("  hooks.retries_timeouts (hooks.fired): max_attempts 3*")
        and "retry_on TimeoutError*" in line
        for line in lines
    )


@pytest.mark.django_db
def test_the_delivery_admin_page_shows_the_handlers_policy(admin_client: Client) -> None:
    (event,) = outbox_rows("hooks.fired", [{"hook": "flaky"}], aggregate_id="")
    own = ProcessedEvent.objects.create(
        event_id=event.event_id, handler="hooks.deadline", status="failed", attempts=2
    )
    gone = ProcessedEvent.objects.create(
        event_id=event.event_id, handler="hooks.renamed_since", status="failed", attempts=1
    )
    with override_settings(DJANGO_UOW={"MAX_ATTEMPTS": 7}):
        page = admin_client.get(
            reverse("admin:django_uow_processedevent_change", args=[own.pk])
        ).content.decode()
        other = admin_client.get(
            reverse("admin:django_uow_processedevent_change", args=[gone.pk])
        ).content.decode()
    assert "max_attempts 2*, backoff 0.01-0.05s*, timeout 1s*" in page
    assert "not registered in this process" in other
