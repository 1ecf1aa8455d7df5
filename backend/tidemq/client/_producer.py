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

* ``submit`` (``PendingSend``, ``_pending``): the same path without a waiting task per
  message. The message joins its lane like a ``send()`` (sticky queue, shared requests),
  holds an in-flight slot until settled, and the batcher calls back with the answer
  (usually from the connection's reader task, as it arrives); a failed first try continues
  in a task of its own with ``send()``'s retry loop (``_deliver``). ``flush()`` waits until
  none is unsettled.

Resource handling: ``async with Producer(...)`` opens the producer's task group (it holds
the broker connections) and closes it on exit, after one round trip to each broker that got
oneway sends (a broker drops requests it is still handling when their connection closes).
A cancelled send leaves the producer usable; whether the message was stored is then unknown.
Leaving normally first waits for every submitted send (``flush``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from types import TracebackType
from typing import Final, Self, final

import anyio

from tidemq.client._batcher import (
    DEFAULT_BATCH_MAX_BYTES,
    DEFAULT_BATCH_MAX_MESSAGES,
    Flight,
    QueuedSend,
    SendBatcher,
    send_results,
)
from tidemq.client._drafts import (
    TEMPLATES_CACHED_MAX,
    UNIQUE_IDS,
    DraftSpec,
    DraftTemplates,
    body_too_large,
    build_drafts,
)
from tidemq.client._ids import default_client_id
from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._message import SendResult
from tidemq.client._namesrv import parse_namesrv, route_source
from tidemq.client._pending import PendingSend, complete_stored
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
from tidemq.protocol.record import DraftTemplate

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
        self._submitted = 0
        """Sends handed to ``submit`` and not yet settled."""
        self._all_settled: anyio.Event | None = None
        self._wall_ns: Callable[[], int] | None = \
            time.time_ns if type(self._clock) is SystemClock else None
        """The system clock's own source, read without its two calls (submit's born time)."""
        self._plain_templates: dict[str, DraftTemplate] = {}
        """``_templates`` of messages without tag, keys or properties, by topic alone."""
        self._sticky_flights: dict[str, Flight] = {}
        """The request last gathered for a topic's submitted sends, which the next one
        joins while it is still being gathered (``Flight.try_add``)."""
        self._submits_since_yield = 0
        self._submit_yield_every = max(16, min(batch_max_messages, max_in_flight // 2))
        """``submit`` yields to the event loop this often, so requests go out while the
        application goes on handing messages over (at most about half the window is
        gathered before the first of it is sent)."""
        self._oneway_brokers: set[str] = set()
        self._owned = OwnedTaskGroup()
        self._batcher: SendBatcher | None = None
        if batch_max_messages > 1:
            self._batcher = SendBatcher(self._pool, self._owned, group=group,
                                        timeout_ms=send_timeout_ms,
                                        max_messages=batch_max_messages,
                                        max_bytes=batch_max_bytes,
                                        on_answered=self._flight_answered)

    async def __aenter__(self) -> Self:
        await self._owned.enter()
        self._pool.bind(self._owned)
        self._source.bind(self._owned)
        self._in_flight = InFlightWindow(self._max_in_flight)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        try:
            if exc_type is None:
                await self.flush()  # what was submitted gets its answer, as Kafka's close()
        finally:
            await self._close()

    async def _close(self) -> None:
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
        spec = _spec(tag, key, keys, properties)
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

    async def submit(
        self,
        topic: str,
        body: bytes,
        *,
        key: str | None = None,
        keys: Sequence[str] = (),
        tag: str | None = None,
        properties: Mapping[str, str] | None = None,
        sharding_key: str | None = None,
    ) -> PendingSend:
        """Hand one message over and return at once with a ``PendingSend``: await it (or
        give it a callback) for the SendResult. Waits only while ``max_in_flight`` sends
        are already under way (back-pressure), or to learn a topic's route the first time.
        Sends are retried as by ``send``; ``flush()`` waits for every one submitted, and
        leaving ``async with`` normally flushes too.

        Many messages in flight without a task each: the Kafka / RocketMQ asynchronous
        send. Messages with one sharding key go to one queue in submission order, but a
        retried one may land after later ones; await each send where order must survive
        failures.

        Raises (at once, nothing sent): MessageIllegal, InvalidArgument, TopicNotFound
        (no broker known). The send's own errors are raised by the PendingSend.
        """
        if type(body) is bytes and tag is None and key is None and not keys and \
                not properties:  # the common case, with the fewest calls (~0.1 us each)
            template = self._plain_templates.get(topic) or self._plain_template(topic)
            if len(body) > self._max_message_size_bytes:  # build_draft, inlined
                raise body_too_large(len(body), self._max_message_size_bytes)
            unique_id = next(UNIQUE_IDS.current, None) or next(UNIQUE_IDS.refill())
            wall_ns = self._wall_ns
            draft = template.encode(body, unique_id, wall_ns() // 1_000_000
                                    if wall_ns is not None else self._clock.now_ms())
        else:  # bytearray, memoryview (or a wrong type: InvalidArgument); tag, keys, ...
            draft, unique_ids = self._drafts(topic, [body], _spec(tag, key, keys, properties))
            unique_id = unique_ids[0]
        window = self._in_flight
        if window is None:
            raise RuntimeError("use 'async with Producer(...)' before sending")
        if window.free > 0 and not window.waiting:  # take_nowait, inlined
            window.free -= 1
        else:
            await window.acquire()
        self._submitted += 1
        # Join the request still being gathered on the topic's sticky queue (what _choose
        # would pick; Flight.try_add, inlined). It was chosen from a fresh route a moment
        # ago, so the route is looked at only when that request is gone.
        flight = self._sticky_flights.get(topic) if sharding_key is None else None
        if flight is not None and not flight.taken and not self._pool.down_until_s and \
                len(waiters := flight.waiters) < flight.max_messages and \
                flight.size + len(draft) <= flight.max_bytes:
            pending = PendingSend(topic, unique_id, None, draft, flight, len(waiters))
            waiters.append(pending)
            flight.size += len(draft)  # (flight.notify is set: enqueue made it)
        else:
            pending = PendingSend(topic, unique_id, sharding_key, draft)
            await self._enqueue_submitted(pending)
        self._submits_since_yield += 1
        if self._submits_since_yield >= self._submit_yield_every:
            self._submits_since_yield = 0
            await anyio.lowlevel.checkpoint()
        return pending

    async def _enqueue_submitted(self, pending: PendingSend) -> None:
        """Hand ``pending`` (counted in ``_submitted``, holding a window slot) to a lane,
        or to a task of its own without batching. Settles it with the error if that fails
        (and raises it)."""
        topic, sharding_key = pending.topic, pending.sharding_key
        try:
            route = self._routes.cached(topic) or await self._routes.get(topic)
            batcher = self._batcher
            if batcher is None:  # batch_max_messages=1: send's path, in a task
                self._owned.task_group.start_soon(self._deliver_submitted, pending,
                                                  pending._draft, None, None)
            elif sharding_key is None and not self._pool.any_down():
                flight = self._sticky_flights.get(topic)
                if flight is None or not flight.try_add(pending):
                    self._sticky_flights[topic] = batcher.enqueue(
                        self._choose(route, None, _NO_FAILURES, sticky=True), pending)
            else:
                batcher.enqueue(self._choose(route, sharding_key, _NO_FAILURES, sticky=True),
                                pending)
        except BaseException as error:
            self._settle_submitted(pending, None, error)
            raise

    def _plain_template(self, topic: str) -> DraftTemplate:
        """The template of ``topic`` for messages without tag, keys or properties (kept in
        ``_plain_templates``, a few at most: a producer's topics)."""
        template = self._templates.get(topic, _PLAIN_SPEC)  # validates the topic
        if len(self._plain_templates) >= TEMPLATES_CACHED_MAX:
            self._plain_templates.clear()
        self._plain_templates[topic] = template
        return template

    async def flush(self) -> None:
        """Wait until every message handed to ``submit`` so far is stored or has failed."""
        while self._submitted:
            if self._all_settled is None:
                self._all_settled = anyio.Event()
            await self._all_settled.wait()

    def _flight_answered(self, target: MessageQueue, entries: list[QueuedSend]) -> None:
        """A request holding submitted sends was answered (called by the batcher, once per
        request, on the connection's reader task or a lane's drain task): settle the stored
        ones in one go, retry the failed ones."""
        stored, failed = complete_stored(entries)
        if stored:
            if target.queue_id == _NO_QUEUE:
                self._routes.invalidate(target.topic)  # created, perhaps: learn its queues
            window = self._in_flight
            if window is not None:
                window.release_many(stored)
            self._submitted -= stored
            if not self._submitted and self._all_settled is not None:
                self._all_settled.set()
                self._all_settled = None
        for pending in failed:
            self._retry_submitted(pending, target)

    def _retry_submitted(self, pending: PendingSend, target: MessageQueue) -> None:
        """A submitted send's first try, to ``target``, failed (``pending._error``)."""
        error = pending._error
        assert error is not None
        if self._owned.closed:
            self._settle_submitted(pending, None, error)
            return
        try:  # the retry logic of send(), in a task of its own
            self._owned.task_group.start_soon(self._deliver_submitted, pending,
                                              pending._draft, target, error)
        except RuntimeError:  # the producer is closing
            self._settle_submitted(pending, None, error)

    async def _deliver_submitted(self, pending: PendingSend, draft: bytes,
                                 failed_target: MessageQueue | None,
                                 error: BaseException | None) -> None:
        """Finish a submitted send after its first try (to ``failed_target``) failed with
        ``error``, or before any try (both None), retrying as ``send`` does."""
        topic = pending.topic
        outcome: SendResult | None = None
        failure: BaseException | None = ConnectionClosed(
            "the producer was closed before the send finished")
        try:
            with self._owned.guard():
                tries = _Tries()
                route = self._routes.cached(topic) or await self._routes.get(topic)
                if error is not None and failed_target is not None:
                    route = await self._after_failure(topic, route, failed_target, error,
                                                      tries)
                results = await self._deliver(topic, draft, [pending.unique_id],
                                              pending.sharding_key,
                                              RequestCode.SEND_MESSAGE, route, tries)
                outcome, failure = results[0], None
        except Exception as final_error:
            failure = final_error
        finally:
            self._settle_submitted(pending, outcome, failure)

    def _settle_submitted(self, pending: PendingSend, result: SendResult | None,
                          error: BaseException | None) -> None:
        if pending.done():
            return
        window = self._in_flight
        if window is not None:
            window.release()
        pending.complete(result, error)
        self._submitted -= 1
        if not self._submitted and self._all_settled is not None:
            self._all_settled.set()
            self._all_settled = None

    async def _send(self, topic: str, bodies: list[bytes], spec: DraftSpec,
                    sharding_key: str | None, code: RequestCode) -> list[SendResult]:
        drafts, unique_ids = self._drafts(topic, bodies, spec)
        window = self._require_open()
        if not window.take_nowait():  # the common case costs no scheduling
            await window.acquire()
        try:
            route = self._routes.cached(topic) or await self._routes.get(topic)
            return await self._deliver(topic, drafts, unique_ids, sharding_key, code, route,
                                       _Tries())
        finally:
            window.release()

    async def _deliver(self, topic: str, drafts: bytes, unique_ids: list[str],
                       sharding_key: str | None, code: RequestCode, route: TopicRoute,
                       tries: _Tries) -> list[SendResult]:
        """Try, and retry on retryable failures (see the module docstring), until stored
        or failed for good."""
        batcher = self._batcher if code is RequestCode.SEND_MESSAGE else None
        while True:
            target = self._choose(route, sharding_key, tries.failed,
                                  sticky=batcher is not None)
            try:
                if batcher is not None:  # a lone message: shares a request (_batcher)
                    results = [await batcher.send(target, drafts, unique_ids[0])]
                else:
                    results = await self._request(topic, target, code, drafts, unique_ids)
            except TideError as error:
                route = await self._after_failure(topic, route, target, error, tries)
                continue
            if target.queue_id == _NO_QUEUE:
                self._routes.invalidate(topic)  # created, perhaps: learn its queues
            return results

    async def _after_failure(self, topic: str, route: TopicRoute, target: MessageQueue,
                             error: BaseException, tries: _Tries) -> TopicRoute:
        """Decide on a failed try: raise ``error`` if it is final, else return the route
        for the next try (fetched again if the error says ours is stale)."""
        if isinstance(error, ROUTE_STALE_ERRORS):
            if tries.refreshed or not route.exists:
                raise error
            self._routes.invalidate(topic)
            tries.refreshed = True
            return await self._routes.get(topic)
        if not isinstance(error, TideError):
            raise error
        tries.attempt += 1
        if tries.attempt > self._retries or not is_retryable(error):
            raise error
        logger.info("send_retry", extra={"topic": topic, "broker": target.broker,
                                         "error": error.remark})
        tries.failed.add(target.broker)
        if isinstance(error, ConnectionClosed | RequestTimeout):
            self._routes.invalidate(topic)  # the next send asks again
        if isinstance(error, SystemBusy):
            await anyio.sleep(BUSY_PAUSE_MS * tries.attempt / 1000)
        return route

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
                failed: AbstractSet[str], *, sticky: bool = False) -> MessageQueue:
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


@final
class _Tries:
    """Where a send stands in its retries."""

    __slots__ = ("attempt", "failed", "refreshed")

    def __init__(self) -> None:
        self.attempt = 0
        self.failed: set[str] = set()
        """Brokers that failed this send: the next try prefers another."""
        self.refreshed = False
        """The route was fetched again after a stale-route error (once per send)."""


_NO_FAILURES: Final[frozenset[str]] = frozenset()
_PLAIN_SPEC: Final = DraftSpec(tag=None, keys=(), properties={})
"""The spec of a send with no tag, key or property (built once, not per send)."""


def _spec(tag: str | None, key: str | None, keys: Sequence[str],
          properties: Mapping[str, str] | None) -> DraftSpec:
    """A send's spec; the shared plain one when there is no tag, key or property."""
    if tag is None and key is None and not keys and not properties:
        return _PLAIN_SPEC
    return DraftSpec(tag=tag, keys=_keys(key, keys), properties=properties or {})


def _keys(key: str | None, keys: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keys, str):
        raise InvalidArgument("keys= takes a sequence of strings; use key= for one key")
    return ((key,) if key is not None else ()) + tuple(keys)

