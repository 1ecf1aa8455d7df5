"""The producer: turn messages into record drafts and get them stored.

Theory of operation. A send builds one draft per message (``protocol.record.encode_draft``:
tag, keys, a fresh unique id UNIQ_KEY, ``born_timestamp_ms``), chooses a queue and sends
the drafts in one SEND_MESSAGE / SEND_BATCH request::

    send(topic, body) --> route (cached; from the name servers, or DESCRIBE_TOPIC per
                          broker) --> queue choice
        --> SEND_MESSAGE to that queue's broker --> SendResult(msg_id, queue_id, offset)
              |  retryable failure: another queue, preferably on another broker
              +-- up to `retries` more attempts, then the last error is raised

* Queue choice: round-robin over the topic's write queues (all brokers), skipping brokers
  marked down. A single ``send()`` is *sticky*: while the request being gathered for the
  queue it last chose is still open (not yet sent), it joins that request rather than
  starting one on the next queue, as Kafka's sticky partitioner does; once that request
  goes out, the next send moves on round-robin. Concurrent sends spread over many topics
  and queues so still share requests, and queues even out over time. With
  ``sharding_key`` the queue is ``crc32c(key) % len(write queues)``, fixed
  for the key as long as the topic's queue count is (retries go to the same queue, since
  moving would break the key's order). A topic no broker knows yet is sent with
  ``queue_id = -1`` (the broker picks, creating the topic when auto-creation is on); its
  route is fetched again afterwards. Create topics ahead (``Admin.create_topic``) when a
  sharding key must keep order from the very first message.
* Retryable: ``SystemBusy``, a lost or refused connection, a request timeout, and other
  1xx codes, except FLUSH_TIMEOUT and REPLICA_TIMEOUT, which mean the message *is* stored
  (retrying would store it twice). A retry after a lost connection or a timeout may store
  a duplicate: delivery is at least once. A lost connection or a timeout also drops the
  topic's cached route, so the next send asks again (the name server evicts a broker
  whose connection closed at once). ``TopicNotFound``, ``NoPermission`` and
  ``InvalidArgument`` (a queue that no longer exists) refresh the route and retry once.
  ``SystemBusy`` pauses a little before the next attempt.
* Limits: at most ``max_in_flight`` sends at once (others wait for a slot); bodies over
  ``max_message_size_bytes`` are refused before anything is sent.
* Natural batching (``_batcher``): concurrent ``send()`` calls to one queue share requests.
  A send to a queue with no request in flight goes out at once; those arriving meanwhile go
  out together as the next request (one SEND_BATCH of up to ``batch_max_messages`` drafts
  and ``batch_max_bytes``), in the order they arrived. Each still gets its own result, or
  its own error and retries. ``batch_max_messages=1`` turns this off (one request per send,
  several in flight per queue).

Resource handling: ``async with Producer(...)`` opens the producer's task group (it holds
the broker connections) and closes it on exit, after one round trip to each broker that got
oneway sends (a broker drops requests it is still handling when their connection closes).
A cancelled send leaves the producer usable; whether the message was stored is then unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Final, Self, final

import anyio

from tidemq.client._batcher import (
    DEFAULT_BATCH_MAX_BYTES,
    DEFAULT_BATCH_MAX_MESSAGES,
    SendBatcher,
    send_results,
)
from tidemq.client._drafts import DraftSpec, DraftTemplates, build_drafts
from tidemq.client._ids import default_client_id
from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._message import SendResult
from tidemq.client._namesrv import parse_namesrv, route_source
from tidemq.client._pool import BrokerPool, check_brokers
from tidemq.client._routes import MessageQueue, RouteCache, TopicRoute
from tidemq.client._window import InFlightWindow
from tidemq.common.clock import Clock, SystemClock
from tidemq.common.crc import crc32c
from tidemq.common.units import MIB
from tidemq.errors import (
    ErrorCode,
    InvalidArgument,
    NoPermission,
    SystemBusy,
    TideError,
    TopicNotFound,
)
from tidemq.net import ConnectionClosed, RequestTimeout
from tidemq.protocol.codes import RequestCode

logger = logging.getLogger("tidemq.client.producer")

STORED_BUT_UNCONFIRMED: Final = frozenset({ErrorCode.FLUSH_TIMEOUT, ErrorCode.REPLICA_TIMEOUT})
ROUTE_STALE_ERRORS: Final = (TopicNotFound, NoPermission, InvalidArgument)
"""Answers that may mean our route is out of date (topic deleted, made read-only, queues
shrunk): fetch it again and retry once."""
ONEWAY_BARRIER_TIMEOUT_MS: Final = 1_000
BUSY_PAUSE_MS: Final = 20
"""Pause before retrying after SYSTEM_BUSY, times the attempt number."""
_NO_QUEUE: Final = -1


def is_retryable(error: TideError) -> bool:
    """A send that failed with ``error`` may succeed if tried again (elsewhere)."""
    code = getattr(error, "remote_code", int(error.code))
    return 100 <= code < 200 and code not in STORED_BUT_UNCONFIRMED


@final
class Producer:
    """Sends messages to topics. Use it with ``async with``; see the module docstring."""

    def __init__(
        self,
        *,
        brokers: Sequence[str] | None = None,
        namesrv: str | Sequence[str] | None = None,
        group: str | None = None,
        client_id: str | None = None,
        retries: int = 2,
        max_in_flight: int = 1024,
        send_timeout_ms: int = 10_000,
        connect_timeout_ms: int = 3_000,
        route_ttl_ms: int = 30_000,
        broker_down_ms: int = 10_000,
        max_message_size_bytes: int = 4 * MIB,
        batch_max_messages: int = DEFAULT_BATCH_MAX_MESSAGES,
        batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES,
        clock: Clock | None = None,
    ) -> None:
        if retries < 0 or min(max_in_flight, send_timeout_ms, max_message_size_bytes,
                              batch_max_messages, batch_max_bytes) < 1:
            raise InvalidArgument("retries must be >= 0; max_in_flight, send_timeout_ms, "
                                  "max_message_size_bytes and batch_max_* >= 1")
        self.client_id = client_id or default_client_id("producer")
        self.group = group
        self._retries = retries
        self._max_in_flight = max_in_flight
        self._send_timeout_ms = send_timeout_ms
        self._max_message_size_bytes = max_message_size_bytes
        self._clock: Clock = clock or SystemClock()
        namesrv_addresses = parse_namesrv(namesrv)
        self._pool = BrokerPool(check_brokers(brokers, namesrv_given=bool(namesrv_addresses)),
                                client_id=self.client_id,
                                connect_timeout_ms=connect_timeout_ms,
                                request_timeout_ms=send_timeout_ms, down_for_ms=broker_down_ms)
        self._source = route_source(self._pool, namesrv_addresses, client_id=self.client_id,
                                    connect_timeout_ms=connect_timeout_ms,
                                    request_timeout_ms=send_timeout_ms)
        self._routes = RouteCache(self._source.route, ttl_ms=route_ttl_ms)
        self._round_robin: dict[str, int] = {}
        self._sticky: dict[str, MessageQueue] = {}
        """The queue whose open request a topic's single sends join (see ``_choose``)."""
        self._templates = DraftTemplates()
        self._in_flight: InFlightWindow | None = None
        self._oneway_brokers: set[str] = set()
        self._owned = OwnedTaskGroup()
        self._batcher: SendBatcher | None = None
        if batch_max_messages > 1:
            self._batcher = SendBatcher(self._pool, self._owned, group=group,
                                        timeout_ms=send_timeout_ms,
                                        max_messages=batch_max_messages,
                                        max_bytes=batch_max_bytes)

    async def __aenter__(self) -> Self:
        await self._owned.enter()
        self._pool.bind(self._owned)
        self._source.bind(self._owned)
        self._in_flight = InFlightWindow(self._max_in_flight)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._in_flight = None
        with anyio.move_on_after(ONEWAY_BARRIER_TIMEOUT_MS / 1000, shield=True):
            await self._oneway_barrier()
        self._pool.close()
        self._source.close()
        await self._owned.close()

    async def _oneway_barrier(self) -> None:
        """Before closing, one round trip to each broker that got oneway sends: a broker
        drops requests still being handled when their connection closes, and this answer
        comes back only after it took the oneway frames sent before it."""
        for address in sorted(self._oneway_brokers):
            try:
                await self._pool.call(address, RequestCode.HEARTBEAT,
                                      {"client_id": self.client_id, "groups": []})
            except TideError as error:
                logger.info("oneway_barrier_failed", extra={"broker": address,
                                                            "error": error.remark})
        self._oneway_brokers.clear()

    async def send(
        self,
        topic: str,
        body: bytes,
        *,
        key: str | None = None,
        keys: Sequence[str] = (),
        tag: str | None = None,
        properties: Mapping[str, str] | None = None,
        sharding_key: str | None = None,
    ) -> SendResult:
        """Store one message and return where it went.

        Args:
            key / keys: user keys (``Admin.get_messages_by_key`` finds the message by each).
            tag: one tag; consumers filter on it (``"created || paid"``).
            properties: user properties (names KEYS, TAGS, UNIQ_KEY are reserved).
            sharding_key: messages with the same key go to the same queue (kept in order).

        Raises:
            MessageIllegal: the body is too large or the topic name is bad.
            TopicNotFound: no broker has the topic and auto-creation is off.
            NoPermission, FlushTimeout, DiskFull, SystemBusy, ConnectionClosed,
            RequestTimeout: the broker's answer, after retries where retryable.
        """
        spec = _PLAIN_SPEC if tag is None and key is None and not keys and not properties \
            else DraftSpec(tag=tag, keys=_keys(key, keys), properties=properties or {})
        results = await self._send(topic, [body], spec, sharding_key,
                                   RequestCode.SEND_MESSAGE)
        return results[0]

    async def send_batch(
        self,
        topic: str,
        bodies: Sequence[bytes],
        *,
        key: str | None = None,
        keys: Sequence[str] = (),
        tag: str | None = None,
        properties: Mapping[str, str] | None = None,
        sharding_key: str | None = None,
    ) -> list[SendResult]:
        """Store several messages in one request, in one queue, in order (consecutive
        offsets). Tag, keys and properties apply to every message. Raises as ``send``."""
        if not bodies:
            raise InvalidArgument("send_batch needs at least one body")
        spec = DraftSpec(tag=tag, keys=_keys(key, keys), properties=properties or {})
        return await self._send(topic, list(bodies), spec, sharding_key,
                                RequestCode.SEND_BATCH)

    async def send_oneway(
        self,
        topic: str,
        body: bytes,
        *,
        key: str | None = None,
        keys: Sequence[str] = (),
        tag: str | None = None,
        properties: Mapping[str, str] | None = None,
        sharding_key: str | None = None,
    ) -> None:
        """Send without waiting for the broker's answer: no result, no error from the
        broker (only a connection that cannot be made at all raises). Fastest, may lose."""
        spec = DraftSpec(tag=tag, keys=_keys(key, keys), properties=properties or {})
        drafts, _ = self._drafts(topic, [body], spec)
        semaphore = self._require_open()
        async with semaphore:
            route = await self._routes.get(topic)
            failed: set[str] = set()
            for attempt in range(self._retries + 1):
                target = self._choose(route, sharding_key, failed)
                fields = self._fields(topic, target)
                try:
                    await self._pool.send_oneway(target.broker, RequestCode.SEND_MESSAGE,
                                                 fields, drafts)
                    self._oneway_brokers.add(target.broker)
                    return
                except TideError as error:
                    if attempt == self._retries or not is_retryable(error):
                        raise
                    failed.add(target.broker)

    async def _send(self, topic: str, bodies: list[bytes], spec: DraftSpec,
                    sharding_key: str | None, code: RequestCode) -> list[SendResult]:
        drafts, unique_ids = self._drafts(topic, bodies, spec)
        window = self._require_open()
        if not window.take_nowait():  # the common case costs no scheduling
            await window.acquire()
        try:
            route = self._routes.cached(topic) or await self._routes.get(topic)
            failed: set[str] = set()
            refreshed = False
            attempt = 0
            batcher = self._batcher if code is RequestCode.SEND_MESSAGE else None
            while True:
                target = self._choose(route, sharding_key, failed,
                                      sticky=batcher is not None)
                try:
                    if batcher is not None:  # a lone message: shares a request (_batcher)
                        results = [await batcher.send(target, drafts, unique_ids[0])]
                    else:
                        results = await self._request(topic, target, code, drafts,
                                                      unique_ids)
                except ROUTE_STALE_ERRORS:
                    if refreshed or not route.exists:
                        raise
                    self._routes.invalidate(topic)
                    route, refreshed = await self._routes.get(topic), True
                    continue
                except TideError as error:
                    attempt += 1
                    if attempt > self._retries or not is_retryable(error):
                        raise
                    logger.info("send_retry", extra={"topic": topic, "broker": target.broker,
                                                     "error": error.remark})
                    failed.add(target.broker)
                    if isinstance(error, ConnectionClosed | RequestTimeout):
                        self._routes.invalidate(topic)  # the next send asks again
                    if isinstance(error, SystemBusy):
                        await anyio.sleep(BUSY_PAUSE_MS * attempt / 1000)
                    continue
                if target.queue_id == _NO_QUEUE:
                    self._routes.invalidate(topic)  # created, perhaps: learn its queues
                return results
        finally:
            window.release()

    async def _request(self, topic: str, target: MessageQueue, code: RequestCode,
                       drafts: bytes, unique_ids: list[str]) -> list[SendResult]:
        """One try of a send as a request of its own."""
        response = await self._pool.call(target.broker, code, self._fields(topic, target),
                                          drafts, timeout_ms=self._send_timeout_ms)
        return send_results(topic, target.broker, response, unique_ids)

    def _drafts(self, topic: str, bodies: list[bytes], spec: DraftSpec
                ) -> tuple[bytes, list[str]]:
        return build_drafts(topic, bodies, spec, born_timestamp_ms=self._clock.now_ms(),
                            template=self._templates.get(topic, spec),
                            max_message_size_bytes=self._max_message_size_bytes)

    def _fields(self, topic: str, target: MessageQueue) -> dict[str, str | int]:
        fields: dict[str, str | int] = {"topic": topic, "queue_id": target.queue_id}
        if self.group is not None:
            fields["producer_group"] = self.group
        return fields

    def _choose(self, route: TopicRoute, sharding_key: str | None,
                failed: set[str], *, sticky: bool = False) -> MessageQueue:
        """The queue for the next attempt (see the module docstring)."""
        queues = route.write_queues
        if not queues:
            brokers = [b for b in self._pool.live_addresses() if b not in failed] or \
                list(self._pool.addresses)
            if not brokers:
                raise TopicNotFound(f"no broker serves topic {route.topic!r} and none is "
                                    "known to create it")
            return MessageQueue(route.topic, brokers[self._next(route.topic) % len(brokers)],
                                _NO_QUEUE)
        if sharding_key is not None:
            return queues[crc32c(sharding_key.encode()) % len(queues)]
        if not failed and not self._pool.any_down():
            batcher = self._batcher
            if batcher is not None and sticky:
                current = self._sticky.get(route.topic)
                if current is not None and batcher.has_open_flight(current):
                    return current  # join the request being gathered (see the docstring)
                chosen = queues[self._next(route.topic) % len(queues)]
                self._sticky[route.topic] = chosen
                return chosen
            return queues[self._next(route.topic) % len(queues)]
        usable = [q for q in queues if q.broker not in failed and not self._pool.is_down(q.broker)]
        candidates = usable or [q for q in queues if q.broker not in failed] or list(queues)
        return candidates[self._next(route.topic) % len(candidates)]

    def _next(self, topic: str) -> int:
        position = self._round_robin.get(topic, -1) + 1
        self._round_robin[topic] = position
        return position

    def _require_open(self) -> InFlightWindow:
        if self._in_flight is None:
            raise RuntimeError("use 'async with Producer(...)' before sending")
        return self._in_flight


_PLAIN_SPEC: Final = DraftSpec(tag=None, keys=(), properties={})
"""The spec of a send with no tag, key or property (built once, not per send)."""


def _keys(key: str | None, keys: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keys, str):
        raise InvalidArgument("keys= takes a sequence of strings; use key= for one key")
    return ((key,) if key is not None else ()) + tuple(keys)

