from django.contrib import admin

from django_uow.admin.locking import VersionedModelAdmin

from .models import Notification, Order, OrderLine, Payment, Product, ProductSales


@admin.register(Product)
class ProductAdmin(VersionedModelAdmin):
    """Two staff members editing one product: the second save is refused, not lost."""

    list_display = ["sku", "name", "price", "stock", "version"]
    search_fields = ["sku", "name"]


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    readonly_fields = ["product", "quantity", "unit_price"]
    can_delete = False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    """Read-only: orders change through the shop's use cases, which record events."""

    list_display = ["id", "customer", "status", "total", "version", "created_at"]
    list_filter = ["status"]
    search_fields = ["customer"]
    inlines = [OrderLineInline]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["reference", "order", "amount", "created_at"]


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "order_id", "message"]
    list_filter = ["kind"]


@admin.register(ProductSales)
class ProductSalesAdmin(admin.ModelAdmin):
    list_display = ["sku", "orders", "units_ordered", "units_cancelled", "revenue"]
