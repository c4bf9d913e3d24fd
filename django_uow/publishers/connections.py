"""Broker connections for the commit path: every network step bounded, no retry loops.

By default kombu reconnects until ``broker_connection_timeout`` with sleeps between tries,
redis-py retries a command three times, and kombu's Redis transport sets no socket
timeout at all: a refused broker held a commit for seconds, a hung one (TCP accepts,
nothing answers) forever. The fast path therefore talks to the broker through
connections of its own, made here with the timeout on connect, on every read and write,
and no retries. A failure surfaces at once; the caller gives the events to the sweep.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

_local = threading.local()


def celery_transport_options(
    driver_type: str, timeout: float, reply_timeout: float | None = None
) -> dict[str, Any]:
    """kombu transport options that bound one connect by ``timeout`` and each read and
    write by ``reply_timeout`` (default: ``timeout`` too)."""
    io = timeout if reply_timeout is None else reply_timeout
    # kombu: one connection attempt, and no longer than the budget in total.
    options: dict[str, Any] = {"max_retries": 0, "connect_retries_timeout": timeout}
    if driver_type == "redis":
        options.update(socket_connect_timeout=timeout, socket_timeout=io, retry_on_timeout=False)
    elif driver_type == "amqp":
        options.update(read_timeout=io, write_timeout=io)
    return options


def _close_quietly(connection: Any) -> None:
    with contextlib.suppress(Exception):  # a broken connection may fail to close
        connection.release()


@contextlib.contextmanager
def celery_connection(
    app: Any, timeout: float, reply_timeout: float | None = None
) -> Iterator[Any]:
    """This thread's bounded broker connection of Celery ``app``, kept between commits.

    kombu connections are not thread-safe, so each thread has its own. After an error the
    connection is closed and dropped: the next use connects afresh.
    """
    url = app.conf.broker_write_url or app.conf.broker_url
    # A forked child never reuses the parent's. One per bound: the commit path's and the
    # sweep's connections of one thread do not replace each other.
    key = (os.getpid(), id(app), url, timeout, reply_timeout)
    kept: dict[Any, Any] = getattr(_local, "celery", None) or {}
    _local.celery = kept
    for other in [k for k in kept if k[0] != key[0] or k[2] != url or k[1] != key[1]]:
        _close_quietly(kept.pop(other))
    connection = kept.get(key)
    if connection is None:
        connection = app.connection_for_write(connect_timeout=timeout)
        connection.transport_options.update(
            celery_transport_options(connection.transport.driver_type, timeout, reply_timeout)
        )
        kept[key] = connection
    try:
        yield connection
    except BaseException:
        kept.pop(key, None)
        _close_quietly(connection)
        raise


def redis_client_options(timeout: float, reply_timeout: float | None = None) -> dict[str, Any]:
    """redis-py client options that bound connect by ``timeout`` and every command by
    ``reply_timeout`` (default: ``timeout``), without retries."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout if reply_timeout is None else reply_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
