"""The outbox admin in a real headless Chromium: log in, filter failed events, retry one.

Uses Debian's ``chromium`` (``make browser-deps``), never a browser downloaded by
Playwright. Without it the test skips, except under ``CI=true``, where it fails. With
``UOW_DOCS_SCREENSHOT=1`` it also writes ``docs/img/admin-list.png`` for the docs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.utils import timezone

from django_uow.models import OutboxEvent
from tests.conftest import CI

# Playwright's sync API runs an event loop in this thread; the ORM calls are fine.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMAGE = Path(__file__).resolve().parents[3] / "docs" / "img" / "admin-list.png"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
Status = OutboxEvent.Status


def _missing(reason: str) -> None:
    if CI:
        pytest.fail(f"{reason} (CI=true: the browser test must run)")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} is missing: run `make browser-deps`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()
            # While Playwright's loop runs, the ORM keeps its connections per context
            # (asgiref): close the ones the test opened, or they outlive the test
            # and block dropping the test database.
            connections.close_all()


def seed_outbox() -> OutboxEvent:
    """A small, realistic outbox; returns the failed event the test retries."""
    now = timezone.now()
    rows = []
    for order in range(1, 6):
        for version, event_type in enumerate(("testapp.OrderPlaced", "testapp.OrderPaid"), start=1):
            rows.append(
                OutboxEvent(
                    event_id=uuid.uuid4(),
                    event_type=event_type,
                    aggregate_type="testapp.order",
                    aggregate_id=str(order),
                    aggregate_version=version,
                    payload={"order_id": order},
                    status=Status.DISPATCHED,
                    attempts=1,
                    created_at=now - timedelta(minutes=50 - order * 5 - version),
                    dispatched_at=now - timedelta(minutes=49 - order * 5 - version),
                )
            )
    rows.append(
        OutboxEvent(
            event_id=uuid.uuid4(),
            event_type="testapp.OrderPlaced",
            aggregate_type="testapp.order",
            aggregate_id="6",
            aggregate_version=1,
            payload={"order_id": 6, "total": "12.50"},
            created_at=now - timedelta(minutes=3),
        )
    )
    failed = OutboxEvent(
        event_id=uuid.uuid4(),
        event_type="orders.cancelled",
        aggregate_type="testapp.order",
        aggregate_id="3",
        aggregate_version=3,
        payload={"order_id": 3, "reason": "<b>customer</b> asked"},
        status=Status.FAILED,
        attempts=10,
        last_error="ConnectionError: Error 111 connecting to broker:5672. Connection refused.",
        created_at=now - timedelta(minutes=20),
    )
    rows.append(failed)
    OutboxEvent.objects.bulk_create(rows)
    return OutboxEvent.objects.get(event_id=failed.event_id)


def test_retry_a_failed_event_from_the_admin(
    browser: Any, live_server: Any, tmp_path: Path
) -> None:
    User.objects.create_superuser("admin", "admin@example.com", "secret-pw")
    failed = seed_outbox()

    page = browser.new_page(viewport={"width": 1500, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/django_uow/outboxevent/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")

    page.wait_for_selector("#outbox-status")
    assert page.inner_text("#outbox-count-failed") == "1"
    assert page.inner_text("#outbox-count-pending") == "1"
    assert page.inner_text("#outbox-count-dispatched") == "10"
    assert page.locator("#result_list tbody tr").count() == 12
    page.screenshot(path=str(tmp_path / "admin-list.png"), full_page=True)
    if os.environ.get("UOW_DOCS_SCREENSHOT"):
        # Collapse the admin's navigation sidebar so the whole list fits the picture.
        page.evaluate("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
        page.reload()
        page.wait_for_selector("#outbox-status")
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMAGE))

    # Filter on failed events.
    page.locator("#changelist-filter").get_by_role("link", name="failed", exact=True).click()
    page.wait_for_url("**status__exact=failed**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert "orders.cancelled" in rows.first.inner_text()

    # Open it: a read-only page with the error and the escaped payload.
    rows.first.locator("th a").click()
    page.wait_for_selector("#outbox-retry-button")
    assert "Connection refused." in page.inner_text("pre.uow-error")
    assert '"reason": "<b>customer</b> asked"' in page.inner_text("fieldset pre.uow-json")
    assert page.locator("input[name=_save]").count() == 0
    page.screenshot(path=str(tmp_path / "admin-detail.png"), full_page=True)

    page.click("#outbox-retry-button")
    page.wait_for_selector("ul.messagelist")
    assert "1 event will be relayed again." in page.inner_text("ul.messagelist")
    assert "pending" in page.inner_text(".field-status")
    assert "outbox-retry-button" in page.content()  # pending events can be retried again

    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (Status.PENDING, 0)

    # The list agrees: nothing failed any more.
    page.goto(f"{live_server.url}/admin/django_uow/outboxevent/?status__exact=failed")
    assert page.inner_text("#outbox-count-failed") == "0"
    assert page.locator("#result_list tbody tr").count() == 0
    page.close()


def test_rerun_a_failed_handler_delivery_from_the_admin(
    browser: Any, live_server: Any, tmp_path: Path
) -> None:
    from decimal import Decimal

    from django_uow import UnitOfWork
    from django_uow.models import ProcessedEvent
    from django_uow.relay import relay_batch
    from tests.testapp import handlers
    from tests.testapp.models import Effect, Order

    User.objects.create_superuser("admin", "admin@example.com", "secret-pw")
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("9.50"))
        order.place()
        order.save()
    handlers.BEHAVIOUR[order.pk] = "permanent"
    try:
        relay_batch()  # the inline publisher runs the handler: a dead letter
    finally:
        handlers.BEHAVIOUR.clear()  # the cause is fixed
    delivery = ProcessedEvent.objects.get(handler="testapp.record_placed")
    assert delivery.status == "failed"

    page = browser.new_page(viewport={"width": 1500, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/django_uow/outboxevent/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")

    # The outbox page links to the failed handler deliveries.
    page.wait_for_selector("#outbox-status")
    assert page.inner_text("#outbox-count-failed-deliveries") == "1"
    page.click("#outbox-failed-deliveries-link")
    page.wait_for_url("**status__exact=failed**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert "testapp.record_placed" in rows.first.inner_text()
    assert "PermanentFailure" in rows.first.inner_text()
    page.screenshot(path=str(tmp_path / "deliveries-failed.png"), full_page=True)

    rows.first.locator("input.action-select").check()
    page.select_option("select[name=action]", "rerun")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist")
    assert "1 delivery ran again and succeeded." in page.inner_text("ul.messagelist")
    assert page.locator("#result_list tbody tr").count() == 0  # nothing failed any more

    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    assert Effect.objects.filter(event_id=delivery.event_id, handler="placed").count() == 1

    # The event's page lists the delivery, now succeeded.
    event = OutboxEvent.objects.get(event_id=delivery.event_id)
    page.goto(f"{live_server.url}/admin/django_uow/outboxevent/{event.pk}/change/")
    table = page.inner_text("#outbox-deliveries")
    assert "testapp.record_placed" in table and "succeeded" in table
    page.screenshot(path=str(tmp_path / "event-deliveries.png"), full_page=True)
    page.close()


def test_retry_one_dead_letter_group_and_discard_another(
    browser: Any, live_server: Any, tmp_path: Path
) -> None:
    User.objects.create_superuser("admin", "admin@example.com", "secret-pw")

    def dead(aggregate_id: str, error: str) -> OutboxEvent:
        return OutboxEvent.objects.create(
            event_id=uuid.uuid4(),
            event_type="orders.cancelled",
            aggregate_type="testapp.order",
            aggregate_id=aggregate_id,
            payload={"order_id": int(aggregate_id), "reason": "x"},
            status=Status.FAILED,
            attempts=10,
            last_error=error,
        )

    retried = [
        dead("1", "ConnectionError: broker 10.0.0.1 refused"),
        dead("2", "ConnectionError: broker 10.0.0.2 refused"),
    ]
    discarded = [
        dead("3", "KeyError: 'sku-3'"),
        dead("4", "KeyError: 'sku-4'"),
        dead("5", "KeyError: 'sku-5'"),
    ]

    page = browser.new_page(viewport={"width": 1500, "height": 900})
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/django_uow/outboxevent/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#outbox-status")
    page.click("#outbox-deadletters-link")
    page.wait_for_selector("#outbox-deadletters")
    groups = page.locator("#outbox-deadletters tr.uow-group")
    assert groups.count() == 2
    page.screenshot(path=str(tmp_path / "dead-letters.png"), full_page=True)

    # Retry the ConnectionError group: a confirmation page, then the message.
    page.locator("tr.uow-group", has_text="ConnectionError").locator("a.uow-retry").click()
    page.wait_for_selector("#uow-confirm")
    page.click("#uow-confirm")
    page.wait_for_selector("ul.messagelist")
    assert "2 failed events will be relayed again." in page.inner_text("ul.messagelist")
    assert page.locator("#outbox-deadletters tr.uow-group").count() == 1

    # Discard the KeyError group.
    page.locator("tr.uow-group", has_text="KeyError").locator("a.uow-discard").click()
    page.wait_for_selector("#uow-confirm")
    page.click("#uow-confirm")
    page.wait_for_selector("ul.messagelist")
    assert "3 failed events were discarded." in page.inner_text("ul.messagelist")
    assert page.locator("#outbox-deadletters tr.uow-group").count() == 0
    page.close()

    for row in retried:
        row.refresh_from_db()
        assert (row.status, row.attempts) == (Status.PENDING, 0)
    for row in discarded:
        row.refresh_from_db()
        assert row.status == Status.DISCARDED and row.discarded_at is not None
