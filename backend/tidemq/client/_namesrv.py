"""Routes from name servers: what ``namesrv=`` gives every client.

``NameServerRoutes`` asks the name servers (GET_ROUTE per topic, GET_CLUSTER_INFO for the
brokers) and keeps the client's ``BrokerPool`` addressed at the brokers they name::

    client  --GET_ROUTE(topic)-->  a name server (the first live one, in the order given)
            <--groups: leader, replicas, queue counts, permission
            write queues: (leader, queue) of every writable group
            read queues:  (leader or, with no leader now, a replica, queue)

A name server that cannot be reached is marked down and the next one is asked; one that
answers NOT_LEADER (a chain's middle node serves no reads; a joining node holds no
registry yet) names the one that does, which is asked next; when those answers go round
in a circle (the name servers' views differ for a moment), all are asked again after a
pause. A topic no broker serves is an empty route (the producer then sends to any broker,
which auto-creates it if allowed), and the broker list is refreshed so that such a send has
somewhere to go.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import final

import anyio

from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._pool import BrokerPool, parse_address
from tidemq.client._routes import (
    PERMISSION_READ,
    PERMISSION_WRITE,
    MessageQueue,
    TopicRoute,
    describe_route,
)
from tidemq.errors import InvalidArgument, NotLeader, TideError, TopicNotFound
from tidemq.protocol import routing
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Fields, Response

logger = logging.getLogger("tidemq.client.namesrv")

NAMESRV_DOWN_MS = 3_000
NOT_LEADER_PAUSES_S = (0.25, 0.5)  # name servers' views agree again within a ping interval


def parse_namesrv(namesrv: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a:9876"``, ``"a:9876;b:9876"`` (or commas), or a list -> the addresses."""
    if namesrv is None:
        return ()
    items = namesrv.replace(",", ";").split(";") if isinstance(namesrv, str) else namesrv
    addresses = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not addresses:
        raise InvalidArgument("namesrv= names no address")
    for address in addresses:
        parse_address(address)
    return addresses


class BrokerListRoutes:
    """``brokers=[...]`` alone: each broker is asked for the topic (DESCRIBE_TOPIC)."""

    def __init__(self, pool: BrokerPool) -> None:
        self._pool = pool

    def bind(self, owner: OwnedTaskGroup) -> None:
        pass

    def close(self) -> None:
        pass

    async def route(self, topic: str) -> TopicRoute:
        return await describe_route(self._pool, topic)

    async def refresh_brokers(self) -> None:
        pass


@final
class NameServerRoutes:
    """See the module docstring."""

    def __init__(self, addresses: tuple[str, ...], brokers: BrokerPool, *,
                 client_id: str, connect_timeout_ms: int, request_timeout_ms: int) -> None:
        self.addresses = addresses
        self._brokers = brokers
        self._seed_brokers = brokers.addresses
        self._namesrv = BrokerPool(addresses, client_id=client_id,
                                   connect_timeout_ms=connect_timeout_ms,
                                   request_timeout_ms=request_timeout_ms,
                                   down_for_ms=NAMESRV_DOWN_MS)

    def bind(self, owner: OwnedTaskGroup) -> None:
        self._namesrv.bind(owner)

    def close(self) -> None:
        self._namesrv.close()

    async def route(self, topic: str) -> TopicRoute:
        try:
            response = await self.call(RequestCode.GET_ROUTE, {"topic": topic})
        except TopicNotFound:
            await self.refresh_brokers()
            return TopicRoute(topic, (), ())
        wire = routing.TopicRoute.from_fields(response.fields)
        write: list[MessageQueue] = []
        read: list[MessageQueue] = []
        for group in wire.groups:
            queues = group.queues
            if group.leader is not None and queues.permission & PERMISSION_WRITE:
                write.extend(MessageQueue(topic, group.leader, q)
                             for q in range(queues.write_queue_count))
            readable = group.readable_address
            if readable is not None and queues.permission & PERMISSION_READ:
                read.extend(MessageQueue(topic, readable, q)
                            for q in range(queues.read_queue_count))
        self._brokers.add_addresses({q.broker for q in write + read})
        return TopicRoute(topic, tuple(sorted(write)), tuple(sorted(read)))

    async def refresh_brokers(self) -> None:
        """Point the broker pool at every broker group the name servers know. An empty
        answer (a name server that just restarted, before the brokers' next heartbeat)
        keeps the brokers known so far rather than dropping them all."""
        view = await self.cluster_view()
        known = view.broker_addresses()
        if known or not self._brokers.addresses:
            self._brokers.set_addresses([*known, *self._seed_brokers])

    async def cluster_view(self) -> routing.ClusterView:
        response = await self.call(RequestCode.GET_CLUSTER_INFO, {})
        return routing.ClusterView.from_fields(response.fields)

    async def call_one(self, address: str, code: RequestCode, fields: Fields) -> Response:
        """Ask one name server (no failover): for status pages."""
        return await self._namesrv.call(address, code, fields)

    async def call(self, code: RequestCode, fields: Fields) -> Response:
        """Ask the name servers in turn (live ones first) until one answers; follow a
        NOT_LEADER's hint. Raises the last error when none answered.

        A round that ends on NOT_LEADER with nowhere new to go (it names one already asked,
        or none) means the name servers' views differ or one is still joining: during a
        failover or a start, for about one ping interval. The round is asked again after
        a pause, twice at most."""
        for pause_s in NOT_LEADER_PAUSES_S:
            try:
                return await self._call_round(code, fields)
            except NotLeader:
                await anyio.sleep(pause_s)
        return await self._call_round(code, fields)

    async def _call_round(self, code: RequestCode, fields: Fields) -> Response:
        last_error: TideError | None = None
        tried: set[str] = set()
        queue = list(self._namesrv.live_addresses())
        while queue:
            address = queue.pop(0)
            if address in tried:
                continue
            tried.add(address)
            try:
                return await self._namesrv.call(address, code, fields)
            except NotLeader as error:
                last_error = error
                if error.leader is not None and error.leader not in tried:
                    if error.leader not in self._namesrv.addresses:
                        self._namesrv.add_addresses([error.leader])
                    queue.insert(0, error.leader)
            except TopicNotFound:
                raise
            except TideError as error:
                last_error = error
                if not error.code.retryable:
                    raise
                logger.info("namesrv_unavailable", extra={"namesrv": address,
                                                          "error": error.remark})
        assert last_error is not None
        raise last_error


RouteSource = BrokerListRoutes | NameServerRoutes


def route_source(pool: BrokerPool, namesrv: tuple[str, ...], *, client_id: str,
                 connect_timeout_ms: int, request_timeout_ms: int) -> RouteSource:
    if not namesrv:
        return BrokerListRoutes(pool)
    return NameServerRoutes(namesrv, pool, client_id=client_id,
                            connect_timeout_ms=connect_timeout_ms,
                            request_timeout_ms=request_timeout_ms)
