"""The consumer: join a group, take queues, pull, hand messages out, commit what is done.

Theory of operation (the parts live in their own modules)::

    Consumer (this module)        the API: async with / async for / receive / run
      ├── Rebalancer              heartbeats, routes, members, allocation   (_rebalance)
      ├── ConsumerCore            workers, inbox, settling, commits          (_core)
      │     ├── QueueWorker (N)   one long-polling task per assigned queue  (_queue_worker)
      │     │     └── QueueTracker  lowest offset not yet done              (_tracker)
      │     └── OffsetKeeper      start offsets, COMMIT_OFFSET               (_offsets)
      └── BrokerPool              one connection per broker                  (_pool)

Clustering (the default): the group's members divide the queues of the subscribed topics
(and of the group's retry topic) among themselves; each message goes to one member.
Broadcast: every consumer takes every queue and keeps its own offsets, in memory.

Delivery is at least once, in order per queue as pulled. Concurrent mode hands out up to
``prefetch_per_queue`` messages of a queue at once, to any number of receivers; orderly
mode (``orderly=True``) locks each queue to one member and hands out one message of a
queue at a time, the next only once the previous is acked.

Resource handling: ``async with`` opens the consumer's task group (every task above lives
in it) and joins the group before the block starts, so the consumer holds its first queues
by then. Leaving stops the workers (orderly: waits a moment for messages in hand), commits
every queue's offset, unlocks (orderly), leaves the group (the others rebalance at once),
and closes the connections. Messages pulled but not yet acked are not committed: another
member or the next run delivers them again. All of that happens even when the block is
cancelled from outside (bounded by ``close_timeout_ms``; see ``_lifecycle``).

Group changes: members heartbeat every ``heartbeat_interval_ms`` (1 s by default) and
rebalance when the broker's membership version changes. A member that leaves cleanly
unregisters, so the others take its queues within a heartbeat; one that crashes holds its
queues until the broker expires it (30 s). While a queue changes hands, both members may
pull it for up to one heartbeat: that is where duplicates come from.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Self, final

import anyio

from tidemq.client._core import ConsumerCore, ConsumerStatistics
from tidemq.client._ids import default_client_id
from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._message import Message
from tidemq.client._namesrv import parse_namesrv, route_source
from tidemq.client._pool import BrokerPool, check_brokers
from tidemq.client._rebalance import Rebalancer
from tidemq.client._settings import ConsumerSettings, Mode, StartFrom, parse_topics
from tidemq.errors import InvalidArgument

logger = logging.getLogger("tidemq.client.consumer")


class ConsumerClosed(RuntimeError):
    """``receive()`` was called on a consumer that is closed (or closing)."""


@final
class Consumer:
    """A member of a consumer group. See the module docstring.

    Args:
        group: the consumer group (offsets and membership are per group).
        topics: ``{"orders": "created || paid"}`` (topic to tag expression), a list of
            topics, or one topic; ``"*"`` takes every tag.
        mode: ``"clustering"`` (members share the queues) or ``"broadcast"`` (everyone
            reads everything; offsets local).
        start_from: where a queue the group never committed starts: ``"earliest"``,
            ``"latest"`` or a Unix timestamp in milliseconds.
        orderly: one message per queue at a time, queues locked to one member.
        prefetch_per_queue: messages of a queue in flight (pulled, not done) before its
            pulling pauses.
        brokers / namesrv: where the brokers are: a list of broker addresses, or name
            servers (``"host:9876"``, ``"a:9876;b:9876"`` or a list) that know them.
        route_refresh_ms: with name servers, how often routes are asked again (also at
            once when a broker stops answering).
    """

    def __init__(
        self,
        group: str,
        topics: Mapping[str, str] | Sequence[str] | str,
        *,
        brokers: Sequence[str] | None = None,
        namesrv: str | Sequence[str] | None = None,
        mode: Mode = "clustering",
        start_from: StartFrom = "latest",
        orderly: bool = False,
        client_id: str | None = None,
        heartbeat_interval_ms: int = 1_000,
        pull_batch_size: int = 32,
        prefetch_per_queue: int = 256,
        suspend_ms: int = 15_000,
        commit_interval_ms: int = 1_000,
        lock_renew_interval_ms: int = 20_000,
        retry_delay_ms: int = 1_000,
        connect_timeout_ms: int = 3_000,
        request_timeout_ms: int = 10_000,
        broker_down_ms: int = 5_000,
        route_refresh_ms: int = 30_000,
    ) -> None:
        if orderly and mode != "clustering":
            raise InvalidArgument("orderly consumption needs mode='clustering'")
        settings = ConsumerSettings(
            group=group, client_id=client_id or default_client_id("consumer"),
            subscriptions=parse_topics(topics), mode=mode, orderly=orderly,
            start_from=start_from, heartbeat_interval_ms=heartbeat_interval_ms,
            pull_batch_size=pull_batch_size, prefetch_per_queue=prefetch_per_queue,
            suspend_ms=suspend_ms, commit_interval_ms=commit_interval_ms,
            lock_renew_interval_ms=lock_renew_interval_ms, retry_delay_ms=retry_delay_ms,
            request_timeout_ms=request_timeout_ms,
            span_per_queue_max=max(2_000, 4 * prefetch_per_queue))
        self.settings = settings
        namesrv_addresses = parse_namesrv(namesrv)
        self._pool = BrokerPool(check_brokers(brokers, namesrv_given=bool(namesrv_addresses)),
                                client_id=settings.client_id,
                                connect_timeout_ms=connect_timeout_ms,
                                request_timeout_ms=request_timeout_ms,
                                down_for_ms=broker_down_ms)
        self._source = route_source(self._pool, namesrv_addresses,
                                    client_id=settings.client_id,
                                    connect_timeout_ms=connect_timeout_ms,
                                    request_timeout_ms=request_timeout_ms)
        self._core = ConsumerCore(self._pool, settings)
        self._rebalancer = Rebalancer(self._core, self._source,
                                      route_refresh_ms=route_refresh_ms)
        self._owned = OwnedTaskGroup()
        self._closing = False

    @property
    def client_id(self) -> str:
        return self.settings.client_id

    @property
    def group(self) -> str:
        return self.settings.group

    def statistics(self) -> ConsumerStatistics:
        """Assigned queues and message counts, as of now."""
        return self._core.statistics()

    async def __aenter__(self) -> Self:
        task_group = await self._owned.enter()
        try:
            self._pool.bind(self._owned)
            self._source.bind(self._owned)
            self._core.bind(self._owned)
            await self._rebalancer.first_round()
            await task_group.start(self._rebalancer.run, name="tidemq.client.rebalance")
            task_group.start_soon(self._core.commit_loop, name="tidemq.client.commit")
        except BaseException:
            self._closing = True
            self._core.inbox.close()
            self._pool.close()
            self._source.close()
            await self._owned.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        """Leave the group and close; see the module docstring. The block's exception,
        if any, propagates as it is."""
        if self._closing:
            return
        self._closing = True
        with anyio.move_on_after(self.settings.close_timeout_ms / 1000, shield=True):
            await self._rebalancer.stop()
            await self._core.stop_all()
            await self._rebalancer.unregister()
        self._core.inbox.close()
        self._pool.close()
        self._source.close()
        await self._owned.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self._core.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def receive(self, max: int = 32, wait: float = 15) -> list[Message]:
        """Up to ``max`` messages; waits up to ``wait`` seconds for the first one.

        Returns an empty list when none arrived in time.

        Raises:
            ConsumerClosed: the consumer is closed.
        """
        if max < 1:
            raise InvalidArgument("max must be at least 1")
        messages: list[Message] = []
        try:
            with anyio.move_on_after(wait):
                messages.append(await self._core.receive())
        except anyio.EndOfStream:
            raise ConsumerClosed("the consumer is closed") from None
        if messages:
            self._core.receive_many_nowait(messages, max)
        return messages

    async def run(self, handler: Callable[[Message], Awaitable[object]], *,
                  concurrency: int = 16) -> None:
        """Call ``handler`` for every message, ``concurrency`` at a time, until cancelled
        (or the consumer closes). A handler that returns acks its message; one that raises
        nacks it (the error is logged, not raised: the message will come back)."""
        if concurrency < 1:
            raise InvalidArgument("concurrency must be at least 1")
        async with anyio.create_task_group() as task_group:
            for index in range(concurrency):
                task_group.start_soon(self._handle_messages, handler,
                                      name=f"tidemq.client.handler {index}")

    async def _handle_messages(self, handler: Callable[[Message], Awaitable[object]]) -> None:
        while True:
            try:
                message = await self._core.receive()
            except anyio.EndOfStream:
                return
            try:
                await handler(message)
            except Exception:
                logger.warning("handler_failed", exc_info=True, extra={
                    "topic": message.topic, "msg_id": message.msg_id})
                await message.nack()
            except BaseException:
                message.release_nowait()
                raise
            else:
                await message.ack()
