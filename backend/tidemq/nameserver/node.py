"""The name server node: one nursery that owns every service of a name server.

    NameServer.run()
      ├── net.serve(self.handle)   requests from brokers, clients and the other name servers
      ├── _evict_silent            every eviction_check_interval_ms (the writer, or each peer)
      └── _watch_members           replicated modes: ping the members, re-decide the writer,
                                   push snapshots to members that are not ready

Requests (``processors``) read the registry or submit commands through the ``Replicator``,
which applies them with the mode's promise. A broker's connection is remembered with the
addresses it registered; when the connection closes, those brokers are evicted at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import final

import trio

from tidemq.config import TidemqConfig
from tidemq.errors import InvalidArgument, TideError
from tidemq.nameserver import handlers
from tidemq.nameserver.event_bus import EventBus, HandlerContext, RouteAnswerCache
from tidemq.nameserver.membership import Membership, PeerStatus
from tidemq.nameserver.processors import PROCESSORS
from tidemq.nameserver.registry import Registry, Unregister
from tidemq.nameserver.replication import Replicator
from tidemq.net import ConnectionOptions, PeerConnections, ServerConnectionContext, serve
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import FieldValue, Request, Response

logger = logging.getLogger("tidemq.nameserver.node")


@dataclass(frozen=True, slots=True)
class NameServerStarted:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@final
class NameServer:
    def __init__(self, config: TidemqConfig, *, load_plugins: bool = True) -> None:
        self.config = config.namesrv
        self.registry = Registry()
        self.route_cache = RouteAnswerCache()
        self.bus = EventBus(HandlerContext(self.config.address, self.route_cache))
        if load_plugins:
            self.bus.load_entry_points()
        if "route_cache" not in self.bus.handler_names:
            # Not a plug-in's choice: without it GET_ROUTE would answer from a stale cache.
            self.bus.add("route_cache", handlers.route_cache(self.bus.context))
        self.address = self.config.address
        self.request_counts: Counter[RequestCode] = Counter()
        self._broker_connections: dict[str, ServerConnectionContext] = {}
        """Broker address -> the connection it last registered on."""
        self._membership: Membership | None = None
        self._replicator: Replicator | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def membership(self) -> Membership:
        assert self._membership is not None, "the name server is not running"
        return self._membership

    @property
    def replicator(self) -> Replicator:
        assert self._replicator is not None, "the name server is not running"
        return self._replicator

    async def run(self, *, task_status: trio.TaskStatus[NameServerStarted]
                  = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            options = ConnectionOptions(max_in_flight_requests=config.max_in_flight_requests,
                                        frame_stall_timeout_ms=config.frame_stall_timeout_ms)
            addresses = await nursery.start(partial(
                serve, self.handle, config.host, config.port, options=options,
                hello_timeout_ms=config.hello_timeout_ms,
                hello_fields={"namesrv": {"mode": config.mode}},
                on_closed=self._connection_closed))
            host, port = addresses[0]
            if config.port == 0:  # tests bind a free port; members name the real one
                self.address = f"{host}:{port}"
                self.bus.context.node_address = self.address
            members = config.members or (self.address,)
            self._membership = Membership(self.address, members, config.mode,
                                          peer_timeout_s=config.peer_timeout_ms / 1000,
                                          now_s=trio.current_time())
            peers = PeerConnections(nursery, client_id=f"namesrv-{self.address}",
                                    connect_timeout_ms=config.peer_timeout_ms,
                                    request_timeout_ms=config.replication_timeout_ms)
            self._replicator = Replicator(config, self.registry, self.bus,
                                          self._membership, peers, nursery)
            nursery.start_soon(self._evict_silent)
            if self._membership.replicated:
                nursery.start_soon(self._watch_members, peers)
            logger.info("name server started", extra={
                "address": self.address, "mode": config.mode, "members": list(members)})
            task_status.started(NameServerStarted(host, port))

    async def handle(self, request: Request, context: ServerConnectionContext
                     ) -> Response | None:
        code = request.code
        self.request_counts[code] += 1
        processor = PROCESSORS.get(code)
        if processor is None:
            raise InvalidArgument(f"request code {code.name} is not served by a name server")
        return await processor(self, request, context)

    # -- broker connections ----------------------------------------------------------------
    def remember_connection(self, address: str, context: ServerConnectionContext) -> None:
        if context.statistics().closed:  # it closed while the registration was applied
            self._broker_connections.pop(address, None)
            if self._nursery is not None:
                self._nursery.start_soon(self._evict, [address], "disconnected")
            return
        self._broker_connections[address] = context

    def _connection_closed(self, context: ServerConnectionContext) -> None:
        gone = [address for address, connection in self._broker_connections.items()
                if connection is context]
        for address in gone:
            del self._broker_connections[address]
        if gone and self._nursery is not None:
            self._nursery.start_soon(self._evict, gone, "disconnected")

    async def _evict(self, addresses: list[str], reason: str) -> None:
        for address in addresses:
            if address not in self.registry:
                continue
            try:
                await self.replicator.submit(Unregister(address, reason))
            except TideError as error:  # not the writer (any more): the writer evicts
                logger.info("eviction not applied here", extra={
                    "broker": address, "reason": reason, "remark": error.remark})
                continue
            logger.warning("broker %s evicted (%s)", address, reason,
                           extra={"broker": address, "reason": reason})

    async def _evict_silent(self) -> None:
        interval_s = self.config.eviction_check_interval_ms / 1000
        timeout_s = self.config.broker_timeout_ms / 1000
        while True:
            await trio.sleep(interval_s)
            if not self.membership.is_writer:
                continue
            silent = self.registry.silent_brokers(trio.current_time(), timeout_s)
            if silent:
                await self._evict(silent, "silent")

    # -- members ---------------------------------------------------------------------------
    async def _watch_members(self, peers: PeerConnections) -> None:
        membership = self.membership
        in_flight: set[str] = set()
        async with trio.open_nursery() as nursery:
            while True:
                for peer in membership.peers:
                    if peer not in in_flight:
                        in_flight.add(peer)
                        nursery.start_soon(self._ping, peers, peer, in_flight)
                if membership.tick(trio.current_time()):
                    logger.warning("this name server is now the writer", extra={
                        "address": self.address, "term": membership.term})
                    self.route_cache.clear()
                    self.replicator.start_term()
                if membership.is_writer:
                    for peer in membership.unready_live_peers(trio.current_time()):
                        self.replicator.push_snapshot_soon(peer)
                await trio.sleep(self.config.ping_interval_ms / 1000)

    async def _ping(self, peers: PeerConnections, peer: str, in_flight: set[str]) -> None:
        try:
            response = await peers.call(peer, RequestCode.NAMESRV_STATUS, {"brief": True},
                                        timeout_ms=self.config.peer_timeout_ms)
            fields = response.fields
            writer = fields.get("writer")
            term = fields.get("term")
            self.membership.heard(peer, PeerStatus(
                fields.get("ready") is True, writer if isinstance(writer, str) else None,
                term if isinstance(term, int) and not isinstance(term, bool) else 0),
                trio.current_time())
        except TideError:
            pass  # silence: the member dies in our view after peer_timeout_ms
        finally:
            in_flight.discard(peer)

    def status(self, brief: bool) -> dict[str, FieldValue]:
        membership = self.membership
        now = trio.current_time()
        status: dict[str, FieldValue] = {
            "address": self.address, "mode": self.config.mode, "ready": membership.ready,
            "writer": membership.writer, "term": membership.term,
        }
        if brief:
            return status
        if self.config.mode == "chain":
            status["chain"] = list(membership.chain(now))
        status.update({
            "ack": self.config.ack,
            "role": self.role(now),
            "stream": self.replicator.stream, "seq": self.replicator.seq,
            "brokers": len(self.registry),
            "members": [{"address": m, "live": membership.is_live(m, now),
                         "ready": membership.is_ready(m)} for m in membership.members],
            "events": dict(self.bus.context.event_counts),
            "handlers": self.bus.handler_names,
            "requests": {code.name: count for code, count in self.request_counts.items()},
        })
        return status

    def role(self, now_s: float) -> str:
        """What this node does now, for people: standalone, peer, primary, replica, head,
        middle, tail, or joining (not ready yet)."""
        membership = self.membership
        if not membership.replicated:
            return "standalone" if not membership.peers else "peer"
        if not membership.ready:
            return "joining"
        if self.config.mode == "primary":
            return "primary" if membership.is_writer else "replica"
        chain = membership.chain(now_s)
        if membership.is_writer:
            return "head" if len(chain) > 1 else "head+tail"
        return "tail" if chain and chain[-1] == self.address else "middle"
