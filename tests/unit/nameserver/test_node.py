"""A NameServer run in-process under ``MockClock(autojump_threshold=0)``: brokers register
through a real connection on 127.0.0.1, and every timeout passes in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tidemq.config import NameServerConfig, TidemqConfig
from tidemq.errors import TopicNotFound
from tidemq.nameserver import NameServer
from tidemq.nameserver.event_bus import EventBus, HandlerContext, RouteAnswerCache
from tidemq.nameserver.events import BrokerEvicted, BrokerRegistered, RegistryEvent
from tidemq.net import ClientConnection, connect
from tidemq.protocol.codes import RequestCode

BROKER_TIMEOUT_MS = 3_000
CHECK_MS = 500


def registration(address: str = "127.0.0.1:10911", *, topics: tuple[str, ...] = ("orders",)
                 ) -> dict[str, Any]:
    return {"cluster": "c", "group": "g", "address": address, "role": "leader", "epoch": 1,
            "topics": {name: {"read_queue_count": 4, "write_queue_count": 4,
                              "permission": 6} for name in topics}}


class Node:
    def __init__(self, server: NameServer, port: int) -> None:
        self.server = server
        self.port = port
        self.events: list[RegistryEvent] = []
        server.bus.add("test-recorder", self.events.append)

    async def connect(self, client_id: str = "broker") -> ClientConnection:
        return await connect("127.0.0.1", self.port, client_id=client_id)

    def evictions(self) -> list[BrokerEvicted]:
        return [e for e in self.events if isinstance(e, BrokerEvicted)]


async def wait_until(condition: Callable[[], object], limit_s: float, *,
                     step_s: float = 0.001) -> None:
    """Poll ``condition`` (virtual time) until true; fail after ``limit_s``."""
    with trio.fail_after(limit_s):
        while not condition():  # noqa: ASYNC110 (polls state owned by the node)
            await trio.sleep(step_s)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    """Tests take ``autojump_clock`` themselves: pytest-trio only looks for a clock among
    the test function's own arguments."""
    config = TidemqConfig(namesrv=NameServerConfig(
        port=0, broker_timeout_ms=BROKER_TIMEOUT_MS, eviction_check_interval_ms=CHECK_MS))
    server = NameServer(config)
    async with trio.open_nursery() as nursery:
        started = await nursery.start(server.run)
        yield Node(server, started.port)
        nursery.cancel_scope.cancel()


async def test_the_built_in_handlers_are_loaded_from_entry_points(
        node: Node, autojump_clock: trio.testing.MockClock) -> None:
    assert node.server.bus.handler_names[:3] == ["metrics", "route_cache", "structured_log"]


async def test_a_silent_broker_is_evicted_after_broker_timeout(
        node: Node, autojump_clock: trio.testing.MockClock) -> None:
    async with await node.connect() as broker:
        await broker.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
        registered_at = trio.current_time()
        route = await broker.call(RequestCode.GET_ROUTE, {"topic": "orders"})
        assert route.fields["groups"][0]["leader"] == "127.0.0.1:10911"
        assert BrokerRegistered("c", "g", "127.0.0.1:10911") in node.events
        # A heartbeat within the timeout keeps it.
        await trio.sleep(BROKER_TIMEOUT_MS / 1000 * 0.8)
        await broker.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
        heartbeat_at = trio.current_time()
        await trio.sleep(BROKER_TIMEOUT_MS / 1000 * 0.8)
        assert "127.0.0.1:10911" in node.server.registry
        assert not node.evictions()
        await wait_until(node.evictions, BROKER_TIMEOUT_MS / 1000 * 2, step_s=0.05)
        silent_s = trio.current_time() - heartbeat_at
        assert silent_s > BROKER_TIMEOUT_MS / 1000
        assert silent_s <= (BROKER_TIMEOUT_MS + CHECK_MS) / 1000 + 0.1
        assert heartbeat_at > registered_at
        assert node.evictions() == [BrokerEvicted("c", "g", "127.0.0.1:10911", "silent")]
        assert node.server.bus.context.event_counts["BrokerEvicted"] == 1
        with pytest.raises(TopicNotFound):  # the cached answer went with it
            await broker.call(RequestCode.GET_ROUTE, {"topic": "orders"})


async def test_a_broker_is_evicted_at_once_when_its_connection_closes(
        node: Node, autojump_clock: trio.testing.MockClock) -> None:
    async with await node.connect("watcher") as watcher:
        async with await node.connect() as broker:
            await broker.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
            await watcher.call(RequestCode.GET_ROUTE, {"topic": "orders"})  # cached now
        closed_at = trio.current_time()
        await wait_until(node.evictions, 1)
        assert trio.current_time() - closed_at < CHECK_MS / 1000  # not the silence check
        assert node.evictions() == [BrokerEvicted("c", "g", "127.0.0.1:10911",
                                                  "disconnected")]
        with pytest.raises(TopicNotFound):
            await watcher.call(RequestCode.GET_ROUTE, {"topic": "orders"})


async def test_a_broker_that_moved_connection_is_kept_when_the_old_one_closes(
        node: Node, autojump_clock: trio.testing.MockClock) -> None:
    async with await node.connect() as second:
        async with await node.connect() as first:
            await first.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
            await second.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
        await trio.sleep(0.2)
        assert not node.evictions()
    await wait_until(node.evictions, 1)
    assert node.evictions()[0].reason == "disconnected"


async def test_unregister_broker_deregisters(
        node: Node, autojump_clock: trio.testing.MockClock) -> None:
    async with await node.connect() as broker:
        await broker.call(RequestCode.REGISTER_BROKER, {
            "registration": registration(topics=("orders", "refunds"))})
        await broker.call(RequestCode.REGISTER_BROKER, {
            "registration": registration("127.0.0.1:10912", topics=("refunds",))})
        await broker.call(RequestCode.UNREGISTER_BROKER, {"address": "127.0.0.1:10911"})
        assert node.evictions() == [BrokerEvicted("c", "g", "127.0.0.1:10911",
                                                  "unregistered")]
        with pytest.raises(TopicNotFound):
            await broker.call(RequestCode.GET_ROUTE, {"topic": "orders"})
        route = await broker.call(RequestCode.GET_ROUTE, {"topic": "refunds"})
        assert [r["address"] for r in route.fields["groups"][0]["replicas"]] == [
            "127.0.0.1:10912"]
        await broker.call(RequestCode.UNREGISTER_BROKER, {"address": "127.0.0.1:10911"})
        assert len(node.evictions()) == 1  # unknown now: nothing happens
        info = await broker.call(RequestCode.GET_CLUSTER_INFO)
        assert info.fields["namesrv"]["role"] == "standalone"
        assert info.fields["namesrv"]["requests"]["UNREGISTER_BROKER"] == 2


async def test_route_cache_is_kept_fresh_without_plug_ins(
        autojump_clock: trio.testing.MockClock) -> None:
    """``load_plugins=False`` must not leave GET_ROUTE answering from a stale cache."""
    server = NameServer(TidemqConfig(namesrv=NameServerConfig(port=0)), load_plugins=False)
    assert server.bus.handler_names == ["route_cache"]
    async with trio.open_nursery() as nursery:
        started = await nursery.start(server.run)
        async with await connect("127.0.0.1", started.port, client_id="b") as broker:
            await broker.call(RequestCode.REGISTER_BROKER, {"registration": registration()})
            await broker.call(RequestCode.GET_ROUTE, {"topic": "orders"})
            changed = registration()
            changed["topics"]["orders"]["write_queue_count"] = 2
            await broker.call(RequestCode.REGISTER_BROKER, {"registration": changed})
            route = await broker.call(RequestCode.GET_ROUTE, {"topic": "orders"})
            assert route.fields["groups"][0]["write_queue_count"] == 2
        nursery.cancel_scope.cancel()


def test_a_handler_that_raises_does_not_stop_the_others() -> None:
    bus = EventBus(HandlerContext("n:1", RouteAnswerCache()))
    seen: list[tuple[str, RegistryEvent]] = []

    def broken(event: RegistryEvent) -> None:
        raise RuntimeError("handler bug")

    bus.add("first", lambda event: seen.append(("first", event)))
    bus.add("broken", broken)
    bus.add("last", lambda event: seen.append(("last", event)))
    events = [BrokerRegistered("c", "g", "a:1"), BrokerEvicted("c", "g", "a:1", "silent")]
    bus.publish(events)
    assert seen == [("first", events[0]), ("last", events[0]),
                    ("first", events[1]), ("last", events[1])]
    assert bus.context.handler_errors["broken"] == 2


def test_plug_ins_load_from_entry_points_and_a_broken_one_is_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution on sys.path declares two handlers in the group: one works, one
    raises while it loads."""
    (tmp_path / "my_plugin.py").write_text(
        "def good(context):\n"
        "    return lambda event: context.event_counts.update(['plug-in saw it'])\n"
        "def bad(context):\n"
        "    raise RuntimeError('cannot start')\n")
    info = tmp_path / "my_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[tidemq.nameserver.handlers]\nzz_good = my_plugin:good\nzz_bad = my_plugin:bad\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bus = EventBus(HandlerContext("n:1", RouteAnswerCache()))
    bus.load_entry_points()
    assert bus.handler_names == ["metrics", "route_cache", "structured_log", "zz_good"]
    assert bus.context.handler_errors == {"zz_bad": 1}
    bus.publish([BrokerRegistered("c", "g", "a:1")])
    assert bus.context.event_counts == {"BrokerRegistered": 1, "plug-in saw it": 1}
