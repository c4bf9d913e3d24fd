"""The allocation scenarios of "Architecture Patterns with Python", on django-uow.

Product is the aggregate and keeps its version in ``version_number``. The concurrency
tests need PostgreSQL: each thread runs on its own connection, so the two
transactions really race for the product row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from django_uow import ConcurrencyError, unit_of_work
from django_uow.models import OutboxEvent

from . import services
from .models import Batch, OrderLine, Product

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 20.0


@pytest.fixture
def product() -> Product:
    product = Product.objects.create(sku="LAMP")
    Batch.objects.create(reference="b-early", product=product, purchased_quantity=10)
    return product


def outbox() -> list[tuple[str, dict[str, Any], int | None]]:
    return [
        (row.event_type, row.payload, row.aggregate_version)
        for row in OutboxEvent.objects.order_by("id")
    ]


def race(target: Callable[[str], Any], orderids: list[str]) -> dict[str, BaseException]:
    """Run ``target(orderid)`` on one thread per order id; return each thread's error."""
    errors: dict[str, BaseException] = {}

    def run(orderid: str) -> None:
        try:
            target(orderid)
        except BaseException as error:
            errors[orderid] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(o,), daemon=True) for o in orderids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "an allocating thread did not finish"
    return errors


def test_allocation_records_the_event_and_bumps_the_product_version(product: Product) -> None:
    assert services.allocate("o1", "LAMP", 3) == "b-early"
    product.refresh_from_db()
    assert product.version_number == 2
    assert outbox() == [
        (
            "allocation.Allocated",
            {"orderid": "o1", "sku": "LAMP", "qty": 3, "batchref": "b-early"},
            2,
        )
    ]


def test_an_error_inside_the_unit_rolls_back_everything(product: Product) -> None:
    class PaymentDeclined(Exception):
        pass

    @unit_of_work
    def allocate_then_fail() -> None:
        services.allocate_line("o1", "LAMP", 3)
        Batch.objects.filter(reference="b-early").update(purchased_quantity=99)
        raise PaymentDeclined

    with pytest.raises(PaymentDeclined):
        allocate_then_fail()
    product.refresh_from_db()
    assert product.version_number == 1
    assert not OrderLine.objects.exists()
    assert Batch.objects.get(reference="b-early").purchased_quantity == 10
    assert outbox() == []


@pytest.mark.postgres
def test_two_concurrent_allocations_one_wins_and_the_version_moves_by_one(
    product: Product,
) -> None:
    both_loaded = threading.Barrier(2, timeout=TIMEOUT)

    @unit_of_work
    def allocate_racing(orderid: str) -> None:
        loaded = Product.objects.get(sku="LAMP")
        line = OrderLine.objects.create(orderid=orderid, sku="LAMP", qty=1)
        both_loaded.wait()  # both have read version 1 before either commits
        loaded.allocate(line)

    errors = race(allocate_racing, ["o1", "o2"])
    assert len(errors) == 1
    (error,) = errors.values()
    assert isinstance(error, ConcurrencyError)
    product.refresh_from_db()
    assert product.version_number == 2
    assert OrderLine.objects.filter(batch__isnull=False).count() == 1
    assert [row[0] for row in outbox()] == ["allocation.Allocated"]


@pytest.mark.postgres
def test_with_retries_both_concurrent_allocations_succeed(product: Product) -> None:
    both_loaded = threading.Barrier(2, timeout=TIMEOUT)
    attempts: dict[str, int] = {}

    @unit_of_work(retries=3, backoff=(0.001, 0.02))
    def allocate_racing(orderid: str) -> None:
        attempts[orderid] = attempts.get(orderid, 0) + 1
        loaded = Product.objects.get(sku="LAMP")
        line = OrderLine.objects.create(orderid=orderid, sku="LAMP", qty=1)
        if attempts[orderid] == 1:
            both_loaded.wait()
        loaded.allocate(line)

    assert race(allocate_racing, ["o1", "o2"]) == {}
    assert sorted(attempts.values()) == [1, 2]  # the loser re-ran once
    product.refresh_from_db()
    assert product.version_number == 3
    assert OrderLine.objects.count() == 2  # the loser's first line was rolled back
    assert OrderLine.objects.filter(batch__isnull=False).count() == 2
    assert [(row[0], row[2]) for row in outbox()] == [
        ("allocation.Allocated", 2),
        ("allocation.Allocated", 3),
    ]


@pytest.fixture
def inline_relay(settings: Any) -> None:
    settings.DJANGO_UOW = {
        **settings.DJANGO_UOW,
        "RELAY_ON_COMMIT": "inline",
        "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
    }


def shrink_a_batch_so_the_line_moves(product: Product) -> None:
    Batch.objects.create(
        reference="b-late", product=product, purchased_quantity=10, eta="2030-01-01"
    )
    assert services.allocate("o1", "LAMP", 8) == "b-early"
    services.change_batch_quantity("LAMP", "b-early", 5)


def test_reallocation_chain_runs_inline(product: Product, inline_relay: None) -> None:
    """Deallocated -> the reallocate handler (allocate() joins its unit) -> Allocated."""
    shrink_a_batch_so_the_line_moves(product)

    line = OrderLine.objects.get(orderid="o1")
    assert line.batch is not None and line.batch.reference == "b-late"
    product.refresh_from_db()
    assert product.version_number == 4
    assert outbox() == [
        (
            "allocation.Allocated",
            {"orderid": "o1", "sku": "LAMP", "qty": 8, "batchref": "b-early"},
            2,
        ),
        ("allocation.Deallocated", {"orderid": "o1", "sku": "LAMP", "qty": 8}, 3),
        (
            "allocation.Allocated",
            {"orderid": "o1", "sku": "LAMP", "qty": 8, "batchref": "b-late"},
            4,
        ),
    ]


def test_reallocation_chain_is_delivered_inline_to_the_end(
    product: Product, inline_relay: None
) -> None:
    shrink_a_batch_so_the_line_moves(product)
    statuses = list(OutboxEvent.objects.order_by("id").values_list("event_type", "status"))
    assert statuses == [
        ("allocation.Allocated", "dispatched"),
        ("allocation.Deallocated", "dispatched"),
        ("allocation.Allocated", "dispatched"),
    ]
