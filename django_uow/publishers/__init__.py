"""Publishers: how the relay hands a batch of events to the outside world.

``PUBLISHERS`` entries name these classes by their dotted path here
(``"django_uow.publishers.CeleryPublisher"``); a publisher of your own implements
``Publisher``. Each transport lives in a module of its own.
"""

from __future__ import annotations

from ..exceptions import BlockedByEarlierFailure
from .base import (
    Publisher,
    commit_path_publishers,
    get_publishers,
    handler_task_id,
    load_publisher,
    record_sent,
    recording_deferred,
)
from .celery import CeleryPublisher
from .inline import InlinePublisher
from .nats import NatsJetStreamPublisher
from .rabbitmq import RabbitMQPublisher
from .redis import RedisStreamPublisher

__all__ = [
    "BlockedByEarlierFailure",
    "CeleryPublisher",
    "InlinePublisher",
    "NatsJetStreamPublisher",
    "Publisher",
    "RabbitMQPublisher",
    "RedisStreamPublisher",
    "commit_path_publishers",
    "get_publishers",
    "handler_task_id",
    "load_publisher",
    "record_sent",
    "recording_deferred",
]
