"""Admin for the test models: optimistic locking through ``VersionedModelAdmin``."""

from __future__ import annotations

from django.contrib import admin

from django_uow.admin.locking import VersionedAdminMixin, VersionedModelAdmin

from .models import Counter, Order


@admin.register(Counter)
class CounterAdmin(VersionedModelAdmin):
    list_display = ["name", "value", "version"]
    fields = ["name", "value", "last_seen"]


@admin.register(Order)
class OrderAdmin(VersionedAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["pk", "status", "total", "version"]
    fieldsets = [("Order", {"fields": ["status", ("total", "note")]})]
