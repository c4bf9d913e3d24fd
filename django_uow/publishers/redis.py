"""``RedisStreamPublisher``: each event appended to a Redis stream, a batch in one script."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from ..conf import uow_settings
from ..events.base import Envelope
from ..exceptions import BlockedByEarlierFailure
from .base import OrderedFailures
from .connections import redis_client_options


class RedisStreamPublisher:
    """XADD each event to a Redis stream with one pipeline per batch.

    The stream key is ``STREAM_KEY`` formatted with ``aggregate_type`` and ``event_type``
    (default ``"django_uow:{aggregate_type}"``: one stream per aggregate type; use
    ``"...:{event_type}"`` for one per event type). Streams are capped with
    ``MAXLEN ~ STREAM_MAXLEN``. Each entry has one field, ``message``: the envelope as JSON.
    A batch is one server-side script (``XADD_IN_ORDER``): one round trip, and an
    aggregate whose event failed gets none of its later events in that batch.
    """

    #: A batch is one pipeline that Redis answers in milliseconds: under RELAY_MODE
    #: "auto" the relay publishes it inside the claiming transaction (one write per row).
    direct_relay = True

    def __init__(
        self,
        url: str | None = None,
        *,
        key: str | None = None,
        maxlen: int | None = -1,
        timeout: float | None = None,
        reply_timeout: float | None = None,
    ) -> None:
        self.url = url or uow_settings.REDIS_URL
        self.key = key or uow_settings.STREAM_KEY
        self.maxlen = uow_settings.STREAM_MAXLEN if maxlen == -1 else maxlen
        self.timeout = timeout
        self.reply_timeout = reply_timeout
        self._client: Any = None
        self._xadd: Any = None

    def for_commit_path(
        self, timeout: float, reply_timeout: float | None = None
    ) -> RedisStreamPublisher:
        """This publisher with a client of its own: connect bounded by ``timeout``, each
        command by ``reply_timeout`` (default ``timeout``), no retries."""
        return RedisStreamPublisher(
            self.url, key=self.key, maxlen=self.maxlen, timeout=timeout, reply_timeout=reply_timeout
        )

    @property
    def broker_url(self) -> str:
        return str(self.url)

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis

            if self.timeout is None:  # the sweep: BROKER_TIMEOUT on every step, no retries
                options = redis_client_options(uow_settings.BROKER_TIMEOUT)
            else:
                options = redis_client_options(self.timeout, self.reply_timeout)
            self._client = redis.Redis.from_url(self.url, **options)
        return self._client

    def stream_key(self, envelope: Envelope) -> str:
        return self.key.format(
            aggregate_type=envelope.aggregate_type or "none", event_type=envelope.event_type
        )

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        if not envelopes:
            return None
        ordered = uow_settings.ORDERING == "aggregate"
        keys: list[str] = []
        args: list[Any] = [self.maxlen or 0, 1 if ordered else 0]
        for envelope in envelopes:
            keys.append(self.stream_key(envelope))
            aggregate = f"{envelope.aggregate_type}\x1f{envelope.aggregate_id}"
            args += [aggregate if envelope.aggregate_id else "", envelope.to_json()]
        results = self._script(keys=keys, args=args)
        outcome = OrderedFailures()
        for envelope, result in zip(envelopes, results, strict=True):
            if outcome.blocked(envelope):
                continue
            if isinstance(result, Exception):
                outcome.fail(envelope, result)
            elif result == b"blocked" or result == "blocked":
                outcome.failures[envelope.event_id] = BlockedByEarlierFailure(envelope)
        return outcome.result()

    @property
    def _script(self) -> Any:
        if self._xadd is None:
            self._xadd = self.client.register_script(XADD_IN_ORDER)
        return self._xadd


#: One round trip for a batch, like a pipeline, but in order per aggregate: once an
#: event's XADD fails, the later events of its aggregate are not added ("blocked"), so a
#: stream never holds an event whose predecessor is missing. KEYS: a stream per event;
#: ARGV: MAXLEN (0: none), ordering on (1/0), then per event its aggregate key and body.
XADD_IN_ORDER = """
local maxlen = tonumber(ARGV[1])
local ordered = ARGV[2] == '1'
local failed = {}
local out = {}
for i = 1, #KEYS do
  local aggregate = ARGV[2 * i + 1]
  local body = ARGV[2 * i + 2]
  if ordered and aggregate ~= '' and failed[aggregate] then
    out[i] = 'blocked'
  else
    local reply
    if maxlen > 0 then
      reply = redis.pcall('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*', 'message', body)
    else
      reply = redis.pcall('XADD', KEYS[i], '*', 'message', body)
    end
    if type(reply) == 'table' and reply.err then
      if aggregate ~= '' then failed[aggregate] = true end
    end
    out[i] = reply
  end
end
return out
"""
