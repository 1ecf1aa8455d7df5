"""Natural batching of single sends: concurrent ``send()`` calls to one queue share requests.

Each (broker, topic, queue) has a *lane*: a FIFO of drafts waiting to go and at most one
request in flight. There is no linger: a send to an idle lane goes out at once (in a SEND_MESSAGE
of its own); sends that arrive while a request of their lane is in flight wait, and go out
together as the next request (one SEND_BATCH), up to ``max_messages`` drafts and
``max_bytes`` of body::

    send() --> lane(queue).flights --> drain task (one per busy lane, exits when idle)
                 (the last flight that      |  one SEND_BATCH per flight, in order
                  has room, or a new one)   +-- each waiter gets its SendResult
                                                (first_queue_offset + its index) or the
                                                error; one event wakes the whole flight
                                                (``send``), or its ``on_done`` is called
                                                (``enqueue``, for ``Producer.submit``)

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
  cancelled after that just does not see the answer (the message may be stored).
  The drain tasks run in the producer's task group under its guard: only closing the
  producer cancels them, and then every send still waiting fails with ConnectionClosed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Final, final

import anyio

from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._message import SendResult
from tidemq.client._pool import BrokerPool
from tidemq.client._routes import MessageQueue
from tidemq.common.ids import encode_message_ids
from tidemq.errors import MessageIllegal, TideError
from tidemq.net import ConnectionClosed
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Response

logger = logging.getLogger("tidemq.client.producer")

DEFAULT_BATCH_MAX_MESSAGES: Final = 256
DEFAULT_BATCH_MAX_BYTES: Final = 1024 * 1024
"""Well under the broker's default append_batch_bytes_max (4 MiB) and the 16 MiB frame."""


@final
class QueuedSend:
    """One send waiting in a lane, as part of a flight: either awaited by its ``send()``
    (through the flight's event) or, for ``Producer.submit``, handed to ``on_done``."""

    __slots__ = ("abandoned", "context", "draft", "error", "on_done", "result", "target",
                 "unique_id")

    def __init__(self, draft: bytes, unique_id: str,
                 on_done: Callable[[QueuedSend], None] | None = None,
                 context: object = None) -> None:
        self.draft = draft
        self.unique_id = unique_id
        self.result: SendResult | None = None
        self.error: BaseException | None = None
        self.abandoned = False
        """Cancelled before its flight was taken: the drain skips it."""
        self.on_done = on_done
        """Called once with this entry when its request is answered (submitted sends)."""
        self.context = context
        """Whatever ``on_done`` needs to know (the producer's PendingSend)."""
        self.target: MessageQueue | None = None
        """The queue whose lane it joined."""


@final
class _Flight:
    """The sends that will go out together as one request, and the one event that tells
    them all it is answered (one event per request, not per send: an event costs several
    microseconds, which at 30 sends a request was a fifth of a send's cost). The event is
    made only when an awaiting ``send()`` joins; submitted sends get their ``on_done``."""

    __slots__ = ("done", "size", "taken", "waiters")

    def __init__(self) -> None:
        self.waiters: list[QueuedSend] = []
        self.size = 0
        self.taken = False
        """Handed to a request: its sends can no longer be withdrawn."""
        self.done: anyio.Event | None = None

    def finish(self) -> None:
        if self.done is not None:
            self.done.set()
        for waiter in self.waiters:
            on_done = waiter.on_done
            if on_done is not None:
                waiter.on_done = None  # exactly once
                try:
                    on_done(waiter)
                except Exception:  # never leave the rest of the flight unanswered
                    logger.exception("send_completion_failed")


@final
class _Lane:
    __slots__ = ("flights",)

    def __init__(self) -> None:
        self.flights: deque[_Flight] = deque()


@final
class SendBatcher:
    """Coalesces concurrent single sends per queue (see the module docstring)."""

    def __init__(self, pool: BrokerPool, owned: OwnedTaskGroup, *, group: str | None,
                 timeout_ms: int, max_messages: int = DEFAULT_BATCH_MAX_MESSAGES,
                 max_bytes: int = DEFAULT_BATCH_MAX_BYTES) -> None:
        self._pool = pool
        self._owned = owned
        self._group = group
        self._timeout_ms = timeout_ms
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._lanes: dict[MessageQueue, _Lane] = {}
        self.requests = 0
        """Requests sent so far (for tests and statistics)."""

    def has_open_flight(self, target: MessageQueue) -> bool:
        """Whether a send to ``target`` now would join a request still being gathered."""
        flight = self._gathering(target)
        return flight is not None and flight.size < self._max_bytes

    def _gathering(self, target: MessageQueue) -> _Flight | None:
        """The flight still being gathered for ``target``, if it takes another message."""
        lane = self._lanes.get(target)
        if lane is None or not lane.flights:
            return None
        flight = lane.flights[-1]
        if flight.taken or len(flight.waiters) >= self._max_messages:
            return None
        return flight

    async def send(self, target: MessageQueue, draft: bytes, unique_id: str) -> SendResult:
        """Send one draft to ``target`` with whatever else is waiting for that queue.

        Raises what the request raised (TideError), ConnectionClosed if the producer is
        closed meanwhile.
        """
        waiter = QueuedSend(draft, unique_id)
        flight = self._join(target, waiter)
        done = flight.done
        if done is None:
            done = flight.done = anyio.Event()
        try:
            await done.wait()
        except BaseException:
            if not flight.taken:
                waiter.abandoned = True
            raise
        if waiter.error is not None:
            raise waiter.error.with_traceback(None)
        assert waiter.result is not None
        return waiter.result

    def enqueue(self, target: MessageQueue, entry: QueuedSend) -> None:
        """Like ``send`` without waiting, for an entry with ``on_done``: it is called once
        the request is answered, with ``entry.result`` or ``entry.error`` set. Raises
        RuntimeError if the producer is closed."""
        self._join(target, entry)

    def join_open(self, target: MessageQueue, entry: QueuedSend) -> bool:
        """``enqueue`` if a request for ``target`` is still being gathered and has room
        (``has_open_flight``); False, and nothing done, if not."""
        flight = self._gathering(target)
        if flight is None or flight.size + len(entry.draft) > self._max_bytes:
            return False
        _add(flight, target, entry)
        return True

    def _join(self, target: MessageQueue, waiter: QueuedSend) -> _Flight:
        """Put ``waiter`` in the flight being gathered for ``target`` (or a new one)."""
        draft = waiter.draft
        lane = self._lanes.get(target)
        if lane is None:
            task_group = self._owned.task_group  # raises once the producer is closed
            lane = self._lanes[target] = _Lane()
            task_group.start_soon(self._drain, target, lane,
                                  name=f"tidemq.producer.lane {target}")
        flight = self._gathering(target)
        if flight is None or (flight.waiters and flight.size + len(draft) > self._max_bytes):
            flight = _Flight()
            lane.flights.append(flight)
        _add(flight, target, waiter)
        return flight

    async def _drain(self, target: MessageQueue, lane: _Lane) -> None:
        """Send what the lane holds, one request at a time, until it is empty."""
        flight: _Flight | None = None
        try:
            with self._owned.guard():
                while lane.flights:
                    flight = lane.flights.popleft()
                    flight.taken = True
                    batch = [w for w in flight.waiters if not w.abandoned]
                    if batch:
                        await self._flush(target, batch)
                    flight.finish()
                    flight = None
        finally:
            # No await between the last emptiness check and here: a send arriving later
            # finds no lane and starts a new drain.
            if self._lanes.get(target) is lane:
                del self._lanes[target]
            closed = ConnectionClosed("the producer was closed before the broker answered")
            for unanswered in ((flight,) if flight is not None else ()) + tuple(lane.flights):
                for waiter in unanswered.waiters:
                    if waiter.result is None and waiter.error is None:
                        waiter.error = closed
                unanswered.finish()
            lane.flights.clear()

    async def _flush(self, target: MessageQueue, batch: list[QueuedSend]) -> None:
        """One request for ``batch``; every waiter of it gets its result or the error."""
        code = RequestCode.SEND_MESSAGE if len(batch) == 1 else RequestCode.SEND_BATCH
        fields: dict[str, str | int] = {"topic": target.topic, "queue_id": target.queue_id}
        if self._group is not None:
            fields["producer_group"] = self._group
        body = batch[0].draft if len(batch) == 1 else b"".join(w.draft for w in batch)
        self.requests += 1
        try:
            response = await self._pool.call(target.broker, code, fields, body,
                                             timeout_ms=self._timeout_ms)
            results = send_results(target.topic, target.broker, response,
                                   [waiter.unique_id for waiter in batch])
        except MessageIllegal as error:
            if len(batch) == 1:
                batch[0].error = error
                return
            for waiter in batch:  # find the illegal one(s): one request each, in order
                await self._flush(target, [waiter])
            return
        except Exception as error:  # each waiter raises it as its own
            for waiter in batch:
                waiter.error = error
            return
        for waiter, result in zip(batch, results, strict=True):
            waiter.result = result


def _add(flight: _Flight, target: MessageQueue, entry: QueuedSend) -> None:
    flight.waiters.append(entry)
    flight.size += len(entry.draft)
    entry.target = target


def send_results(topic: str, broker: str, response: Response, unique_ids: list[str]
                 ) -> list[SendResult]:
    """The SendResults of a SEND_MESSAGE / SEND_BATCH answer, one per unique id."""
    fields = response.fields
    queue_id = fields.get("queue_id")
    first_offset = fields.get("first_queue_offset")
    prefix = fields.get("msg_id_prefix")
    commit_offsets = fields.get("commit_offsets")
    timestamp_ms = fields.get("store_timestamp_ms")
    if not (isinstance(queue_id, int) and isinstance(first_offset, int)
            and isinstance(prefix, str) and isinstance(commit_offsets, list)
            and isinstance(timestamp_ms, int) and len(commit_offsets) == len(unique_ids)):
        raise TideError(f"the broker's send answer is malformed: {dict(fields)!r}")
    try:  # the broker names records by commit offset; the ids are made here
        msg_ids = encode_message_ids(prefix, commit_offsets)
    except (TypeError, ValueError):
        raise TideError(f"the broker's send answer is malformed: {dict(fields)!r}") from None
    # positional: one of these per message sent, and keywords cost a third more
    return [SendResult(msg_id, unique_id, topic, queue_id, offset, broker, timestamp_ms)
            for offset, msg_id, unique_id in zip(range(first_offset, first_offset + len(msg_ids)),
                                                 msg_ids, unique_ids, strict=True)]
