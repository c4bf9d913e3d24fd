"""The handler checks: I100 lists each event type's handlers, W100 names an event type that
nothing would handle, E100 a wrong ``needs_handler``; through ``run_checks()`` and the
``check`` command's output."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.test import override_settings

from django_uow.delivery.handlers import event_handler, registry
from tests.allocation.events import Allocated, OutOfStock
from tests.testapp.events import CustomerRenamed, OrderArchived

INLINE = "django_uow.publishers.InlinePublisher"
CELERY = "django_uow.publishers.CeleryPublisher"
REDIS = "django_uow.publishers.RedisStreamPublisher"
RABBITMQ = "django_uow.publishers.RabbitMQPublisher"
NATS = "django_uow.publishers.NatsJetStreamPublisher"
CUSTOM = "tests.project.test_handler_checks.CustomPublisher"
RUNNER = "tests.project.test_handler_checks.HandlerRunner"
OURS = {"django_uow.I100", "django_uow.W100", "django_uow.E100"}


class CustomPublisher:
    """A project's own publisher, which says nothing about running handlers."""

    def publish(self, envelopes: Any) -> None: ...


class HandlerRunner(CustomPublisher):
    runs_handlers = True


def run(*publishers: str) -> dict[str, list[checks.CheckMessage]]:
    """The handler check messages of ``run_checks()``, by event type."""
    uow = {"RELAY_ON_COMMIT": False, "PUBLISHERS": list(publishers)}
    with override_settings(DJANGO_UOW=uow):
        messages = checks.run_checks()
    by_type: dict[str, list[checks.CheckMessage]] = {}
    for message in messages:
        if message.id in OURS:
            by_type.setdefault(str(message.obj), []).append(message)
    return by_type


def ids(by_type: dict[str, list[checks.CheckMessage]], event_type: str) -> list[str]:
    return [m.id or "" for m in by_type.get(event_type, [])]


def check_output(*args: str, **uow: Any) -> str:
    out, err = io.StringIO(), io.StringIO()
    with override_settings(DJANGO_UOW={"RELAY_ON_COMMIT": False, **uow}):
        call_command("check", *args, stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


@pytest.fixture
def temp_handler() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


def test_each_event_type_of_the_apps_is_listed_with_its_handlers() -> None:
    by_type = run(INLINE)
    [placed] = by_type["testapp.OrderPlaced"]
    assert (placed.id, placed.level, placed.msg) == (
        "django_uow.I100",
        checks.INFO,
        "handlers: testapp.record_placed",
    )
    assert by_type["allocation.Deallocated"][0].msg == (
        "handlers: tests.allocation.handlers.reallocate"
    )
    # Every app's event type is there, handled or not, once; test modules' classes are not.
    assert {t: len(m) for t, m in by_type.items()} == {t: 1 for t in by_type}
    assert {"testapp.CustomerRenamed", "allocation.OutOfStock", "testapp.OrderArchived"} <= set(
        by_type
    )
    assert not any(t.startswith("names.") for t in by_type)


def test_a_new_handler_shows_up_in_the_listing(temp_handler: list[str]) -> None:
    event_handler(CustomerRenamed, name="t.rename_projection")(lambda event: None)
    temp_handler.append("t.rename_projection")
    [message] = run(INLINE)["testapp.CustomerRenamed"]
    assert (message.id, message.msg) == ("django_uow.I100", "handlers: t.rename_projection")


@pytest.mark.parametrize("publishers", [(INLINE,), (CELERY,), (INLINE, CELERY), (RUNNER,)])
def test_w100_when_every_publisher_only_runs_handlers(publishers: tuple[str, ...]) -> None:
    by_type = run(*publishers)
    for event_class in (Allocated, OutOfStock, CustomerRenamed):
        [message] = by_type[event_class.event_type]
        assert (message.id, message.level) == ("django_uow.W100", checks.WARNING)
        assert f"No handler is registered for {event_class.__module__}.{event_class.__name__}" in (
            message.msg
        )
        assert "would be marked dispatched and nothing would happen" in message.msg
        assert f"@event_handler({event_class.__name__})" in (message.hint or "")
        assert "needs_handler = False" in (message.hint or "")


@pytest.mark.parametrize(
    "publishers",
    [(REDIS,), (RABBITMQ,), (NATS,), (INLINE, REDIS), (CELERY, NATS), (INLINE, CUSTOM)],
)
def test_no_w100_when_a_publisher_hands_events_to_the_outside(
    publishers: tuple[str, ...],
) -> None:
    by_type = run(*publishers)
    [message] = by_type["allocation.Allocated"]
    assert (message.id, message.msg) == (
        "django_uow.I100",
        "no handler (published for consumers elsewhere)",
    )
    assert "django_uow.W100" not in {m.id for ms in by_type.values() for m in ms}


def test_needs_handler_false_silences_w100_for_that_class() -> None:
    assert OrderArchived.needs_handler is False
    by_type = run(INLINE)
    [message] = by_type["testapp.OrderArchived"]
    assert (message.id, message.msg) == ("django_uow.I100", "no handler (needs_handler = False)")
    assert ids(by_type, "testapp.CustomerRenamed") == ["django_uow.W100"]


def test_a_subclass_inherits_needs_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    # The attribute is read like any class attribute: set on a base, it covers subclasses.
    monkeypatch.setattr(CustomerRenamed, "needs_handler", False)
    assert ids(run(INLINE), "testapp.CustomerRenamed") == ["django_uow.I100"]


def test_e100_needs_handler_must_be_a_bool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CustomerRenamed, "needs_handler", "no")
    [message] = run(INLINE)["testapp.CustomerRenamed"]
    assert (message.id, message.level) == ("django_uow.E100", checks.ERROR)
    assert message.msg == (
        "tests.testapp.events.CustomerRenamed.needs_handler must be True or False, not 'no'."
    )


def test_a_publisher_that_does_not_import_turns_w100_off() -> None:
    by_type = run("tests.nowhere.Publisher")
    assert ids(by_type, "allocation.Allocated") == ["django_uow.I100"]


def test_manage_py_check_prints_the_listing_and_the_warning() -> None:
    output = check_output(PUBLISHERS=[INLINE])
    assert "testapp.OrderPlaced: (django_uow.I100) handlers: testapp.record_placed" in output
    assert "allocation.Allocated: (django_uow.W100) No handler is registered for" in output
    assert "HINT: Register one with @event_handler(Allocated)" in output
    assert "testapp.OrderArchived: (django_uow.I100) no handler (needs_handler = False)" in output


def test_manage_py_check_of_one_app_lists_only_its_event_types() -> None:
    output = check_output("testapp", PUBLISHERS=[INLINE])
    assert "testapp.OrderPlaced: (django_uow.I100)" in output
    assert "allocation." not in output and "quickstart." not in output


def test_silenced_checks_leave_the_output() -> None:
    assert "(django_uow.W100)" in check_output(PUBLISHERS=[INLINE])
    with override_settings(SILENCED_SYSTEM_CHECKS=["django_uow.W100", "django_uow.I100"]):
        output = check_output(PUBLISHERS=[INLINE])
    assert "django_uow.W100" not in output and "django_uow.I100" not in output
    assert "System check identified no issues (" in output
