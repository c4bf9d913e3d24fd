"""Handler names are identities: two callables never share one silently.

Each kind of callable a project registers (plain functions, a factory's closures and
lambdas, ``functools.partial``, bound methods, callable objects, wrapped functions)
either gets a default name that tells it apart or is refused with ``name=`` advice; a
re-imported module and a ``bootstrap()`` run again still replace their handlers.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_uow import DomainEvent, Envelope, UnitOfWork
from django_uow.delivery.handlers import event_handler, handlers_for, registry
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.publishers import InlinePublisher, handler_task_id
from django_uow.relay import relay_pending
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class StockAllocated(DomainEvent):
    event_type = "names.allocated"

    ref: uuid.UUID


@dataclass(frozen=True)
class StockShort(DomainEvent):
    event_type = "names.short"

    ref: uuid.UUID


FIRST, SECOND = StockAllocated.event_type, StockShort.event_type


@pytest.fixture(autouse=True)
def fresh_names() -> Iterator[None]:
    """Forget every handler a test registers (this module's handlers are all temporary)."""
    before = {h.name for h in registry.all()}
    yield
    for handler in registry.all():
        if handler.name not in before:
            registry.unregister(handler.name)


def names_for(event_type: str) -> list[str]:
    return sorted(h.name for h in handlers_for(event_type))


# ------------------------------------------------------------ the book's handlers


def record_allocated(event: StockAllocated, uow: Callable[[], UnitOfWork], tag: str) -> None:
    with uow():
        Effect.objects.create(event_id=event.ref, handler=f"{tag}:allocated")


def record_short(event: StockShort, uow: Callable[[], UnitOfWork], tag: str) -> None:
    with uow():
        Effect.objects.create(event_id=event.ref, handler=f"{tag}:short")


EVENT_HANDLERS: dict[type[DomainEvent], list[Callable[..., None]]] = {
    StockAllocated: [record_allocated],
    StockShort: [record_short],
}


def inject_dependencies(handler: Callable[..., Any], dependencies: dict[str, Any]) -> Any:
    """cosmicpython's ``bootstrap.inject_dependencies``, line for line."""
    params = inspect.signature(handler).parameters
    deps = {name: dependency for name, dependency in dependencies.items() if name in params}
    return lambda message: handler(message, **deps)


def bootstrap(tag: str, *, named: bool) -> None:
    """cosmicpython's ``bootstrap()``, registering with ``@event_handler`` instead of a bus."""
    dependencies = {"uow": UnitOfWork, "tag": tag}
    for event_class, handlers in EVENT_HANDLERS.items():
        for handler in handlers:
            name = f"{handler.__module__}.{handler.__qualname__}" if named else None
            event_handler(event_class, name=name)(inject_dependencies(handler, dependencies))


def record(*events: DomainEvent) -> None:
    with UnitOfWork() as uow:
        for event in events:
            uow.record_event(event)


# ------------------------------------------------------------ plain functions


def on_allocated(event: StockAllocated) -> None: ...


def on_short(event: StockShort) -> None: ...


def test_a_module_level_function_keeps_module_and_qualname_as_its_name() -> None:
    event_handler(StockAllocated)(on_allocated)
    assert names_for(FIRST) == [f"{__name__}.on_allocated"]
    # The identity existing task ids and inbox rows were made from.
    handler = registry.get(f"{__name__}.on_allocated")
    assert handler.func is on_allocated and not handler.explicit_name
    assert handler_task_id(uuid.UUID(int=1), handler.name) == str(
        uuid.uuid5(uuid.UUID(int=1), "tests.delivery.test_handler_names.on_allocated")
    )


def test_registering_the_same_function_again_keeps_one_handler() -> None:
    event_handler(StockAllocated)(on_allocated)
    event_handler(StockAllocated)(on_allocated)
    assert names_for(FIRST) == [f"{__name__}.on_allocated"]


def test_one_function_for_a_second_event_type_needs_a_second_name() -> None:
    event_handler(StockAllocated)(on_allocated)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        event_handler(StockShort)(on_allocated)
    message = str(excinfo.value)
    assert f"'{__name__}.on_allocated' is taken by {__name__}.on_allocated for {FIRST}" in message
    assert f"pass name='{__name__}.on_allocated_short'" in message
    # Nothing vanished: the first registration still stands, the second was not made.
    assert names_for(FIRST) == [f"{__name__}.on_allocated"] and names_for(SECOND) == []
    event_handler(StockShort, name=f"{__name__}.on_allocated_short")(on_allocated)
    assert names_for(SECOND) == [f"{__name__}.on_allocated_short"]


def test_an_empty_name_is_refused() -> None:
    with pytest.raises(TypeError, match=r"name=''\): name must be a non-empty string"):
        event_handler(StockAllocated, name="")


# ------------------------------------------------------------ a factory's products


def test_the_books_bootstrap_without_names_is_refused_at_registration() -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        bootstrap("v1", named=False)
    message = str(excinfo.value)
    assert message.startswith("@event_handler(StockAllocated) needs name= for ")
    assert "inject_dependencies.<locals>.<lambda>" in message
    assert "every lambda of one scope has the same qualname" in message
    # The suggestion names the handler the lambda calls.
    assert f"Pass name='{__name__}.record_allocated'" in message
    assert names_for(FIRST) == [] and names_for(SECOND) == []


@pytest.mark.django_db(transaction=True)
def test_the_books_bootstrap_with_names_delivers_both_event_types() -> None:
    with pytest.raises(ImproperlyConfigured, match="needs name="):
        bootstrap("v0", named=False)  # never one silent handler for two event types
    bootstrap("v1", named=True)
    bootstrap("v2", named=True)  # run again (each test of the book does): newest wins
    assert names_for(FIRST) == [f"{__name__}.record_allocated"]
    assert names_for(SECOND) == [f"{__name__}.record_short"]
    first, second = uuid.uuid4(), uuid.uuid4()
    record(StockAllocated(ref=first), StockShort(ref=second))

    summary = relay_pending(publishers=[InlinePublisher()])

    assert (summary.relayed, summary.failed, summary.left) == (2, 0, 0)
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"dispatched"}
    effects = sorted(Effect.objects.values_list("event_id", "handler"))
    assert effects == sorted([(first, "v2:allocated"), (second, "v2:short")])
    assert sorted(ProcessedEvent.objects.values_list("handler", "status")) == [
        (f"{__name__}.record_allocated", "succeeded"),
        (f"{__name__}.record_short", "succeeded"),
    ]


def make_recorder(tag: str) -> Callable[[StockAllocated], None]:
    def recorder(event: StockAllocated) -> None:
        Effect.objects.create(event_id=event.ref, handler=tag)

    return recorder


def test_closures_of_one_factory_cannot_share_the_default_name() -> None:
    first, second = make_recorder("a"), make_recorder("b")
    assert first.__code__ is second.__code__ and first is not second
    event_handler(StockAllocated)(first)
    name = f"{__name__}.make_recorder.<locals>.recorder"
    with pytest.raises(ImproperlyConfigured) as same_type:
        event_handler(StockAllocated)(second)
    assert f"got the default name '{name}'" in str(same_type.value)
    assert "two functions made from one definition" in str(same_type.value)
    with pytest.raises(ImproperlyConfigured) as other_type:
        event_handler(StockShort)(second)
    assert f"'{name}' is taken by {name} (line " in str(other_type.value)
    for excinfo in (same_type, other_type):
        assert "Pass name=" in str(excinfo.value) or "pass name=" in str(excinfo.value)
    assert [h.func for h in handlers_for(FIRST)] == [first]
    assert names_for(SECOND) == []


def test_closures_of_one_factory_with_names_are_two_handlers() -> None:
    event_handler(StockAllocated, name="names.recorder_a")(make_recorder("a"))
    event_handler(StockAllocated, name="names.recorder_b")(make_recorder("b"))
    assert names_for(FIRST) == ["names.recorder_a", "names.recorder_b"]


def test_a_lambda_at_module_level_needs_a_name() -> None:
    handler = eval("lambda event: None", {"__name__": __name__})  # a module-level lambda
    assert handler.__qualname__ == "<lambda>"
    with pytest.raises(ImproperlyConfigured, match=r"needs name= for .*<lambda> \(line 1 of"):
        event_handler(StockAllocated)(handler)


# ------------------------------------------------------------ functools.partial


def allocate(event: StockAllocated, tag: str) -> None:
    Effect.objects.create(event_id=event.ref, handler=tag)


def test_a_partial_without_a_name_is_refused_with_advice() -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        event_handler(StockAllocated)(functools.partial(allocate, tag="x"))
    message = str(excinfo.value)
    assert f"needs name= for functools.partial({__name__}.allocate, ...)" in message
    assert "a functools.partial has no name of its own" in message
    assert f"Pass name='{__name__}.allocate'" in message


def test_partials_of_two_functions_cannot_share_a_name() -> None:
    event_handler(StockAllocated, name="names.partial")(functools.partial(allocate, tag="x"))
    with pytest.raises(ImproperlyConfigured, match="Two event handlers are named 'names.partial'"):
        event_handler(StockAllocated, name="names.partial")(
            functools.partial(record_allocated, uow=UnitOfWork, tag="y")
        )
    [handler] = handlers_for(FIRST)
    assert handler.func.func is allocate  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_a_named_partial_runs_end_to_end() -> None:
    with pytest.raises(ImproperlyConfigured, match="needs name="):
        event_handler(StockAllocated)(functools.partial(allocate, tag="p"))
    event_handler(StockAllocated, name="names.allocate_once")(functools.partial(allocate, tag="p"))
    ref = uuid.uuid4()
    record(StockAllocated(ref=ref))

    summary = relay_pending(publishers=[InlinePublisher()])

    assert (summary.relayed, summary.failed) == (1, 0)
    assert list(Effect.objects.values_list("event_id", "handler")) == [(ref, "p")]
    row = ProcessedEvent.objects.get()
    assert (row.handler, row.status) == ("names.allocate_once", "succeeded")


# ------------------------------------------------------------ bound methods, objects


class Mailer:
    def __init__(self, tag: str) -> None:
        self.tag = tag

    def send(self, event: DomainEvent) -> None: ...


class Projector:
    def __call__(self, event: DomainEvent) -> None: ...


def test_bound_methods_need_names() -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        event_handler(StockAllocated)(Mailer("a").send)
    message = str(excinfo.value)
    assert f"needs name= for {__name__}.Mailer.send bound to a Mailer" in message
    assert "which every Mailer instance shares" in message
    assert f"Pass name='{__name__}.Mailer.send'" in message


def test_bound_methods_of_two_instances_with_names_are_two_handlers() -> None:
    first, second = Mailer("a"), Mailer("b")
    event_handler(StockAllocated, name="names.mail_a")(first.send)
    event_handler(StockShort, name="names.mail_b")(second.send)
    assert [h.func.__self__ for h in handlers_for(FIRST)] == [first]  # type: ignore[attr-defined]
    assert [h.func.__self__ for h in handlers_for(SECOND)] == [second]  # type: ignore[attr-defined]
    with pytest.raises(ImproperlyConfigured, match="'names.mail_a' is taken by"):
        event_handler(StockShort, name="names.mail_a")(second.send)


def test_callable_objects_need_names() -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        event_handler(StockAllocated)(Projector())
    message = str(excinfo.value)
    assert f"needs name= for a {__name__}.Projector object" in message
    assert f"Pass name='{__name__}.Projector'" in message
    event_handler(StockAllocated, name="names.project_a")(Projector())
    event_handler(StockAllocated, name="names.project_b")(Projector())
    assert names_for(FIRST) == ["names.project_a", "names.project_b"]


# ------------------------------------------------------------ wrapped functions


def logged(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(event: DomainEvent) -> Any:
        return func(event)

    return wrapper


def unwrapped(func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(event: DomainEvent) -> Any:  # no functools.wraps: every product is "wrapper"
        return func(event)

    return wrapper


def test_a_function_behind_functools_wraps_is_named_after_the_wrapped_one() -> None:
    event_handler(StockAllocated)(logged(on_allocated))
    event_handler(StockShort)(logged(on_short))
    assert names_for(FIRST) == [f"{__name__}.on_allocated"]
    assert names_for(SECOND) == [f"{__name__}.on_short"]
    # The same function wrapped again for another event type is still one name, one type.
    with pytest.raises(ImproperlyConfigured, match=f"is taken by {__name__}.on_allocated"):
        event_handler(StockShort)(logged(on_allocated))


def test_a_wrapper_without_functools_wraps_is_refused_for_a_second_function() -> None:
    event_handler(StockAllocated)(unwrapped(on_allocated))
    with pytest.raises(ImproperlyConfigured) as excinfo:
        event_handler(StockAllocated)(unwrapped(on_short))
    message = str(excinfo.value)
    assert f"default name '{__name__}.unwrapped.<locals>.wrapper'" in message
    assert f"Pass name='{__name__}.on_short'" in message  # the function it wraps


def test_a_factory_using_functools_wraps_names_each_product_after_its_handler() -> None:
    def inject(handler: Callable[..., Any], **deps: Any) -> Callable[[DomainEvent], Any]:
        @functools.wraps(handler)
        def run(event: DomainEvent) -> Any:
            return handler(event, **deps)

        return run

    for _ in range(2):  # a bootstrap run twice replaces its handlers
        event_handler(StockAllocated)(inject(record_allocated, uow=UnitOfWork, tag="w"))
        event_handler(StockShort)(inject(record_short, uow=UnitOfWork, tag="w"))
    assert names_for(FIRST) == [f"{__name__}.record_allocated"]
    assert names_for(SECOND) == [f"{__name__}.record_short"]


# ------------------------------------------------------------ re-imported modules

RELOADED = """
import functools

from django_uow import event_handler
from tests.delivery.test_handler_names import StockAllocated, StockShort, logged


@event_handler(StockAllocated)
def on_allocated(event):
    return "{version}"


@event_handler(StockShort)
@logged
def on_short(event):
    return "{version}"


def bootstrap():
    for event_class in (StockAllocated, StockShort):
        event_handler(event_class, name=f"reloaded.{{event_class.event_type}}")(
            lambda event: "{version}"
        )


bootstrap()
"""


def test_a_reloaded_module_replaces_its_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "names_reloaded.py"
    source.write_text(RELOADED.format(version="v1"))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("names_reloaded")
    try:
        source.write_text(RELOADED.format(version="v2"))
        importlib.invalidate_caches()
        module = importlib.reload(module)  # new code objects for the same definitions

        expected = {
            FIRST: ["names_reloaded.on_allocated", "reloaded.names.allocated"],
            SECOND: ["names_reloaded.on_short", "reloaded.names.short"],
        }
        for event_type, names in expected.items():
            assert names_for(event_type) == names
            assert [h.func(None) for h in handlers_for(event_type)] == ["v2", "v2"]
        assert registry.get("names_reloaded.on_allocated").func is module.on_allocated
    finally:
        sys.modules.pop("names_reloaded", None)


def test_the_same_name_for_another_function_elsewhere_is_still_refused() -> None:
    event_handler(StockAllocated, name="names.shared")(on_allocated)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        event_handler(StockAllocated, name="names.shared")(allocate)
    assert re.search(
        rf"Two event handlers are named 'names.shared': {__name__}.on_allocated and "
        rf"{__name__}.allocate\. Pass a unique name=",
        str(excinfo.value),
    )


def test_envelope_detection_covers_every_kind() -> None:
    def wants(event: DomainEvent, envelope: Envelope) -> None: ...

    event_handler(StockAllocated, name="names.env_fn")(wants)
    event_handler(StockAllocated, name="names.env_partial")(functools.partial(wants))
    event_handler(StockAllocated, name="names.env_none")(Projector())
    flags = {h.name: h.wants_envelope for h in handlers_for(FIRST)}
    assert flags == {"names.env_fn": True, "names.env_partial": True, "names.env_none": False}


# ------------------------------------------------------------ replacing a handler in a test


@pytest.mark.django_db(transaction=True)
def test_override_handler_runs_a_fake_under_the_real_name() -> None:
    from django_uow.testing import drain_outbox, override_handler
    from tests.testapp.events import OrderPlaced

    original = registry.get("testapp.record_placed")

    def fake(event: OrderPlaced) -> None:  # no envelope parameter, unlike the real one
        Effect.objects.create(event_id=uuid.UUID(int=event.order_id or 0), handler="fake")

    with override_handler("testapp.record_placed", fake) as replaced:
        assert replaced is original
        record(OrderPlaced(order_id=7, total=Decimal("1.00")))
        assert drain_outbox().relayed == 1
        assert names_for(OrderPlaced.event_type) == ["testapp.record_placed"]
    assert list(Effect.objects.values_list("event_id", "handler")) == [(uuid.UUID(int=7), "fake")]
    row = ProcessedEvent.objects.get()
    assert (row.handler, row.status) == ("testapp.record_placed", "succeeded")
    assert registry.get("testapp.record_placed") is original
