"""Django REST framework views of the versioned Counter (imported only when DRF is installed)."""

from __future__ import annotations

from typing import Any

from rest_framework import generics, serializers
from rest_framework.renderers import JSONRenderer

from django_uow.contrib.rest_framework import VersionedAPIViewMixin
from tests.testapp.models import Counter


class CounterSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = Counter
        fields = ["name", "value", "version"]
        read_only_fields = ["version"]


class CounterDetail(VersionedAPIViewMixin, generics.RetrieveUpdateDestroyAPIView):  # type: ignore[type-arg]
    queryset = Counter.objects.all()
    serializer_class = CounterSerializer
    renderer_classes = [JSONRenderer]
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []


class StrictCounterDetail(CounterDetail):
    require_if_match = True


class StaleCounterDetail(CounterDetail):
    """Saves a stale copy: a writer got in between the precondition check and the save."""

    def perform_update(self, serializer: Any) -> None:
        Counter.objects.filter(pk=serializer.instance.pk).update_versioned(value=0)
        serializer.save()
