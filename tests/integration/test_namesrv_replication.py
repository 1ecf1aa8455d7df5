"""Name servers of one cluster in one process, on real sockets of 127.0.0.1, under
``MockClock(autojump_threshold=0)``: pings, timeouts and failovers pass in virtual time.

A node is "killed" by cancelling its scope (its sockets close, as with kill -9) and
"restarted" as a fresh NameServer on the same port (an empty registry, as after a crash).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from tidemq.config import NameServerConfig, TidemqConfig
from tidemq.errors import InvalidArgument, NotLeader, ReplicaTimeout, TideError
from tidemq.nameserver import NameServer
from tidemq.net import ClientConnection, ServerConnectionContext, connect, serve
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Request, Response

BROKER = "127.0.0.1:10911"


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def registration(topics: tuple[str, ...] = ("orders",), address: str = BROKER
                 ) -> dict[str, Any]:
    return {"cluster": "c", "group": "g", "address": address, "role": "leader", "epoch": 1,
            "topics": {t: {"read_queue_count": 4, "write_queue_count": 4, "permission": 6}
                       for t in topics}}


class Cluster:
    def __init__(self, nursery: trio.Nursery, mode: str, ack: str = "semi-sync") -> None:
        self.nursery = nursery
        self.ports = free_ports(3)
        self.members = tuple(f"127.0.0.1:{port}" for port in self.ports)
        self.mode, self.ack = mode, ack
        self.nodes: dict[str, NameServer] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.gone: dict[str, trio.Event] = {}

    def config(self, port: int) -> TidemqConfig:
        return TidemqConfig(namesrv=NameServerConfig(
            port=port, mode=self.mode, ack=self.ack, members=self.members,  # type: ignore[arg-type]
            ping_interval_ms=100, peer_timeout_ms=500, replication_timeout_ms=1000,
            broker_timeout_ms=3000, eviction_check_interval_ms=200))

    async def start(self, address: str) -> NameServer:
        node = NameServer(self.config(int(address.rpartition(":")[2])))
        scope = trio.CancelScope()
        gone = trio.Event()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    await node.run(task_status=task_status)
            finally:
                gone.set()

        await self.nursery.start(run)
        self.nodes[address], self.scopes[address], self.gone[address] = node, scope, gone
        return node

    async def kill(self, address: str) -> None:
        """Cancel the node and wait until its sockets are closed."""
        self.scopes.pop(address).cancel()
        del self.nodes[address]
        await self.gone.pop(address).wait()

    def writer(self) -> NameServer | None:
        writers = [n for n in self.nodes.values() if n.membership.is_writer]
        return writers[0] if len(writers) == 1 else None

    async def settle(self, condition: Callable[[], bool], limit_s: float = 10.0) -> None:
        with trio.fail_after(limit_s):  # virtual seconds
            while not condition():  # noqa: ASYNC110 (polls the nodes' state)
                await trio.sleep(0.05)


async def open_broker(nursery: trio.Nursery, address: str) -> ClientConnection:
    """A connection that stays open (as a broker's does: closing it evicts the broker)."""
    host, _, port = address.rpartition(":")
    connection = await connect(host, int(port), client_id="broker")

    async def keep(task_status: trio.TaskStatus[None]) -> None:
        async with connection:
            task_status.started()
            await trio.sleep_forever()

    await nursery.start(keep)
    return connection


async def call(address: str, code: RequestCode, fields: dict[str, Any]) -> Response:
    """One request on a fresh connection; a typed error is raised outside the connection's
    task group (inside it would come out wrapped in an exception group)."""
    host, _, port = address.rpartition(":")
    outcome: Response | TideError
    async with await connect(host, int(port), client_id="test") as connection:
        try:
            outcome = await connection.call(code, fields)
        except TideError as error:
            outcome = error
    if isinstance(outcome, TideError):
        raise outcome
    return outcome


@pytest.mark.parametrize("mode", ["primary", "chain"])
async def test_a_writer_restarted_within_peer_timeout_is_replaced(
        mode: str, autojump_clock: trio.testing.MockClock) -> None:
    """Before the fix: the restarted writer answered pings at once (so it stayed "live"),
    held nothing, took the claim in its own name from the others, and nobody ever wrote
    again: every REGISTER_BROKER answered NOT_LEADER."""
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, mode)
        for address in cluster.members:
            await cluster.start(address)
        await cluster.settle(lambda: cluster.writer() is not None
                             and all(n.membership.ready for n in cluster.nodes.values()))
        first = cluster.writer()
        assert first is not None
        broker = await open_broker(nursery, first.address)
        await broker.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
        await cluster.kill(first.address)
        await cluster.start(first.address)  # back at once, empty
        await cluster.settle(lambda: (w := cluster.writer()) is not None
                             and w.address != first.address)
        writer = cluster.writer()
        assert writer is not None
        assert writer.membership.term == 2
        broker = await open_broker(nursery, writer.address)
        await broker.call(RequestCode.REGISTER_BROKER,
                          {"registration": registration(("orders", "refunds"))})
        restarted = cluster.nodes[first.address]
        await cluster.settle(lambda: restarted.membership.ready
                             and "refunds" in restarted.registry.topics())
        assert not restarted.membership.is_writer  # sticky: it does not take it back
        nursery.cancel_scope.cancel()


async def test_semi_sync_answers_once_any_replica_applied(
        autojump_clock: trio.testing.MockClock) -> None:
    """The second member hangs on every replication request (alive, answering pings).
    Semi-sync needs one replica: the third has it at once. Before the fix the writer
    waited for the *first* replica only, and answered REPLICA_TIMEOUT after
    replication_timeout_ms although the third one had applied the write."""
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, "primary", "semi-sync")
        first, hung, third = cluster.members

        async def hang(request: Request, context: ServerConnectionContext) -> Response:
            if request.code is RequestCode.NAMESRV_STATUS:
                return request.respond({"ready": False, "writer": None, "term": 0})
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        await nursery.start(serve, hang, "127.0.0.1", int(hung.rpartition(":")[2]))
        writer = await cluster.start(first)
        await cluster.start(third)
        await cluster.settle(lambda: writer.membership.is_writer
                             and cluster.nodes[third].membership.ready)
        broker = await open_broker(nursery, first)
        started = trio.current_time()
        await broker.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
        assert trio.current_time() - started < 0.5  # timeout is 1 s
        assert BROKER in cluster.nodes[third].registry
        nursery.cancel_scope.cancel()


async def test_sync_waits_for_every_live_replica_and_times_out(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, "primary", "sync")
        first, hung, third = cluster.members

        async def hang(request: Request, context: ServerConnectionContext) -> Response:
            if request.code is RequestCode.NAMESRV_STATUS:
                return request.respond({"ready": False, "writer": None, "term": 0})
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        await nursery.start(serve, hang, "127.0.0.1", int(hung.rpartition(":")[2]))
        writer = await cluster.start(first)
        await cluster.start(third)
        await cluster.settle(lambda: writer.membership.is_writer
                             and cluster.nodes[third].membership.ready)
        broker = await open_broker(nursery, first)
        with pytest.raises(ReplicaTimeout):
            await broker.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
        assert BROKER in writer.registry  # applied where it was sent: "maybe replicated"
        nursery.cancel_scope.cancel()


async def test_a_stale_snapshot_does_not_undo_newer_writes(
        autojump_clock: trio.testing.MockClock) -> None:
    """A snapshot taken at seq n that arrives after write n+1 was applied (the writer
    pushes snapshots and writes concurrently) must not roll the replica back."""
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, "primary", "sync")
        for address in cluster.members:
            await cluster.start(address)
        await cluster.settle(lambda: cluster.writer() is not None
                             and all(n.membership.ready for n in cluster.nodes.values()))
        writer = cluster.writer()
        assert writer is not None
        replica = next(n for n in cluster.nodes.values() if n is not writer)
        stale = {"writer": writer.address, "term": writer.membership.term,
                 "stream": writer.replicator.stream, "seq": writer.replicator.seq,
                 "registry": writer.registry.snapshot()}
        broker = await open_broker(nursery, writer.address)
        await broker.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
        assert BROKER in replica.registry
        await call(replica.address, RequestCode.REPLICATE_SNAPSHOT, stale)
        assert BROKER in replica.registry
        assert replica.replicator.seq == writer.replicator.seq
        nursery.cancel_scope.cancel()


async def test_bogus_replication_does_not_move_the_writer(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, "chain")
        for address in cluster.members:
            await cluster.start(address)
        await cluster.settle(lambda: cluster.writer() is not None
                             and all(n.membership.ready for n in cluster.nodes.values()))
        writer = cluster.writer()
        assert writer is not None
        victim = next(n for n in cluster.nodes.values() if n is not writer)
        other = next(m for m in cluster.members if m not in (writer.address, victim.address))
        for code, fields in [
            (RequestCode.REPLICATE_WRITE, {"writer": other, "term": 10**9, "stream": "x",
                                           "seq": 1, "command": {"op": "explode"}}),
            (RequestCode.REPLICATE_WRITE, {"writer": other, "term": 10**9, "stream": "x",
                                           "seq": 1, "command": {"op": "unregister",
                                                                 "address": BROKER},
                                           "chain": ["nobody:1"]}),
            (RequestCode.REPLICATE_SNAPSHOT, {"writer": other, "term": 10**9, "stream": "x",
                                              "seq": 1, "registry": [{"cluster": 5}]}),
            (RequestCode.REPLICATE_SNAPSHOT, {"writer": other, "term": 10**9, "stream": "x",
                                              "seq": 1, "registry": "all of it"}),
        ]:
            with pytest.raises(InvalidArgument):
                await call(victim.address, code, fields)
        with pytest.raises(NotLeader):  # its own name: never
            await call(victim.address, RequestCode.REPLICATE_SNAPSHOT, {
                "writer": victim.address, "term": 10**9, "stream": "x", "seq": 1,
                "registry": []})
        assert (victim.membership.writer, victim.membership.term) == (
            writer.address, writer.membership.term)
        nursery.cancel_scope.cancel()


async def test_a_peers_node_takes_no_replication(
        autojump_clock: trio.testing.MockClock) -> None:
    node = NameServer(TidemqConfig(namesrv=NameServerConfig(port=0)))
    async with trio.open_nursery() as nursery:
        started = await nursery.start(node.run)
        for code in (RequestCode.REPLICATE_SNAPSHOT, RequestCode.REPLICATE_WRITE):
            with pytest.raises(InvalidArgument):
                await call(started.address, code, {
                    "writer": started.address, "term": 0, "stream": "", "seq": 1,
                    "registry": [registration()], "command": {
                        "op": "register", "registration": registration()}})
        assert len(node.registry) == 0
        nursery.cancel_scope.cancel()
