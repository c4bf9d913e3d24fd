"""Models of the peer run (created with ``migrate --run-syncdb``; no migrations kept)."""

from __future__ import annotations

from concurrency.fields import IntegerVersionField
from django.db import models
from django_outbox_pattern.decorators import Config, publish


class PeerRow(models.Model):
    name = models.CharField(max_length=50)
    value = models.IntegerField(default=0)

    class Meta:
        app_label = "peerapp"


@publish([Config(destination="/topic/bench.account")])
class PeerOrder(models.Model):
    """django-outbox-pattern's way: the decorated ``save()`` also writes a Published row."""

    name = models.CharField(max_length=50)
    value = models.IntegerField(default=0)

    class Meta:
        app_label = "peerapp"


class ConcurrencyCounter(models.Model):
    """django-concurrency's versioned model."""

    name = models.CharField(max_length=50)
    value = models.IntegerField(default=0)
    version = IntegerVersionField()

    class Meta:
        app_label = "peerapp"
