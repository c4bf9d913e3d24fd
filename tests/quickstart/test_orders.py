from decimal import Decimal

import pytest
from django.core import mail

from django_uow import ConcurrencyError, UnitOfWork
from django_uow.testing import capture_events, drain_outbox, override_handler, simulate_conflict

from .handlers import send_confirmation
from .models import Order, OrderPlaced
from .services import open_order, place_order

# Real transactions: @unit_of_work(retries=...) refuses to run inside an outer one.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def relay_only_when_asked(settings):
    settings.DJANGO_UOW = {"RELAY_ON_COMMIT": False}


def test_placing_an_order_records_order_placed():
    order = open_order(Decimal("9.50"))
    with capture_events() as captured:
        place_order(order.pk)
    assert captured.events == [OrderPlaced(order_id=order.pk, total=Decimal("9.50"))]


def test_the_handler_sends_one_confirmation():
    order = open_order(Decimal("9.50"))
    place_order(order.pk)
    assert mail.outbox == []  # nothing is relayed until we ask
    assert drain_outbox().relayed == 1  # relays in-process, handlers included
    assert [m.subject for m in mail.outbox] == [f"Order {order.pk}"]


def test_a_stale_save_changes_nothing():
    order = open_order(Decimal("9.50"))
    simulate_conflict(order)  # someone else saved the order meanwhile
    order.total = Decimal("1.00")
    with pytest.raises(ConcurrencyError), UnitOfWork():
        order.save()
    order.refresh_from_db()
    assert order.total == Decimal("9.50")
    assert Order.objects.count() == 1


def test_a_mail_server_outage_is_retried_later():
    def mail_server_down(event):
        raise ConnectionError("SMTP server down")

    order = open_order(Decimal("9.50"))
    place_order(order.pk)
    with override_handler(send_confirmation, mail_server_down):
        assert drain_outbox().retried == 1  # the event waits for its next attempt
    assert mail.outbox == []
