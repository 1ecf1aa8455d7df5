"""The consumer's shared state: queue workers, the inbox, settling and committing.

    Rebalancer --start_queue/stop_queue--> ConsumerCore --owns--> QueueWorker per queue
                                              |  inbox <--deliver-- workers
    application <--receive-- inbox            |
    application --ack/nack--> settle() -------+--> tracker.ack / SEND_BACK / redeliver
    commit loop (every commit_interval_ms) --> COMMIT_OFFSET of each moved tracker

Settling (concurrent mode): ack marks the offset done in the queue's tracker; nack sends the
message back to the broker (SEND_BACK stores a copy in the group's retry topic), then marks
it done; if the broker cannot take it, the message is delivered again locally after
``retry_delay_ms`` and stays undone. Broadcast consumers read no retry topic, so their nacks
are always redelivered locally. Release puts it back first in the inbox. In orderly mode
the queue worker waits on each message's settlement and decides (``_queue_worker``).

Committing: a worker's tracker says the lowest offset not yet done; the commit loop sends
it when it moved (pulls also carry it, so a busy queue rarely needs the loop). Losing a
queue commits it one last time; so does closing the consumer.

Every settle and every removal wakes the worker (``notify_progress``): it may have room to
pull again, or be draining.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast, final

import anyio
import anyio.abc
import anyio.lowlevel

from tidemq.client._inbox import Inbox
from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._message import Delivery, Message, Outcome, redelivery
from tidemq.client._offsets import OffsetKeeper
from tidemq.client._pool import BrokerPool
from tidemq.client._queue_worker import QueueWorker, WorkerState
from tidemq.client._routes import MessageQueue
from tidemq.client._settings import ConsumerSettings
from tidemq.client._tracker import QueueTracker
from tidemq.errors import TideError
from tidemq.protocol.codes import RequestCode

logger = logging.getLogger("tidemq.client.consumer")

SETTLE_YIELD_EVERY = 64
"""A local ack is a schedule point only once in this many settles (see ``settle``)."""


@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """A snapshot of a consumer (``Consumer.statistics()``)."""

    assigned_queues: tuple[MessageQueue, ...]
    buffered: int
    """Pulled messages waiting in the local inbox."""
    handed_out: int
    """Messages received by the application and not yet settled."""
    in_flight: int
    """Pulled and not yet done (buffered, handed out, or waiting for a redelivery)."""


@final
class ConsumerCore:
    """See the module docstring."""

    def __init__(self, pool: BrokerPool, settings: ConsumerSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.offsets = OffsetKeeper(pool, settings)
        self.workers: dict[MessageQueue, QueueWorker] = {}
        self.inbox: Inbox[Message] = Inbox()
        self.on_send_back: Callable[[], None] = lambda: None
        """Called after a successful SEND_BACK (the rebalancer looks for the retry topic)."""
        self._owner: OwnedTaskGroup | None = None
        self._settles_unyielded = 0

    def bind(self, owner: OwnedTaskGroup) -> None:
        self._owner = owner

    @property
    def owner(self) -> OwnedTaskGroup:
        assert self._owner is not None, "bound in Consumer.__aenter__"
        return self._owner

    def statistics(self) -> ConsumerStatistics:
        workers = list(self.workers.values())
        return ConsumerStatistics(
            assigned_queues=tuple(sorted(self.workers)), buffered=len(self.inbox),
            handed_out=sum(w.handed_out for w in workers),
            in_flight=sum(w.tracker.undone_count for w in workers))

    # -- queues --------------------------------------------------------------------------
    async def start_queue(self, queue: MessageQueue, *, discovered_late: bool) -> None:
        """Resolve the queue's offset and start its worker. Raises TideError."""
        if queue in self.workers:
            return
        offset = await self.offsets.resolve(queue, discovered_late=discovered_late)
        worker = QueueWorker(self, queue, QueueTracker(offset))
        await self.owner.task_group.start(worker.run, name=f"tidemq.client.queue {queue}")
        self.workers[queue] = worker
        logger.info("queue_started", extra={"queue": str(queue), "offset": offset})

    async def stop_queue(self, queue: MessageQueue, *, unlock: bool = True,
                         commit: bool = True) -> None:
        """Stop the queue's worker, then commit its offset (and unlock it, orderly)."""
        worker = self.workers.pop(queue, None)
        if worker is None:
            return
        settings = self.settings
        drain_timeout_ms = settings.drain_timeout_ms if settings.orderly and commit else 0
        with anyio.move_on_after(settings.close_timeout_ms / 1000, shield=True):
            await worker.stop(drain_timeout_ms)
            if commit:
                await self.commit_worker(worker)
            if settings.orderly and unlock:
                await self.unlock(queue)
        logger.info("queue_stopped", extra={"queue": str(queue),
                                            "offset": worker.committed_offset})

    async def resync_offsets(self) -> None:
        """Restart, from the group's committed offset, every running queue whose offset
        someone else moved (an operator's reset, or another member during a handover).

        Our own commits always lie between the worker's last confirmed commit and its
        tracker's commit point (a pull may have carried a newer one): an offset outside
        that range was written by someone else. The worker stops without committing, its
        messages in flight are forgotten (acking them is a no-op), and it starts again.
        """
        for queue, worker in list(self.workers.items()):
            try:
                committed = await self.offsets.committed(queue)
            except TideError as error:
                logger.info("offset_check_failed", extra={"queue": str(queue),
                                                          "error": error.remark})
                continue
            ours = worker.committed_offset <= committed <= worker.tracker.commit_offset
            if committed < 0 or ours or self.workers.get(queue) is not worker:
                continue
            logger.info("offset_moved_externally", extra={"queue": str(queue),
                                                          "offset": committed})
            await self.stop_queue(queue, unlock=False, commit=False)
            await self.start_queue(queue, discovered_late=False)

    async def stop_all(self) -> None:
        async with anyio.create_task_group() as task_group:
            for queue in list(self.workers):
                task_group.start_soon(self.stop_queue, queue)

    def worker_gone(self, worker: QueueWorker) -> None:
        """A worker ended by itself (its topic is gone)."""
        if self.workers.get(worker.queue) is worker:
            del self.workers[worker.queue]
        worker.state = WorkerState.DROPPED

    async def lock(self, queues: set[MessageQueue]) -> set[MessageQueue]:
        """LOCK_QUEUES (or renew) on each broker; the queues this consumer now holds."""
        held: set[MessageQueue] = set()
        for (broker, topic), queue_ids in _by_broker_topic(queues).items():
            try:
                response = await self.pool.call(broker, RequestCode.LOCK_QUEUES, {
                    "group": self.settings.group, "client_id": self.pool.client_id,
                    "topic": topic, "queue_ids": queue_ids})
            except TideError as error:
                logger.warning("lock_failed", extra={"broker": broker, "error": error.remark})
                continue
            locked = response.fields.get("locked")
            if isinstance(locked, list):
                held.update(MessageQueue(topic, broker, q) for q in locked if isinstance(q, int))
        return held

    async def unlock(self, queue: MessageQueue) -> None:
        try:
            await self.pool.call(queue.broker, RequestCode.UNLOCK_QUEUES, {
                "group": self.settings.group, "client_id": self.pool.client_id,
                "topic": queue.topic, "queue_ids": [queue.queue_id]})
        except TideError as error:
            logger.warning("unlock_failed", extra={"queue": str(queue), "error": error.remark})

    # -- delivery ------------------------------------------------------------------------
    def deliver(self, message: Message) -> None:
        self.inbox.put_nowait(message)

    def deliver_many(self, messages: list[Message]) -> None:
        if messages:
            self.inbox.put_many_nowait(messages)

    async def receive(self) -> Message:
        """The next deliverable message. Raises anyio.EndOfStream once closed."""
        while True:
            message = await self.inbox.get()
            if self._accept(message):
                return message

    def receive_nowait(self) -> Message | None:
        while (message := self.inbox.get_nowait()) is not None:
            if self._accept(message):
                return message
        return None

    def receive_many_nowait(self, messages: list[Message], max_count: int) -> None:
        """Append deliverable messages to ``messages`` (up to ``max_count`` in it) while
        there are some right now: ``receive_nowait`` and ``_accept`` inlined."""
        get = self.inbox.get_nowait
        append = messages.append
        active = WorkerState.ACTIVE
        while len(messages) < max_count and (message := get()) is not None:
            delivery = message._delivery
            assert delivery is not None
            worker = cast(QueueWorker, delivery.queue_worker)
            if worker.state is active:
                worker.handed_out += 1
                append(message)

    def _accept(self, message: Message) -> bool:
        worker = _worker_of(message)
        if worker.state is not WorkerState.ACTIVE:
            return False  # its queue went to another member, which delivers it again
        worker.handed_out += 1
        return True

    # -- settling (the Settler protocol of _message) --------------------------------------
    async def settle(self, message: Message, outcome: Outcome) -> None:
        # The outcome is recorded before anything can be cancelled, and an ack completes
        # without a cancel point: a cancelled caller must never leave a message neither
        # settled nor released (its queue's commits would stall behind it).
        delivery = message._delivery
        assert delivery is not None
        if outcome is Outcome.ACK and delivery.outcome is None and delivery.settled is None:
            # The common case, purely local and O(1): inlined _claim, no cancel point, and
            # a schedule point only every SETTLE_YIELD_EVERY settles (one costs more than
            # the ack itself), which still keeps an ack-only loop from starving the others.
            delivery.outcome = outcome
            worker = cast(QueueWorker, delivery.queue_worker)
            worker.handed_out -= 1
            if worker.state is not WorkerState.DROPPED:
                worker.tracker.ack(message.queue_offset)
            worker.notify_progress()
            self._settles_unyielded += 1
            if self._settles_unyielded < SETTLE_YIELD_EVERY:
                return
        else:
            claimed, worker = _claim(message, outcome)
            if claimed is not None:
                try:
                    if worker.state is WorkerState.DROPPED:
                        pass  # the queue moved on: its new owner delivers the message again
                    elif outcome is Outcome.ACK:
                        worker.tracker.ack(message.queue_offset)
                    elif outcome is Outcome.RELEASE:
                        if not self.settings.orderly:
                            self._redeliver_now(message, worker)
                    elif not self.settings.clustering:
                        self._redeliver_later(message, worker)  # no retry topic in broadcast
                    elif not self.settings.orderly:
                        await self._nack(message, worker)
                finally:
                    if claimed.settled is not None:
                        claimed.settled.set()
                    worker.notify_progress()
        self._settles_unyielded = 0
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def release_nowait(self, message: Message) -> None:
        delivery, worker = _claim(message, Outcome.RELEASE)
        if delivery is None:
            return
        if delivery.settled is not None:
            delivery.settled.set()  # orderly: the worker delivers it again
        elif worker.state is WorkerState.ACTIVE:
            self._redeliver_now(message, worker)
        worker.notify_progress()

    async def send_back(self, message: Message) -> bool:
        """SEND_BACK the message (to the retry topic, or dead letters past the maximum),
        then mark it done. False (logged) when the broker did not take it."""
        delivery = message._delivery
        assert delivery is not None
        try:
            await self.pool.call(message.broker, RequestCode.SEND_BACK, {
                "group": self.settings.group, "msg_id": delivery.stored_msg_id,
                "topic": delivery.stored_topic, "queue_id": message.queue_id,
                "queue_offset": message.queue_offset,
                "reconsume_times": message.reconsume_times},
                timeout_ms=self.settings.request_timeout_ms)
        except TideError as error:
            logger.warning("send_back_failed", extra={"msg_id": message.msg_id,
                                                       "error": error.remark})
            return False
        _worker_of(message).tracker.ack(message.queue_offset)
        self.on_send_back()
        return True

    async def _nack(self, message: Message, worker: QueueWorker) -> None:
        try:
            sent_back = await self.send_back(message)
        except BaseException:
            self._redeliver_later(message, worker)
            raise
        if not sent_back:
            self._redeliver_later(message, worker)

    def _redeliver_now(self, message: Message, worker: QueueWorker) -> None:
        self.inbox.put_front_nowait(_fresh_copy(message, worker, message.reconsume_times))

    def _redeliver_later(self, message: Message, worker: QueueWorker) -> None:
        if self.owner.closed:
            return  # not committed: the next run of the group delivers it again
        self.owner.task_group.start_soon(self._redeliver_after_delay, message, worker)

    async def _redeliver_after_delay(self, message: Message, worker: QueueWorker) -> None:
        with self.owner.guard():
            await anyio.sleep(self.settings.retry_delay_ms / 1000)
            if worker.state is WorkerState.ACTIVE:
                self.deliver(_fresh_copy(message, worker, message.reconsume_times + 1))

    # -- committing ----------------------------------------------------------------------
    async def commit_loop(self) -> None:
        with self.owner.guard():
            while True:
                await anyio.sleep(self.settings.commit_interval_ms / 1000)
                for worker in list(self.workers.values()):
                    if worker.state is WorkerState.ACTIVE:  # a stopping one commits itself
                        await self.commit_worker(worker)

    async def commit_worker(self, worker: QueueWorker) -> None:
        offset = worker.tracker.commit_offset
        if offset == worker.committed_offset:
            return
        if await self.offsets.commit(worker.queue, offset):
            worker.committed_offset = offset


def _worker_of(message: Message) -> QueueWorker:
    delivery = message._delivery
    assert delivery is not None
    return cast(QueueWorker, delivery.queue_worker)


def _claim(message: Message, outcome: Outcome) -> tuple[Delivery | None, QueueWorker]:
    """Record the first outcome of a delivery; (None, worker) when already settled."""
    delivery = message._delivery
    assert delivery is not None
    worker = cast(QueueWorker, delivery.queue_worker)
    if delivery.outcome is not None:
        return None, worker
    delivery.outcome = outcome
    worker.handed_out -= 1
    return delivery, worker


def _fresh_copy(message: Message, worker: QueueWorker, reconsume_times: int) -> Message:
    return redelivery(message, worker, reconsume_times)


def _by_broker_topic(queues: set[MessageQueue]) -> dict[tuple[str, str], list[int]]:
    grouped: dict[tuple[str, str], list[int]] = {}
    for queue in sorted(queues):
        grouped.setdefault((queue.broker, queue.topic), []).append(queue.queue_id)
    return grouped
