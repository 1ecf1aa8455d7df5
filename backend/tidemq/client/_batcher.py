"""Natural batching of single sends: concurrent ``send()`` calls to one queue share requests.

Each (broker, topic, queue) has a *lane*: a FIFO of drafts waiting to go and at most one
request in flight. There is no linger: a send to an idle lane goes out at once (in a SEND_MESSAGE
of its own, with the sends started in the same scheduler pass); sends that arrive while a
request of their lane is in flight wait, and go out together as the next request (one
SEND_BATCH), up to ``max_messages`` drafts and ``max_bytes`` of body::

    send() --> lane(queue).flights --> the request, written by whoever finds the lane idle:
                 (the last flight that      * an idle lane's send(): its own task, after one
                  has room, or a new one)     schedule point (the sends started with it join)
                                            * the answer of the lane's request: the
                                              connection's reader task, through the
                                              request's callback (``BrokerPool.call_nowait``)
                                            * the dispatch task, for a submitted send to
                                              an idle lane (``enqueue``: the submitting
                                              task goes on, and what it submits meanwhile
                                              joins the request); one pass sends every
                                              lane handed over since it was started
                                            * a drain task, when the request has to wait (no
                                              connection yet, no room on it), and after a
                                              MessageIllegal batch
                                            the flight gets the answer (``SendAnswer``), or
                                            each send the error; one event wakes the
                                            awaiting sends (``send``), and one call of
                                            ``on_answered`` gets the flight's submitted ones
                                            (``enqueue``, for ``Producer.submit``)

Why no task of its own per lane: a send to an idle lane used to be written by a drain task
started for it, and its answer went through that task too; on a mostly idle event loop each
such hop is a task start or a wake-up running cold code, and W3 (1,000 messages/s, end to end)
spent ~160-200 us p50 between stamping a message and writing it.

* Per message, nothing is done when the answer comes: a send's SendResult is made from its
  flight's answer and its index in the request only when asked for (``send`` returns it,
  ``PendingSend.result()`` makes it). A submitted send is its own entry (``PendingSend``
  is a ``QueuedSend``): one object per message.

* Order: one request in flight per lane and a FIFO lane keep the order of the sends that
  joined the lane; the broker stores a batch in order, in one queue.
* Errors: a batch is stored whole or not at all, so a failed request fails each of its
  sends with the same error, and the producer retries each as it would a lone send (nothing
  of that batch was acknowledged, so nothing is duplicated by the retry). A batch refused
  as ``MessageIllegal`` (one draft over the broker's limit) is sent again one draft per
  request, so only the illegal message fails.
* Time: ``send_timeout_ms`` bounds each request, not the wait in the lane before it (at
  most one request ahead of it, itself bounded).
* Cancellation: a send cancelled before its flight was taken is dropped from it; one
  cancelled after that just does not see the answer (the message may be stored): no send's
  task waits for a request on the others' behalf (answers come through callbacks). A send
  cancelled at its schedule point still has the lane's request sent for the others. The
  drain tasks run in the producer's task group under its guard: only closing the producer
  cancels them, and then every send still waiting fails with ConnectionClosed (requests
  answered through callbacks fail with the connection's ConnectionClosed as it closes).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Any, Final, final

import anyio
from anyio.lowlevel import checkpoint

from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._message import SendResult
from tidemq.client._pool import BrokerPool
from tidemq.client._routes import MessageQueue
from tidemq.common.ids import encode_message_ids
from tidemq.errors import MessageIllegal, TideError
from tidemq.net import ConnectionClosed
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Response
from tidemq.protocol.exceptions import LocalProtocolError

logger = logging.getLogger("tidemq.client.producer")

DEFAULT_BATCH_MAX_MESSAGES: Final = 256
DEFAULT_BATCH_MAX_BYTES: Final = 1024 * 1024
"""Well under the broker's default append_batch_bytes_max (4 MiB) and the 16 MiB frame."""


class QueuedSend:
    """One send waiting in a lane, as part of a flight: awaited by its ``send()`` (through
    the flight's event), or a ``PendingSend`` (``Producer.submit``, a subclass), whose
    flight is handed to the batcher's ``on_answered`` once answered.

    Nothing is set per send when its request is answered: the answer is the flight's
    (``_flight.answer``, a ``SendAnswer``), and the send's SendResult is made from it and
    ``_index`` only when asked for. ``_error`` is set when the request failed."""

    __slots__ = ("_draft", "_error", "_flight", "_index", "unique_id")

    def __init__(self, draft: bytes, unique_id: str) -> None:
        self._draft = draft
        self.unique_id = unique_id
        self._error: BaseException | None = None
        self._flight: Flight | None = None
        """The flight it joined (the one whose request stored it, after a split)."""
        self._index = 0
        """Its position in its flight's request; ``ABANDONED``: cancelled before the flight
        was taken (the drain skips it)."""


ABANDONED: Final = -1


@final
class SendAnswer:
    """A SEND_MESSAGE / SEND_BATCH answer, checked: each message's SendResult on demand
    (``result``), or all of them (``results``)."""

    __slots__ = ("broker", "commit_offsets", "first_offset", "msg_ids", "prefix", "queue_id",
                 "timestamp_ms", "topic")

    def __init__(self, topic: str, broker: str, response: Response, count: int) -> None:
        """Raises TideError if the answer is malformed or does not name ``count`` records."""
        fields = response.fields
        queue_id = fields.get("queue_id")
        first_offset = fields.get("first_queue_offset")
        prefix = fields.get("msg_id_prefix")
        commit_offsets = fields.get("commit_offsets")
        timestamp_ms = fields.get("store_timestamp_ms")
        if not (isinstance(queue_id, int) and isinstance(first_offset, int)
                and isinstance(prefix, str) and isinstance(commit_offsets, list)
                and isinstance(timestamp_ms, int) and len(commit_offsets) == count
                and valid_commit_offsets(commit_offsets)):
            raise TideError(f"the broker's send answer is malformed: {dict(fields)!r}")
        self.topic = topic
        self.broker = broker
        self.queue_id = queue_id
        self.first_offset = first_offset
        self.prefix = prefix
        self.commit_offsets: list[int] = commit_offsets
        self.timestamp_ms = timestamp_ms
        self.msg_ids: list[str] | None = None
        """Made by the first ``result``."""

    def result(self, index: int, unique_id: str) -> SendResult:
        """The SendResult of the message at ``index`` of the request. The first call makes
        every message id of the request at once (``encode_message_ids``, in bulk): those
        asking for one result usually ask for all."""
        msg_ids = self.msg_ids
        if msg_ids is None:
            msg_ids = self.msg_ids = encode_message_ids(self.prefix, self.commit_offsets)
        return SendResult(msg_ids[index], unique_id, self.topic, self.queue_id,
                          self.first_offset + index, self.broker, self.timestamp_ms)

    def results(self, unique_ids: list[str]) -> list[SendResult]:
        """Every message's SendResult, in order (one per unique id)."""
        count = len(unique_ids)
        if count != len(self.commit_offsets):
            raise ValueError("one unique id per message")
        first = self.first_offset
        # map over C iterators: no Python frame per message but SendResult's __init__
        return list(map(SendResult, encode_message_ids(self.prefix, self.commit_offsets),
                        unique_ids, repeat(self.topic, count), repeat(self.queue_id, count),
                        range(first, first + count), repeat(self.broker, count),
                        repeat(self.timestamp_ms, count)))


@final
class Flight:
    """The sends that will go out together as one request, and the one event that tells
    them all it is answered (one event per request, not per send: an event costs several
    microseconds, which at 30 sends a request was a fifth of a send's cost). The event is
    made only when an awaiting ``send()`` joins; for submitted sends (``notify``) the
    batcher's ``on_answered`` gets the whole flight, once."""

    __slots__ = ("abandoned", "answer", "done", "max_bytes", "max_messages", "notify", "size",
                 "taken", "target", "waiters")

    def __init__(self, target: MessageQueue, max_messages: int, max_bytes: int) -> None:
        self.target = target
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.waiters: list[QueuedSend] = []
        self.size = 0
        self.taken = False
        """Handed to a request (or its lane closed): its sends can no longer be withdrawn,
        and no send joins it any more."""
        self.done: anyio.Event | None = None
        self.notify = False
        """Some of its sends are submitted ones: call ``on_answered`` when it is done."""
        self.abandoned = False
        """Some ``send()`` of it was cancelled before it was taken."""
        self.answer: SendAnswer | None = None
        """Set when its request succeeded."""

    def try_add(self, entry: QueuedSend) -> bool:
        """Add a submitted ``entry`` if this flight is still being gathered and has room for
        it; False, and nothing done, if not."""
        waiters = self.waiters
        size = self.size + len(entry._draft)
        if self.taken or len(waiters) >= self.max_messages or size > self.max_bytes:
            return False
        entry._index = len(waiters)
        entry._flight = self
        waiters.append(entry)
        self.size = size
        self.notify = True
        return True


@final
class _Lane:
    __slots__ = ("busy", "flights")

    def __init__(self) -> None:
        self.flights: deque[Flight] = deque()
        """Flights not yet taken, in order (the last one may still be gathering)."""
        self.busy = False
        """A request of the lane is in flight, or a drain task owns the lane (and will
        send what is queued): nobody else may send for it."""


OnAnswered = Callable[[MessageQueue, list[QueuedSend]], None]
"""Called once per answered (or failed) flight that holds submitted sends, with its
target and its sends (every one of them, awaited ones included)."""


def _ignore_answered(target: MessageQueue, entries: list[QueuedSend]) -> None:
    pass


@final
class SendBatcher:
    """Coalesces concurrent single sends per queue (see the module docstring)."""

    def __init__(self, pool: BrokerPool, owned: OwnedTaskGroup, *, group: str | None,
                 timeout_ms: int, max_messages: int = DEFAULT_BATCH_MAX_MESSAGES,
                 max_bytes: int = DEFAULT_BATCH_MAX_BYTES,
                 on_answered: OnAnswered = _ignore_answered) -> None:
        self._pool = pool
        self._owned = owned
        self._group = group
        self._timeout_ms = timeout_ms
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._on_answered = on_answered
        self._lanes: dict[MessageQueue, _Lane] = {}
        self._to_dispatch: deque[tuple[MessageQueue, _Lane]] = deque()
        self._dispatching = False
        self.requests = 0
        """Requests sent so far (for tests and statistics)."""

    def has_open_flight(self, target: MessageQueue) -> bool:
        """Whether a send to ``target`` now would join a request still being gathered."""
        flight = self._gathering(target)
        return flight is not None and flight.size < self.max_bytes

    def _gathering(self, target: MessageQueue) -> Flight | None:
        """The flight still being gathered for ``target``, if it takes another message."""
        lane = self._lanes.get(target)
        if lane is None or not lane.flights:
            return None
        flight = lane.flights[-1]
        if flight.taken or len(flight.waiters) >= self.max_messages:
            return None
        return flight

    async def send(self, target: MessageQueue, draft: bytes, unique_id: str) -> SendResult:
        """Send one draft to ``target`` with whatever else is waiting for that queue.

        Raises what the request raised (TideError), ConnectionClosed if the producer is
        closed meanwhile.
        """
        waiter = QueuedSend(draft, unique_id)
        flight, lane = self._join(target, waiter)
        done = flight.done
        if done is None:
            done = flight.done = anyio.Event()
        if not lane.busy:
            # An idle lane: the request goes from this task, after one schedule point that
            # lets the sends started with this one (the other tasks of this scheduler pass)
            # join it.
            try:
                await checkpoint()
            except BaseException:
                if not flight.taken:
                    waiter._index = ABANDONED
                    flight.abandoned = True
                if not lane.busy:
                    self._pump(target, lane)  # the others' request still goes
                raise
            if not lane.busy:
                self._pump(target, lane)
        try:
            await done.wait()
        except BaseException:
            if not flight.taken:
                waiter._index = ABANDONED
                flight.abandoned = True
            raise
        if waiter._error is not None:
            raise waiter._error.with_traceback(None)
        answer = waiter._flight.answer if waiter._flight is not None else None
        assert answer is not None
        return answer.result(waiter._index, unique_id)

    def enqueue(self, target: MessageQueue, entry: QueuedSend) -> Flight:
        """Like ``send`` without waiting, for a submitted send: once its request is
        answered, ``on_answered`` gets its flight, with ``entry._error`` set if the request
        failed. Returns the flight it joined: later submitted sends may join it too
        (``Flight.try_add``) while it is being gathered. Raises RuntimeError if the
        producer is closed."""
        flight, lane = self._join(target, entry)
        flight.notify = True
        if not lane.busy:
            # Not sent from here: the submitting task goes on handing messages over, and
            # they join this request until the dispatch pass runs.
            self._dispatch_soon(target, lane)
        return flight

    def _dispatch_soon(self, target: MessageQueue, lane: _Lane) -> None:
        """Have the next dispatch pass send the idle lane's request. One task sends every
        lane handed over until it runs: a submitting task spread over many queues (16
        topics x 8 queues in W6) used to start a drain task per queue, ~one per message."""
        lane.busy = True
        self._to_dispatch.append((target, lane))
        if self._dispatching:
            return
        try:
            self._owned.task_group.start_soon(self._dispatch, name="tidemq.producer.dispatch")
        except RuntimeError:  # the producer is closed
            self._fail_to_dispatch()
            return
        self._dispatching = True

    async def _dispatch(self) -> None:
        """The dispatch pass: each lane handed over goes on from ``_pump`` (its request
        sent through a callback, or by a drain task when it has to wait)."""
        try:
            with self._owned.guard():
                while self._to_dispatch:
                    target, lane = self._to_dispatch.popleft()
                    lane.busy = False
                    self._pump(target, lane)
        finally:
            self._dispatching = False
            self._fail_to_dispatch()  # left only when closed (cancelled) meanwhile

    def _fail_to_dispatch(self) -> None:
        while self._to_dispatch:
            target, lane = self._to_dispatch.popleft()
            lane.busy = False
            self._fail_lane(target, lane, None)

    def _join(self, target: MessageQueue, waiter: QueuedSend) -> tuple[Flight, _Lane]:
        """Put ``waiter`` in the flight being gathered for ``target`` (or a new one)."""
        draft = waiter._draft
        lane = self._lanes.get(target)
        if lane is None:
            _ = self._owned.task_group  # raises once the producer is closed
            lane = self._lanes[target] = _Lane()
        flight = self._gathering(target)
        if flight is None or (flight.waiters and flight.size + len(draft) > self.max_bytes):
            flight = Flight(target, self.max_messages, self.max_bytes)
            lane.flights.append(flight)
        waiter._index = len(flight.waiters)
        waiter._flight = flight
        flight.waiters.append(waiter)
        flight.size += len(draft)
        return flight, lane

    def _take(self, lane: _Lane) -> tuple[Flight, list[QueuedSend]] | None:
        """Take the lane's next flight with sends still wanted, and those sends (``_index``
        their positions in the request); flights left empty by cancelled sends are
        finished on the way. None when no flight is left."""
        flights = lane.flights
        while flights:
            flight = flights.popleft()
            flight.taken = True
            batch = flight.waiters
            if flight.abandoned:
                batch = [w for w in batch if w._index != ABANDONED]
                for index, waiter in enumerate(batch):
                    waiter._index = index
            if batch:
                return flight, batch
            self._finish(flight)
        return None

    def _pump(self, target: MessageQueue, lane: _Lane) -> None:
        """Send the next request of an idle lane (``busy`` not set) from the calling task,
        answered through a callback (``_answered``); when it cannot go without waiting (no
        connection yet, no room on it), a drain task sends it. With nothing left, the lane
        is dropped."""
        taken = self._take(lane)
        if taken is None:
            if self._lanes.get(target) is lane:
                del self._lanes[target]
            return
        flight, batch = taken
        lane.busy = True
        if self._request_nowait(target, lane, flight, batch):
            return
        lane.busy = False
        self._start_drain(target, lane, taken)

    def _start_drain(self, target: MessageQueue, lane: _Lane,
                     taken: tuple[Flight, list[QueuedSend]] | None) -> None:
        """Hand the lane (and ``taken``, a flight taken already) to a drain task."""
        lane.busy = True
        try:
            self._owned.task_group.start_soon(self._drain, target, lane, taken,
                                              name=f"tidemq.producer.lane {target}")
        except RuntimeError:  # the producer is closed
            lane.busy = False
            self._fail_lane(target, lane, taken[0] if taken is not None else None)

    def _request_nowait(self, target: MessageQueue, lane: _Lane, flight: Flight,
                        batch: list[QueuedSend]) -> bool:
        """Send ``batch`` as one request now, its outcome handled by ``_answered``; False,
        nothing sent, when it would have to wait."""
        try:
            sent = self._pool.call_nowait(
                target.broker, *self._request(target, batch),
                lambda response, error: self._answered(target, lane, flight, batch, response,
                                                       error),
                timeout_ms=self._timeout_ms)
        except LocalProtocolError:  # cannot be encoded: the awaited path reports it
            return False
        if sent is None:
            return False
        self.requests += 1
        return True

    def _request(self, target: MessageQueue, batch: list[QueuedSend]
                 ) -> tuple[RequestCode, dict[str, str | int], bytes]:
        count = len(batch)
        code = RequestCode.SEND_MESSAGE if count == 1 else RequestCode.SEND_BATCH
        fields: dict[str, str | int] = {"topic": target.topic, "queue_id": target.queue_id}
        if self._group is not None:
            fields["producer_group"] = self._group
        body = batch[0]._draft if count == 1 else b"".join([w._draft for w in batch])
        return code, fields, body

    def _answered(self, target: MessageQueue, lane: _Lane, flight: Flight,
                  batch: list[QueuedSend], response: Response | None,
                  error: TideError | None) -> None:
        """The outcome of a request sent by ``_request_nowait`` (on the connection's reader
        or timer task): settle its flight and send the lane's next request."""
        if response is not None:
            try:
                flight.answer = SendAnswer(target.topic, target.broker, response, len(batch))
            except TideError as malformed:
                error = malformed
        if error is not None:
            if isinstance(error, MessageIllegal) and len(batch) > 1:
                self._start_drain_split(target, lane, flight, batch, error)
                return
            for waiter in batch:  # each waiter raises it as its own
                waiter._error = error
        self._finish(flight)
        lane.busy = False
        self._pump(target, lane)

    def _start_drain_split(self, target: MessageQueue, lane: _Lane, flight: Flight,
                           batch: list[QueuedSend], error: MessageIllegal) -> None:
        try:
            self._owned.task_group.start_soon(self._drain_split, target, lane, flight, batch,
                                              error, name=f"tidemq.producer.lane {target}")
        except RuntimeError:  # the producer is closed
            lane.busy = False
            self._fail_lane(target, lane, flight)

    async def _drain_split(self, target: MessageQueue, lane: _Lane, flight: Flight,
                           batch: list[QueuedSend], error: MessageIllegal) -> None:
        """A batch refused as illegal: one request per draft (``_split``), then the lane's
        next request."""
        unfinished: Flight | None = flight
        try:
            with self._owned.guard():
                await self._split(flight, batch, error)
                self._finish(flight)
                unfinished = None
                lane.busy = False
                self._pump(target, lane)
        finally:
            if unfinished is not None:
                lane.busy = False
                self._fail_lane(target, lane, unfinished)

    async def _drain(self, target: MessageQueue, lane: _Lane,
                     taken: tuple[Flight, list[QueuedSend]] | None) -> None:
        """Own the lane (``busy``): send what it holds (``taken`` first), one request at a
        time, awaiting each, until it is empty or a request could go out answered through
        a callback (which then goes on with the lane)."""
        unanswered: Flight | None = None
        handed_on = False
        try:
            with self._owned.guard():
                while True:
                    if taken is None:
                        taken = self._take(lane)
                        if taken is None:
                            break
                        if self._request_nowait(target, lane, *taken):
                            handed_on = True  # the lane stays busy: _answered goes on
                            return
                    unanswered, batch = taken
                    taken = None
                    await self._flush(unanswered, batch)
                    self._finish(unanswered)
                    unanswered = None
                lane.busy = False
                if self._lanes.get(target) is lane:
                    del self._lanes[target]
                handed_on = True
        finally:
            if not handed_on:  # closed (cancelled) while sending, or before
                lane.busy = False
                self._fail_lane(target, lane, unanswered if unanswered is not None else
                                taken[0] if taken is not None else None)

    def _fail_lane(self, target: MessageQueue, lane: _Lane, flight: Flight | None) -> None:
        """The producer closed: fail ``flight`` (taken, unanswered) and every flight still
        in the lane with ConnectionClosed, and drop the lane."""
        # No await between here and the end: a send arriving later finds no lane.
        if self._lanes.get(target) is lane:
            del self._lanes[target]
        closed = ConnectionClosed("the producer was closed before the broker answered")
        for unanswered in ((flight,) if flight is not None else ()) + tuple(lane.flights):
            unanswered.taken = True  # a submitted send holding it must not join it
            for waiter in unanswered.waiters:
                stored_by = waiter._flight
                if waiter._error is None and (stored_by is None or stored_by.answer is None):
                    waiter._error = closed
            self._finish(unanswered)
        lane.flights.clear()

    def _finish(self, flight: Flight) -> None:
        if flight.done is not None:
            flight.done.set()
        if flight.notify:
            flight.notify = False  # exactly once
            try:
                self._on_answered(flight.target, flight.waiters)
            except Exception:  # never leave the rest of the lane unanswered
                logger.exception("send_completion_failed")
        # Its sends keep the flight (for its answer) but it no longer keeps them: no
        # reference cycle per request is left for the garbage collector, whose passes
        # (~0.2 ms each, every ~140 messages in W3) were part of the latency tail.
        flight.waiters = []

    async def _flush(self, flight: Flight, batch: list[QueuedSend]) -> None:
        """One request for ``batch`` (the sends of ``flight`` still wanted, ``_index``
        their positions in it), awaited; its answer goes to ``flight.answer``, or its error
        to each send."""
        target = flight.target
        code, fields, body = self._request(target, batch)
        self.requests += 1
        try:
            response = await self._pool.call(target.broker, code, fields, body,
                                             timeout_ms=self._timeout_ms)
            flight.answer = SendAnswer(target.topic, target.broker, response, len(batch))
        except MessageIllegal as error:
            await self._split(flight, batch, error)
        except Exception as error:  # each waiter raises it as its own
            for waiter in batch:
                waiter._error = error

    async def _split(self, flight: Flight, batch: list[QueuedSend], error: MessageIllegal
                     ) -> None:
        """``batch`` was refused as ``MessageIllegal``: find the illegal draft(s) with one
        request each, in order (a batch is stored whole or not at all)."""
        if len(batch) == 1:
            batch[0]._error = error
            return
        target = flight.target
        for waiter in batch:
            alone = Flight(target, 1, self.max_bytes)
            alone.taken = True
            alone.waiters.append(waiter)
            waiter._flight = alone
            waiter._index = 0
            await self._flush(alone, [waiter])


def valid_commit_offsets(commit_offsets: list[Any]) -> bool:
    """Whether each of ``commit_offsets`` is an integer that fits a message id."""
    if not commit_offsets:
        return True
    if not set(map(type, commit_offsets)) <= _INT_TYPES:
        return False
    return bool(min(commit_offsets) >= 0 and max(commit_offsets) < 2**64)


_INT_TYPES: Final = frozenset({int, bool})


def send_results(topic: str, broker: str, response: Response, unique_ids: list[str]
                 ) -> list[SendResult]:
    """The SendResults of a SEND_MESSAGE / SEND_BATCH answer, one per unique id. Raises
    TideError if the answer is malformed."""
    return SendAnswer(topic, broker, response, len(unique_ids)).results(unique_ids)
