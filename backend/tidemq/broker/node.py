"""The broker node: one nursery that owns every service of a broker.

    Broker.run()
      ├── StoreService.run          store open/recovery, flusher, segment preparer, retention
      ├── net.serve(self.handle)     the RPC server (one task per connection)
      ├── _housekeeping             expire silent consumers, persist offsets and topics
      ├── NameServerLink.run        register with the name servers, heartbeat, deregister
      └── (later) replication, timing wheel, transaction checker

``handle`` dispatches each request to its processor by code (processors/); ``handle_now``
first offers it to an immediate processor, on the connection's reader task, when its code has
one (a send that needs no waiting is answered without a task). Shutdown is
cancellation: the store closes with a final flush, then offsets and topics are saved.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import final

import trio

from tidemq.broker.consumer_groups import ConsumerGroups
from tidemq.broker.long_polling import PullWaiters
from tidemq.broker.metadata import save_json
from tidemq.broker.namesrv_link import NameServerLink
from tidemq.broker.offsets import ConsumerOffsets
from tidemq.broker.queue_locks import QueueLocks
from tidemq.broker.store_service import StoreService
from tidemq.broker.topics import TopicManager
from tidemq.common.clock import Clock
from tidemq.common.ids import encode_message_id, message_id_prefix
from tidemq.common.units import KIB
from tidemq.config import TidemqConfig
from tidemq.errors import InvalidArgument, TideError
from tidemq.net import HANDLE_LATER, ConnectionOptions, HandleLater, ServerConnectionContext, serve
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Request, Response
from tidemq.protocol.record import compact_host, pack_host
from tidemq.protocol.routing import BrokerRegistration, TopicQueues
from tidemq.store import MessageStore, RecoveryReport

logger = logging.getLogger("tidemq.broker.node")

Processor = Callable[["Broker", Request, ServerConnectionContext], Awaitable[Response | None]]
ImmediateProcessor = Callable[["Broker", Request, ServerConnectionContext],
                              Response | HandleLater | None]

CONSUMER_EXPIRY_S = 30.0
HOUSEKEEPING_INTERVAL_S = 1.0
OFFSET_PERSIST_INTERVAL_S = 1.0  # bounds what a crash makes a group re-read
RECEIVE_SIZE_BYTES = 256 * KIB
"""Bytes a broker connection reads at a time. A producer's batch of 100 1 KiB messages is a
~120 KiB frame: read 64 KiB at a time (the connection default) it took 2-3 reads and a
partial-frame deadline each; at 256 KiB a sync-flush W1 cost the broker 7-8 us of CPU per
message instead of 10-11.5 (interleaved runs)."""


@dataclass(frozen=True, slots=True)
class BrokerStarted:
    """What ``run`` reports through ``task_status`` once it serves."""

    host: str
    port: int
    recovery: RecoveryReport

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@final
class Broker:
    def __init__(self, config: TidemqConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.store = MessageStore(config.store, clock=clock, host=config.broker.host,
                                  port=config.broker.port)
        self.store_service = StoreService(self.store)
        directory = self.store.directory
        self.topics = TopicManager(directory, auto_create=config.broker.auto_create_topics,
                                   default_queue_count=config.broker.default_queue_count)
        self.offsets = ConsumerOffsets(directory)
        self.groups = ConsumerGroups(CONSUMER_EXPIRY_S)
        self.queue_locks = QueueLocks()
        self.waiters = PullWaiters()
        self.host = config.broker.host
        self.port = config.broker.port
        self._host_compact = compact_host(pack_host(config.broker.host))
        self._message_id_prefix: tuple[int, str] = (-1, "")  # (port, prefix)
        self._round_robin: dict[str, int] = {}
        self._processors: dict[RequestCode, Processor] = {}
        self._immediate_processors: dict[RequestCode, ImmediateProcessor] = {}
        self._metadata_lock = trio.Lock()
        self._metadata_loaded = False  # never save tables that were not loaded
        self.namesrv: NameServerLink | None = None
        if config.broker.namesrv_addresses:
            self.namesrv = NameServerLink(config.broker.namesrv_addresses,
                                          config.broker.namesrv_heartbeat_interval_ms,
                                          self.registration)
        from tidemq.broker.processors import register_all

        register_all(self._processors, self._immediate_processors)

    async def run(self, *, task_status: trio.TaskStatus[BrokerStarted] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                recovery = await nursery.start(self.store_service.run)
                await trio.to_thread.run_sync(self._load_metadata)
                broker_config = self.config.broker
                options = ConnectionOptions(
                    max_in_flight_requests=broker_config.max_in_flight_requests,
                    frame_stall_timeout_ms=broker_config.frame_stall_timeout_ms,
                    receive_size_bytes=RECEIVE_SIZE_BYTES)
                identity = {"cluster": broker_config.cluster, "group": broker_config.group}
                addresses = await nursery.start(partial(
                    serve, self.handle, broker_config.host, broker_config.port,
                    options=options, hello_timeout_ms=broker_config.hello_timeout_ms,
                    hello_fields={"broker": identity}, on_closed=self._connection_closed,
                    immediate_handler=self.handle_now))
                host, port = addresses[0]
                if self.port == 0:  # bound to a free port (tests): ids must name the real one
                    self.port = port
                    self.store.port = port
                    self.store.log.store_port = port
                nursery.start_soon(self._housekeeping)
                if self.namesrv is not None:
                    await nursery.start(self.namesrv.run)
                task_status.started(BrokerStarted(host, port, recovery))
        finally:
            if self._metadata_loaded:  # a broker that failed to start must not erase them
                with trio.CancelScope(shield=True):
                    await self.persist_topics()
                    await self.persist_offsets()

    def registration(self) -> BrokerRegistration:
        """What this broker tells the name servers (role and epoch: a single replica leads
        epoch 0 until replica groups exist)."""
        topics = {name: TopicQueues(topic.read_queue_count, topic.write_queue_count,
                                    topic.permission)
                  for name, topic in self.topics.topics.items()}
        broker = self.config.broker
        return BrokerRegistration(broker.cluster, broker.group, f"{self.host}:{self.port}",
                                  "", "leader", 0, topics)

    def _load_metadata(self) -> None:
        os.makedirs(self.store.directory, exist_ok=True)
        self.topics.load()
        self.offsets.load()
        self._metadata_loaded = True

    async def persist_topics(self) -> None:
        """Save topic config now (admin changes are acknowledged after this). The snapshot
        is taken on the event loop; only the copy goes to the worker thread."""
        async with self._metadata_lock:
            snapshot = self.topics.snapshot()
            await trio.to_thread.run_sync(save_json, self.topics.path, snapshot)
        if self.namesrv is not None:
            self.namesrv.topics_changed()

    async def persist_offsets(self) -> None:
        """Save committed offsets if they changed. A failure (a full disk) is logged and
        retried on the next tick: it must not take the broker down."""
        async with self._metadata_lock:
            if not self.offsets.dirty:
                return
            snapshot = self.offsets.snapshot()
            self.offsets.dirty = False
            try:
                await trio.to_thread.run_sync(save_json, self.offsets.path, snapshot)
            except TideError as error:
                self.offsets.dirty = True
                logger.error("offsets not saved", extra={"remark": error.remark})

    async def _housekeeping(self) -> None:
        last_persist = trio.current_time()
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL_S)
            now = trio.current_time()
            for group, client_id in self.groups.expire(now):
                self.queue_locks.release_client(group, client_id)
                logger.info("consumer expired", extra={"group": group, "client": client_id})
            self.queue_locks.expire(now)
            if self.offsets.dirty and now - last_persist >= OFFSET_PERSIST_INTERVAL_S:
                await self.persist_offsets()
                last_persist = now

    def _connection_closed(self, context: ServerConnectionContext) -> None:
        """A client's connection ended: its consumers leave their groups at once (members
        rebalance now, not after the heartbeat expiry) and their queue locks are freed."""
        for group, client_id in self.groups.connection_closed(id(context)):
            self.queue_locks.release_client(group, client_id)

    async def handle(self, request: Request, context: ServerConnectionContext
                     ) -> Response | None:
        processor = self._processors.get(request.code)
        if processor is None:
            raise InvalidArgument(f"request code {request.code.name} is not served by a broker")
        return await processor(self, request, context)

    def handle_now(self, request: Request, context: ServerConnectionContext
                   ) -> Response | HandleLater | None:
        """Answer a request on its connection's reader task when its code has an immediate
        processor and nothing has to wait (a send with ``flush = "async"``); else hand it
        to ``handle`` (``net.serve``'s immediate handler)."""
        processor = self._immediate_processors.get(request.code)
        if processor is None:
            return HANDLE_LATER
        return processor(self, request, context)

    # -- helpers shared by processors ---------------------------------------------------
    def message_id(self, commit_offset: int) -> str:
        return encode_message_id(self._host_compact, self.port, commit_offset)

    def message_id_prefix(self) -> str:
        """What this broker's message ids start with (its address and port, as hex); made
        once per port (every send's answer carries it)."""
        if self._message_id_prefix[0] != self.port:
            self._message_id_prefix = (self.port,
                                       message_id_prefix(self._host_compact, self.port))
        return self._message_id_prefix[1]

    def next_queue(self, topic: str, queue_count: int) -> int:
        position = self._round_robin.get(topic, -1) + 1
        self._round_robin[topic] = position
        return position % queue_count
