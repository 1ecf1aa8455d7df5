"""One task per assigned queue: long-poll it and feed the consumer's inbox.

Concurrent mode (the default)::

    loop: wait for room (undone < prefetch and span < span max)
          PULL_MESSAGE from tracker.next_offset, long-polling up to suspend_ms,
                       carrying commit_offset when it moved since the last commit
          [on the connection's reader task, as the answer arrives (BrokerPool.call_nowait):]
          keep records whose tag the subscription really matches (the broker filters by
                       tag hash, which can collide), record them in the tracker,
                       put them in the inbox, wake the worker
          if receivers were waiting for messages, yield once, so the ones just woken
                       run before the next pull goes out

Delivering from the reader task spares each pull answer a task switch before the receivers
see it (the worker's own wake-up comes after theirs). When the pull cannot go at once (no
connection yet, none of its room), the worker awaits it and delivers itself, as orderly
mode always does.

Orderly mode pulls the same way, then hands the queue's messages to the inbox one at a
time: the next goes only once the previous is settled. A nack waits ``retry_delay_ms`` and
delivers the same message again (``reconsume_times`` + 1) in its place, so order holds;
past ``max_reconsume_times`` it goes to SEND_BACK with that count, which the broker puts
in the group's dead-letter topic, and the queue moves on (if the broker cannot be reached,
local redelivery goes on). A release delivers it again at once.

Lifecycle: ``ACTIVE`` while assigned. ``stop()`` cancels the loop and moves to
``DRAINING``: nothing more is delivered (the inbox skips messages of a worker that is not
active), but acks of messages already handed out still count; orderly consumers wait up to
``drain_timeout_ms`` for those. Then ``DROPPED``: settling is a no-op and the consumer
commits the tracker's offset one last time.

Errors: pull failures are logged and retried after ``pull_backoff_ms`` (a broker that
comes back is picked up again). ``TopicNotFound`` ends the worker: the topic is gone and
the next rebalance drops the queue.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, final

import anyio
import anyio.abc
import anyio.lowlevel

from tidemq.client._message import (
    PROPERTY_ORIGIN_MSG_ID,
    PROPERTY_ORIGIN_TOPIC,
    Delivery,
    Message,
    Outcome,
    redelivery,
    stored_id_at,
)
from tidemq.client._routes import MessageQueue
from tidemq.client._tracker import QueueTracker
from tidemq.errors import ProtocolError, TideError, TopicNotFound
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import FieldValue, Response
from tidemq.protocol.record import (
    KEY_SEPARATOR,
    PROPERTY_KEYS,
    PROPERTY_TAGS,
    PROPERTY_UNIQUE_ID,
    PartsHeader,
    iter_record_parts,
)

if TYPE_CHECKING:
    from tidemq.client._core import ConsumerCore

logger = logging.getLogger("tidemq.client.queue_worker")

PULL_BYTES_MAX = 4 << 20


class WorkerState(enum.Enum):
    ACTIVE = "active"
    DRAINING = "draining"
    DROPPED = "dropped"


@final
class QueueWorker:
    """Pulls one queue for one consumer. See the module docstring."""

    def __init__(self, core: ConsumerCore, queue: MessageQueue, tracker: QueueTracker) -> None:
        self.core = core
        self.queue = queue
        self.tracker = tracker
        self.state = WorkerState.ACTIVE
        self.handed_out = 0
        """Messages received by the application and not yet settled."""
        self.committed_offset = tracker.commit_offset
        self._is_retry_queue = queue.topic == core.settings.retry_topic
        self._progress = anyio.Event()
        self._progress_waiting = 0
        self._scope = anyio.CancelScope()
        self._finished = anyio.Event()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            with self.core.owner.guard(), self._scope:
                task_status.started()
                if self.core.settings.orderly:
                    await self._run_orderly()
                else:
                    await self._run_concurrent()
        except TopicNotFound:
            logger.info("queue_gone", extra={"queue": str(self.queue)})
            self.core.worker_gone(self)
        finally:
            self._finished.set()

    def notify_progress(self) -> None:
        """Something was settled: wake the loop (room to pull) and ``stop`` (draining)."""
        if self._progress_waiting:
            self._progress.set()
            self._progress = anyio.Event()

    async def _wait_progress(self) -> None:
        self._progress_waiting += 1
        try:
            await self._progress.wait()
        finally:
            self._progress_waiting -= 1

    async def stop(self, drain_timeout_ms: int) -> None:
        """Stop pulling and delivering; wait (bounded) for handed-out messages to settle."""
        self._scope.cancel()
        self.state = WorkerState.DRAINING
        with anyio.move_on_after(drain_timeout_ms / 1000):
            while self.handed_out > 0:
                await self._wait_progress()
        await self._finished.wait()
        self.state = WorkerState.DROPPED

    def make_messages(self, parts: Iterable[tuple[PartsHeader, str, dict[str, str], bytes]]
                      ) -> list[Message]:
        """Messages of the pulled records the subscription really matches (the broker
        filters by tag hash, which can collide). One loop, no intermediate ``Record``: it
        runs for every message received. What ``message_from_record`` builds."""
        core = self.core
        broker = self.queue.broker
        retry = self._is_retry_queue
        subscriptions = core.settings.subscriptions
        messages: list[Message] = []
        append = messages.append
        # A pull's records mostly share their topic and store address: the subscription's
        # tags and the address part of the message id are looked up once per change.
        last_topic: str | None = None
        tags: frozenset[str] | None = None
        last_address = b""
        id_prefix = ""
        for header, topic, properties, body in parts:
            address = header[7]
            if address != last_address:
                msg_id = stored_id_at(address, header[5])
                id_prefix, last_address = msg_id[:-16], address
            else:
                msg_id = f"{id_prefix}{header[5]:016X}"
            stored_msg_id = msg_id
            stored_topic = topic
            if properties:  # a fresh dict: the SDK's own properties move to fields
                unique_id = properties.pop(PROPERTY_UNIQUE_ID, None)
                if properties:
                    tag = properties.pop(PROPERTY_TAGS, None)
                    keys_text = properties.pop(PROPERTY_KEYS, None)
                    keys: tuple[str, ...] = tuple(
                        key for key in keys_text.split(KEY_SEPARATOR) if key
                    ) if keys_text else ()
                    if retry:
                        topic = properties.pop(PROPERTY_ORIGIN_TOPIC, topic)
                        msg_id = properties.pop(PROPERTY_ORIGIN_MSG_ID, msg_id)
                else:
                    tag = None
                    keys = ()
            else:
                tag = unique_id = None
                keys = ()
            if topic != last_topic:
                subscription = subscriptions.get(topic)
                tags = None if subscription is None else subscription.tags
                last_topic = topic
            if tags is not None and tag not in tags:
                continue  # Subscription.matches, inlined
            append(Message(topic, body, tag, keys, msg_id, unique_id, header[3], header[4],
                           header[8], header[9], header[6], properties, broker,
                           Delivery(core, self, stored_topic, stored_msg_id)))
        return messages

    async def _run_concurrent(self) -> None:
        settings = self.core.settings
        deliver_many = self.core.deliver_many
        inbox = self.core.inbox
        checkpoint = anyio.lowlevel.checkpoint
        while True:
            await self._wait_for_room()
            room = settings.prefetch_per_queue - self.tracker.undone_count
            answer = await self._pull_delivering(min(settings.pull_batch_size, room))
            if answer is not None:  # the reader task delivered
                if answer.woke_receivers:
                    # The receivers it woke were woken with us: let them take the messages
                    # before the next pull is built and sent (see below).
                    await checkpoint()
                continue
            messages = await self._pull(min(settings.pull_batch_size, room))
            if messages:
                receivers_waiting = inbox.waiting
                deliver_many(messages)
                if receivers_waiting:
                    # Receivers first: the ones this delivery woke take the messages
                    # before the next pull is built and sent (on a mostly idle, cold event
                    # loop that is ~0.1 ms, and the send may wake the broker onto our
                    # core). Two schedule points, as Trio runs each batch of tasks in
                    # random order. Busy receivers (nobody waiting) gain nothing from it:
                    # the pull goes at once, keeping the prefetch pipeline full.
                    await checkpoint()
                    await checkpoint()

    async def _pull_delivering(self, max_count: int) -> _PullAnswer | None:
        """One long poll whose answer the connection's reader task turns into messages and
        delivers (``_answered``). None, and nothing sent, when the pull cannot go at once:
        the caller pulls with ``_pull`` then. Failures back off (TopicNotFound raises)."""
        offset = self.tracker.next_offset
        fields = self._pull_fields(offset, max_count)
        answer = _PullAnswer()
        sent = self.core.pool.call_nowait(
            self.queue.broker, RequestCode.PULL_MESSAGE, fields, b"",
            lambda response, error: self._answered(answer, fields, offset, response, error),
            timeout_ms=self.core.settings.pull_timeout_ms)
        if sent is None:
            return None
        try:
            await answer.done.wait()
        except BaseException:
            connection, opaque = sent
            connection.forget(opaque)  # stopped: a late answer is not delivered
            raise
        error = answer.error
        if error is not None:
            if isinstance(error, TopicNotFound):
                raise error
            logger.warning("pull_failed", extra={"queue": str(self.queue), "error": str(error)})
            await anyio.sleep(self.core.settings.pull_backoff_ms / 1000)
        return answer

    def _answered(self, answer: _PullAnswer, fields: dict[str, FieldValue], offset: int,
                  response: Response | None, error: TideError | None) -> None:
        """A pull's outcome, on the connection's reader (or timer) task: deliver what it
        brought, then wake the worker."""
        try:
            if response is not None and self.state is WorkerState.ACTIVE:
                try:
                    messages = self._accept(fields, offset, response)
                except (TideError, ProtocolError) as malformed:
                    error = malformed
                else:
                    if messages:
                        inbox = self.core.inbox
                        answer.woke_receivers = inbox.waiting > 0
                        self.core.deliver_many(messages)
            answer.error = error
        finally:
            answer.done.set()

    def _pull_fields(self, offset: int, max_count: int) -> dict[str, FieldValue]:
        settings = self.core.settings
        fields: dict[str, FieldValue] = {
            "group": settings.group, "topic": self.queue.topic, "queue_id": self.queue.queue_id,
            "offset": offset, "max_count": max(1, max_count), "max_bytes": PULL_BYTES_MAX,
            "expression": self._expression(), "suspend_ms": settings.suspend_ms,
        }
        commit_offset = self.tracker.commit_offset
        if settings.clustering and commit_offset != self.committed_offset:
            fields["commit_offset"] = commit_offset
        return fields

    async def _run_orderly(self) -> None:
        while True:
            for message in await self._pull(self.core.settings.pull_batch_size):
                await self._deliver_in_order(message)

    async def _deliver_in_order(self, message: Message) -> None:
        settings = self.core.settings
        while True:
            delivery = message._delivery
            assert delivery is not None
            settled = delivery.settled = anyio.Event()
            self.core.deliver(message)
            await settled.wait()
            if delivery.outcome is Outcome.ACK:
                return
            reconsume_times = message.reconsume_times
            if delivery.outcome is Outcome.NACK:
                if reconsume_times >= settings.max_reconsume_times and \
                        await self.core.send_back(message):
                    return
                reconsume_times += 1
                await anyio.sleep(settings.retry_delay_ms / 1000)
            message = redelivery(message, self, reconsume_times)

    async def _wait_for_room(self) -> None:
        settings = self.core.settings
        while (self.tracker.undone_count >= settings.prefetch_per_queue
               or self.tracker.span_count >= settings.span_per_queue_max):
            await self._wait_progress()

    async def _pull(self, max_count: int) -> list[Message]:
        """One long poll, awaited; the messages to deliver (may be none). Failures back
        off."""
        settings = self.core.settings
        offset = self.tracker.next_offset
        fields = self._pull_fields(offset, max_count)
        try:
            response = await self.core.pool.call(self.queue.broker, RequestCode.PULL_MESSAGE,
                                                 fields, timeout_ms=settings.pull_timeout_ms)
            return self._accept(fields, offset, response)
        except TopicNotFound:
            raise
        except (TideError, ProtocolError) as error:
            logger.warning("pull_failed", extra={"queue": str(self.queue), "error": str(error)})
            await anyio.sleep(settings.pull_backoff_ms / 1000)
            return []

    def _accept(self, fields: dict[str, FieldValue], offset: int, response: Response
                ) -> list[Message]:
        """The messages of a pull's SUCCESS answer (asked with ``fields`` from ``offset``),
        recorded in the tracker. Raises ProtocolError / TideError if the records are
        malformed."""
        pulled = response.body
        messages = self.make_messages(iter_record_parts(pulled))
        commit_offset = fields.get("commit_offset")
        if isinstance(commit_offset, int):
            self.committed_offset = max(self.committed_offset, commit_offset)
        next_offset = response.fields.get("next_offset")
        if not isinstance(next_offset, int) or next_offset < 0:
            next_offset = offset + _count_records(pulled)
        if next_offset < offset:  # the queue shrank under us (reset, data loss)
            logger.warning("pull_offset_moved_back", extra={
                "queue": str(self.queue), "offset": offset, "next_offset": next_offset})
            self.tracker.reset(next_offset)
            self.committed_offset = -1  # unknown now: the next commit round sends ours
            return []
        self.tracker.add([message.queue_offset for message in messages], next_offset)
        return messages

    def _expression(self) -> str:
        subscription = self.core.settings.subscriptions.get(self.queue.topic)
        return "*" if subscription is None else subscription.expression


@final
class _PullAnswer:
    """What the reader task tells a worker of its pull (``QueueWorker._answered``)."""

    __slots__ = ("done", "error", "woke_receivers")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: TideError | None = None
        self.woke_receivers = False


def _count_records(data: bytes | bytearray | memoryview) -> int:
    """How many records ``data`` holds (all decoded already, so well formed)."""
    count = position = 0
    while position < len(data):
        position += int.from_bytes(data[position:position + 4], "little")
        count += 1
    return count
