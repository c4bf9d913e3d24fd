"""JSON endpoints and one HTML page. Every write runs in ``@unit_of_work(retries=...)``.

Errors are turned into responses *outside* the unit of work (``json_errors`` is the
outer decorator), so the unit of work sees the exception and rolls back first.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from django_uow import unit_of_work
from django_uow.http import conflict_as_409, versioned_view
from django_uow.models import OutboxEvent

from . import services
from .errors import ShopError
from .models import Notification, Order, Product, ProductSales

View = Callable[..., HttpResponse]

#: Re-runs of a write request after a conflict (a stale version, or SQLite's
#: "database is locked" when two requests write at once) before answering 409 / 500.
RETRIES = 10
BACKOFF = (0.02, 1.0)  # seconds (base, cap) of the jittered exponential backoff


def json_errors(view: View) -> View:
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except ShopError as error:
            return JsonResponse({"error": str(error)}, status=error.status)
        except Order.DoesNotExist:
            return JsonResponse({"error": f"No order {kwargs.get('order_id')}."}, status=404)

    return wrapper


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError as error:
        raise ShopError(f"The request body is not valid JSON: {error}.") from None
    if not isinstance(data, dict):
        raise ShopError("The request body must be a JSON object.")
    return data


def order_json(order: Order) -> dict[str, Any]:
    return {
        "id": order.pk,
        "customer": order.customer,
        "status": order.status,
        "total": str(order.total),
        "version": order.version,
        "lines": [
            {
                "sku": line["sku"],
                "quantity": line["quantity"],
                "unit_price": str(line["unit_price"]),
            }
            for line in order.event_lines()
        ],
    }


def product_json(p: Product) -> dict[str, Any]:
    return {
        "id": p.pk,
        "sku": p.sku,
        "name": p.name,
        "price": str(p.price),
        "stock": p.stock,
        "version": p.version,
    }


@require_GET
def product_list(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"products": [product_json(p) for p in Product.objects.all()]})


@csrf_exempt
@require_POST
@conflict_as_409
@json_errors
@unit_of_work(retries=RETRIES, backoff=BACKOFF)
def order_create(request: HttpRequest) -> JsonResponse:
    """POST {"customer": "ada", "items": {"SKU": quantity}} -> 201 with the order."""
    data = _body(request)
    items = data.get("items")
    if not isinstance(items, dict):
        raise ShopError('"items" must be an object mapping product SKUs to quantities.')
    order = services.place_order(str(data.get("customer", "")), items)
    return JsonResponse(order_json(order), status=201)


@require_GET
@json_errors
def order_detail(request: HttpRequest, order_id: int) -> JsonResponse:
    return JsonResponse(order_json(Order.objects.get(pk=order_id)))


@csrf_exempt
@require_POST
@conflict_as_409
@json_errors
@unit_of_work(retries=RETRIES, backoff=BACKOFF)
def order_pay(request: HttpRequest, order_id: int) -> JsonResponse:
    data = _body(request)
    order = services.pay_order(order_id, reference=str(data.get("reference", "")))
    return JsonResponse(order_json(order))


@csrf_exempt
@require_POST
@conflict_as_409
@json_errors
@unit_of_work(retries=RETRIES, backoff=BACKOFF)
def order_cancel(request: HttpRequest, order_id: int) -> JsonResponse:
    data = _body(request)
    order = services.cancel_order(order_id, reason=str(data.get("reason", "")))
    return JsonResponse(order_json(order))


@csrf_exempt
@require_POST
@versioned_view(Product)
@json_errors
@unit_of_work
def product_restock(request: HttpRequest, product: Product) -> JsonResponse:
    """POST {"quantity": n} with ``If-Match: <ETag of GET /api/products/<pk>/>``.

    Staff restocking from a stale page get 412 instead of overwriting a change they
    have not seen; no ``retries=`` here, since re-running would ignore their If-Match.
    """
    quantity = _body(request).get("quantity")
    if not isinstance(quantity, int) or quantity <= 0:
        raise ShopError('"quantity" must be a positive integer.')
    product.release(quantity)
    product.save(update_fields=["stock"])
    return JsonResponse(product_json(product))


@require_GET
@versioned_view(Product)
def product_detail(request: HttpRequest, product: Product) -> JsonResponse:
    """The product, with its version as the ``ETag``."""
    return JsonResponse(product_json(product))


@require_GET
def outbox(request: HttpRequest) -> JsonResponse:
    counts = {status: 0 for status in OutboxEvent.Status.values}
    for row in OutboxEvent.objects.values_list("status", flat=True):
        counts[row] += 1
    return JsonResponse({"events": counts})


@unit_of_work(retries=RETRIES, backoff=BACKOFF)
def _place_from_form(customer: str, sku: str, quantity: int) -> Order:
    return services.place_order(customer, {sku: quantity})


@require_http_methods(["GET", "POST"])
def shop_page(request: HttpRequest) -> HttpResponse:
    """A minimal page: stock, recent orders and what the handlers produced."""
    error = ""
    if request.method == "POST":
        try:
            quantity = int(request.POST.get("quantity", "1"))
            _place_from_form(
                request.POST.get("customer", ""), request.POST.get("sku", ""), quantity
            )
        except (ShopError, ValueError) as exc:
            error = str(exc)
        else:
            return redirect("shop:page")
    context = {
        "error": error,
        "products": Product.objects.all(),
        "orders": Order.objects.all()[:10],
        "notifications": Notification.objects.all()[:10],
        "sales": ProductSales.objects.all(),
    }
    return render(request, "shop/page.html", context)
