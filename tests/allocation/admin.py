from __future__ import annotations

from django.contrib import admin

from django_uow.admin.locking import VersionedModelAdmin

from .models import Product


@admin.register(Product)
class ProductAdmin(VersionedModelAdmin):
    list_display = ["sku", "version_number"]
    fields = ["sku"]
