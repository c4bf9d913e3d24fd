"""The shop's own tests: ``python manage.py test example_project.shop``.

``TransactionTestCase``: the views use ``@unit_of_work(retries=...)``, which refuses to
run inside the transaction a plain ``TestCase`` wraps each test in, and real commits
run the relay fast path (``RELAY_ON_COMMIT = "inline"`` without a broker).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.test import TransactionTestCase, override_settings

from django_uow.models import OutboxEvent

from .models import Notification, Order, Payment, Product, ProductSales

INLINE = {"RELAY_ON_COMMIT": "inline", "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}


@override_settings(DJANGO_UOW=INLINE)
class ShopApiTests(TransactionTestCase):
    def setUp(self) -> None:
        self.tea = Product.objects.create(sku="TEA", name="Tea", price=Decimal("4.50"), stock=5)
        self.mug = Product.objects.create(sku="MUG", name="Mug", price=Decimal("12.00"), stock=1)

    def post(self, path: str, body: Any = None, **headers: str) -> Any:
        return self.client.post(path, body or {}, content_type="application/json", headers=headers)

    def place(self, **items: int) -> Any:
        return self.post("/api/orders/", {"customer": "ada", "items": items})

    def test_placing_an_order_reserves_stock_and_runs_the_handlers(self) -> None:
        response = self.place(TEA=2, MUG=1)
        self.assertEqual(response.status_code, 201, response.content)
        order = Order.objects.get(pk=response.json()["id"])
        self.assertEqual((order.status, order.total), ("placed", Decimal("21.00")))
        self.tea.refresh_from_db()
        self.assertEqual((self.tea.stock, self.tea.version), (3, 2))
        event = OutboxEvent.objects.get()
        self.assertEqual((event.event_type, event.status), ("shop.OrderPlaced", "dispatched"))
        self.assertEqual(
            list(Notification.objects.values_list("kind", "order_id")),
            [("order_placed", order.pk)],
        )
        self.assertEqual(ProductSales.objects.get(sku="TEA").units_ordered, 2)

    def test_out_of_stock_writes_nothing(self) -> None:
        response = self.place(TEA=1, MUG=2)
        self.assertEqual(response.status_code, 409)
        self.assertIn("MUG", response.json()["error"])
        self.tea.refresh_from_db()
        self.assertEqual((self.tea.stock, self.tea.version), (5, 1))
        self.assertFalse(Order.objects.exists())
        self.assertFalse(OutboxEvent.objects.exists())

    def test_bad_requests_say_what_is_wrong(self) -> None:
        cases = [
            ({"customer": "ada", "items": {"NOPE": 1}}, "Unknown product"),
            ({"customer": "ada", "items": {"TEA": 0}}, "positive integer"),
            ({"customer": "ada", "items": []}, '"items" must be an object'),
            ({"items": {"TEA": 1}}, "customer"),
        ]
        for body, message in cases:
            response = self.post("/api/orders/", body)
            self.assertEqual(response.status_code, 400, body)
            self.assertIn(message, response.json()["error"])
        response = self.client.post("/api/orders/", "{", content_type="application/json")
        self.assertEqual(response.status_code, 400)
        self.assertIn("not valid JSON", response.json()["error"])
        self.assertFalse(OutboxEvent.objects.exists())

    def test_pay_then_cancel_is_refused(self) -> None:
        order_id = self.place(TEA=1).json()["id"]
        paid = self.post(f"/api/orders/{order_id}/pay/", {"reference": "r-1"})
        self.assertEqual(paid.json()["status"], "paid")
        self.assertEqual(Payment.objects.get().amount, Decimal("4.50"))
        refused = self.post(f"/api/orders/{order_id}/cancel/")
        self.assertEqual(refused.status_code, 409)
        self.assertIn("is paid", refused.json()["error"])
        self.assertEqual(
            sorted(OutboxEvent.objects.values_list("event_type", flat=True)),
            ["shop.OrderPaid", "shop.OrderPlaced"],
        )
        self.assertEqual(ProductSales.objects.get(sku="TEA").revenue, Decimal("4.50"))

    def test_cancelling_puts_the_stock_back(self) -> None:
        order_id = self.place(TEA=3).json()["id"]
        response = self.post(f"/api/orders/{order_id}/cancel/", {"reason": "too much tea"})
        self.assertEqual(response.json()["status"], "cancelled")
        self.tea.refresh_from_db()
        self.assertEqual(self.tea.stock, 5)
        self.assertEqual(ProductSales.objects.get(sku="TEA").units_cancelled, 3)
        note = Notification.objects.get(kind="order_cancelled")
        self.assertIn("too much tea", note.message)

    def test_unknown_order_is_404(self) -> None:
        self.assertEqual(self.post("/api/orders/999/pay/").status_code, 404)
        self.assertEqual(self.client.get("/api/orders/999/").status_code, 404)

    def test_restock_needs_the_current_etag(self) -> None:
        etag = self.client.get(f"/api/products/{self.tea.pk}/")["ETag"]
        self.place(TEA=1)  # changes the product's version
        path = f"/api/products/{self.tea.pk}/restock/"
        self.assertEqual(self.post(path, {"quantity": 10}, **{"If-Match": etag}).status_code, 412)
        fresh = self.client.get(f"/api/products/{self.tea.pk}/")["ETag"]
        response = self.post(path, {"quantity": 10}, **{"If-Match": fresh})
        self.assertEqual(response.status_code, 200, response.content)
        self.assertEqual(response.json()["stock"], 14)

    def test_the_shop_page_places_an_order(self) -> None:
        page = self.client.get("/")
        self.assertContains(page, "Tea")
        response = self.client.post("/", {"customer": "bo", "sku": "TEA", "quantity": "2"})
        self.assertEqual(response.status_code, 302)
        self.assertContains(self.client.get("/"), "Thank you bo")
        refused = self.client.post("/", {"customer": "bo", "sku": "MUG", "quantity": "5"})
        self.assertContains(refused, "only 1 in stock")

    def test_admin_pages_load(self) -> None:
        user = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
        self.client.force_login(user)
        order_id = self.place(TEA=1).json()["id"]
        pages = [
            "/admin/shop/product/",
            f"/admin/shop/product/{self.tea.pk}/change/",
            "/admin/shop/order/",
            f"/admin/shop/order/{order_id}/change/",
            "/admin/shop/notification/",
            "/admin/shop/productsales/",
            "/admin/django_uow/outboxevent/",
        ]
        for path in pages:
            self.assertEqual(self.client.get(path).status_code, 200, path)
