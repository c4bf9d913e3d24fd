from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.shop_page, name="page"),
    path("api/products/", views.product_list, name="products"),
    path("api/products/<int:pk>/", views.product_detail, name="product-detail"),
    path("api/products/<int:pk>/restock/", views.product_restock, name="product-restock"),
    path("api/orders/", views.order_create, name="order-create"),
    path("api/orders/<int:order_id>/", views.order_detail, name="order-detail"),
    path("api/orders/<int:order_id>/pay/", views.order_pay, name="order-pay"),
    path("api/orders/<int:order_id>/cancel/", views.order_cancel, name="order-cancel"),
    path("api/outbox/", views.outbox, name="outbox"),
]
