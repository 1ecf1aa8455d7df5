"""The SDK finding brokers through name servers (``namesrv=``): routes across two broker
groups, a broker leaving, a chain of name servers whose reads only the tail serves."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import trio
from conftest import FAST, wait_until

from tidemq import Admin, Consumer, Producer
from tidemq.broker.node import Broker
from tidemq.client._namesrv import NameServerRoutes
from tidemq.config import NameServerConfig, TidemqConfig
from tidemq.nameserver import NameServer
from tidemq.protocol.codes import RequestCode
from tidemq.testing import embedded_config


def _config(tmp_path: Path, name: str, namesrv: tuple[str, ...]) -> TidemqConfig:
    config = embedded_config(tmp_path / name)
    return dataclasses.replace(config, broker=dataclasses.replace(
        config.broker, group=name, namesrv_addresses=namesrv,
        namesrv_heartbeat_interval_ms=200))


@contextlib.asynccontextmanager
async def _broker(config: TidemqConfig) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        started = await nursery.start(Broker(config).run)
        yield started.address
        nursery.cancel_scope.cancel()


async def test_two_broker_groups_through_one_name_server(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        namesrv = await nursery.start(NameServer(TidemqConfig(
            namesrv=NameServerConfig(port=0))).run)
        addresses = (namesrv.address,)
        async with _broker(_config(tmp_path, "broker-a", addresses)) as a, \
                _broker(_config(tmp_path, "broker-b", addresses)) as b:
            async with Admin(namesrv=namesrv.address) as admin:
                topic = await admin.create_topic("orders", queue_count=2)
                assert sorted(topic.brokers) == sorted([a, b])  # created on both groups
                cluster = await admin.cluster()
                assert {g.group for g in cluster.groups} == {"broker-a", "broker-b"}
            seen_route = False
            async with Producer(namesrv=namesrv.address) as producer:
                for _ in range(50):  # the name server learns the topic at the next push
                    results = [await producer.send("orders", b"m%d" % i) for i in range(8)]
                    if {r.broker for r in results} == {a, b}:
                        seen_route = True
                        break
                    producer._routes.invalidate("orders")
                    await trio.sleep(0.05)
                assert seen_route, "the route never named both broker groups"
                sent = [await producer.send("orders", b"n%d" % i) for i in range(40)]
            assert {r.broker for r in sent} == {a, b}
            received: list[bytes] = []
            async with Consumer("billing", "orders", namesrv=namesrv.address,
                                **FAST) as consumer:
                with trio.fail_after(20):
                    while len([m for m in received if m.startswith(b"n")]) < 40:
                        for message in await consumer.receive(max=32, wait=1):
                            received.append(message.body)
                            await message.ack()
            ours = sorted(m for m in received if m.startswith(b"n"))
            assert ours == sorted(b"n%d" % i for i in range(40))  # each exactly once
        nursery.cancel_scope.cancel()


async def test_producer_moves_off_a_broker_that_left(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        namesrv = await nursery.start(NameServer(TidemqConfig(
            namesrv=NameServerConfig(port=0))).run)
        addresses = (namesrv.address,)
        b_scope = trio.CancelScope()
        b_started = trio.Event()
        b_address: list[str] = []

        async def run_b() -> None:
            with b_scope:
                async with _broker(_config(tmp_path, "broker-b", addresses)) as b:
                    b_address.append(b)
                    b_started.set()
                    await trio.sleep_forever()

        async with _broker(_config(tmp_path, "broker-a", addresses)) as a:
            nursery.start_soon(run_b)
            await b_started.wait()
            async with Admin(namesrv=namesrv.address) as admin:
                await admin.create_topic("orders", queue_count=2)
            async with Producer(namesrv=namesrv.address, route_ttl_ms=100) as producer:

                async def both_used() -> bool:
                    results = [await producer.send("orders", b"x") for _ in range(8)]
                    return {r.broker for r in results} == {a, b_address[0]}

                with trio.fail_after(10):
                    while not await both_used():  # noqa: ASYNC110 (routes have no event)
                        await trio.sleep(0.05)
                b_scope.cancel()  # broker-b stops while sends go on
                results = [await producer.send("orders", b"after %d" % i) for i in range(30)]
            assert len(results) == 30  # no send failed: each went elsewhere when b left
            assert {r.broker for r in results[-10:]} == {a}
        nursery.cancel_scope.cancel()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for one in sockets:
            one.bind(("127.0.0.1", 0))
        return [one.getsockname()[1] for one in sockets]
    finally:
        for one in sockets:
            one.close()


async def test_clients_follow_a_chain_to_its_tail(tmp_path: Path) -> None:
    ports = _free_ports(3)
    members = tuple(f"127.0.0.1:{port}" for port in ports)
    async with trio.open_nursery() as nursery:
        nodes = []
        for port in ports:
            node = NameServer(TidemqConfig(namesrv=NameServerConfig(
                port=port, mode="chain", members=members, ping_interval_ms=50,
                # No member fails here: a generous timeout keeps a loaded machine's event
                # loop stalls from splitting the chain mid-test.
                peer_timeout_ms=1_000)))
            nodes.append(node)
            await nursery.start(node.run)
        def settled_chain() -> list[str] | None:
            """The chain every node agrees on, once all three are in it. Which member heads
            it depends on start-up timing (a loaded machine can elect any of them)."""
            chains = [n.membership.chain(trio.current_time()) for n in nodes]
            if all(n.membership.ready for n in nodes) and len(chains[0]) == 3 \
                    and all(chain == chains[0] for chain in chains):
                return chains[0]
            return None

        await wait_until(lambda: settled_chain() is not None)
        chain = settled_chain()
        assert chain is not None
        head, tail = chain[0], chain[-1]
        async with _broker(_config(tmp_path, "broker-a", members)) as a:
            async with Admin(brokers=[a]) as admin:
                await admin.create_topic("orders", queue_count=3)
            await wait_until(lambda: "orders" in nodes[2].registry.topics())
            async with Producer(namesrv=head) as producer:  # asks the head, sent to the tail
                result = await producer.send("orders", b"x")
            assert result.broker == a
            routes = producer._source
            assert isinstance(routes, NameServerRoutes)
            assert tail in routes._namesrv.addresses  # learnt from the NOT_LEADER answer
        nursery.cancel_scope.cancel()


async def test_an_empty_cluster_view_keeps_the_brokers_known(tmp_path: Path) -> None:
    from tidemq.client._lifecycle import OwnedTaskGroup
    from tidemq.client._pool import BrokerPool

    async with trio.open_nursery() as nursery:
        namesrv = await nursery.start(NameServer(TidemqConfig(
            namesrv=NameServerConfig(port=0))).run)  # knows no broker (just restarted)
        pool = BrokerPool((), client_id="t", connect_timeout_ms=1000,
                          request_timeout_ms=1000, down_for_ms=1000)
        routes = NameServerRoutes((namesrv.address,), pool, client_id="t",
                                  connect_timeout_ms=1000, request_timeout_ms=1000)
        pool.set_addresses(["127.0.0.1:10911"])  # learnt from an earlier refresh
        owned = OwnedTaskGroup()
        await owned.enter()
        try:
            pool.bind(owned)
            routes.bind(owned)
            await routes.refresh_brokers()
        finally:
            routes.close()
            pool.close()
            await owned.close()
            nursery.cancel_scope.cancel()
        assert pool.addresses == ("127.0.0.1:10911",)


async def test_name_servers_pointing_at_each_other_are_asked_again() -> None:
    """Two name servers whose views differ for a moment (a failover under way) each say
    the other serves reads. The client asks the round again after a pause, and gets its
    answer once they agree. Scripted name servers: such a moment is too short to catch
    with real ones."""
    from functools import partial

    from tidemq.client._lifecycle import OwnedTaskGroup
    from tidemq.client._pool import BrokerPool
    from tidemq.errors import NotLeader
    from tidemq.net import serve

    addresses: dict[str, str] = {}
    asked: list[str] = []

    def scripted(name: str, other: str, disagree_for: int):
        async def handler(request, context):  # type: ignore[no-untyped-def]
            asked.append(name)
            if asked.count(name) <= disagree_for:
                raise NotLeader("in chain mode the tail serves reads", addresses[other])
            return request.respond({"answered_by": name})
        return handler

    async with trio.open_nursery() as nursery:
        for name, other, disagree_for in (("x", "y", 99), ("y", "x", 2)):
            listeners = await nursery.start(partial(serve, scripted(name, other,
                                                                    disagree_for)))
            host, port = listeners[0]
            addresses[name] = f"{host}:{port}"
        pool = BrokerPool((), client_id="t", connect_timeout_ms=1000,
                          request_timeout_ms=1000, down_for_ms=1000)
        routes = NameServerRoutes((addresses["x"],), pool, client_id="t",
                                  connect_timeout_ms=1000, request_timeout_ms=1000)
        owned = OwnedTaskGroup()
        await owned.enter()
        try:
            pool.bind(owned)
            routes.bind(owned)
            with trio.fail_after(10):
                response = await routes.call(RequestCode.GET_CLUSTER_INFO, {})
        finally:
            routes.close()
            pool.close()
            await owned.close()
            nursery.cancel_scope.cancel()
    assert response.fields["answered_by"] == "y"
    assert asked == ["x", "y", "x", "y", "x", "y"]  # three rounds: two paused, one answered
