"""Hostile input to a name server: every bad peer gets a typed error (INVALID_ARGUMENT,
PROTOCOL_ERROR, NOT_LEADER) or a close, the node never crashes, and a normal client
querying routes beside them sees the same answers throughout."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
import trio
from hostile_wire import frame, hello, read_until_closed

from tidemq.config import NameServerConfig, TidemqConfig
from tidemq.errors import ErrorCode
from tidemq.nameserver import NameServer
from tidemq.net import connect
from tidemq.protocol.codes import RequestCode

SEED = random.randrange(2**32)

def good_registration(address: str = "127.0.0.1:10911") -> dict[str, Any]:
    return {"cluster": "c", "group": "g", "address": address, "role": "leader", "epoch": 1,
            "topics": {"calm": {"read_queue_count": 4, "write_queue_count": 4,
                                "permission": 6}}}


def with_changes(**changes: Any) -> dict[str, Any]:
    return {**good_registration(), **changes}


BOGUS_REQUESTS: list[tuple[RequestCode, Any]] = [
    (RequestCode.REGISTER_BROKER, {"registration": "me"}),
    (RequestCode.REGISTER_BROKER, {"registration": [1, 2]}),
    (RequestCode.REGISTER_BROKER, {}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(topics=["calm"])}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(topics={"t": {
        "read_queue_count": -1, "write_queue_count": 4, "permission": 6}})}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(topics={"t": {
        "read_queue_count": 4, "write_queue_count": 10**6, "permission": 6}})}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(topics={"t": 4})}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(topics={"": {
        "read_queue_count": 4, "write_queue_count": 4, "permission": 6}})}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(address="nowhere")}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(address="h:99999")}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(address=7)}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(role="king")}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(epoch=-3)}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(epoch="one")}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(cluster="")}),
    (RequestCode.REGISTER_BROKER, {"registration": with_changes(group="x" * 500)}),
    (RequestCode.UNREGISTER_BROKER, {"address": ["127.0.0.1:10911"]}),
    (RequestCode.GET_ROUTE, {"topic": 5}),
    (RequestCode.GET_ROUTE, {"topic": ""}),
    (RequestCode.GET_ROUTE, {"topic": "t" * 10_000}),
    (RequestCode.NAMESRV_STATUS, {"brief": "yes"}),
    (RequestCode.REPLICATE_WRITE, {}),
    (RequestCode.REPLICATE_WRITE, {"writer": 1, "term": "x", "stream": None, "seq": -1}),
    (RequestCode.REPLICATE_WRITE, {"writer": "a:1", "term": 0, "stream": "s", "seq": 1,
                                   "command": "drop everything"}),
    (RequestCode.REPLICATE_WRITE, {"writer": "a:1", "term": 0, "stream": "s", "seq": 1,
                                   "command": {"op": "register", "registration": 3}}),
    (RequestCode.REPLICATE_SNAPSHOT, {"writer": "a:1", "term": 0, "stream": "s", "seq": 0,
                                      "registry": {"not": "a list"}}),
    (RequestCode.REPLICATE_SNAPSHOT, {"writer": "a:1", "term": 0, "stream": "s", "seq": 0,
                                      "registry": [good_registration("evil:1")]}),
    (RequestCode.SEND_MESSAGE, {"topic": "calm"}),  # a broker's request: not served here
]


@pytest.mark.parametrize("mode", ["peers", "primary"])  # primary alone: a lone writer
async def test_bad_peers_get_errors_or_a_close_and_routes_stay_right(mode: str) -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    config = TidemqConfig(namesrv=NameServerConfig(
        port=0, mode=mode, hello_timeout_ms=1500, frame_stall_timeout_ms=1500))  # type: ignore[arg-type]
    node = NameServer(config)
    async with trio.open_nursery() as nursery:
        started = await nursery.start(node.run)
        host, port = started.host, started.port
        async with await connect(host, port, client_id="broker") as broker:
            await broker.call(RequestCode.REGISTER_BROKER,
                              {"registration": good_registration()})
            expected = (await broker.call(RequestCode.GET_ROUTE, {"topic": "calm"})).fields
            results: dict[str, bytes] = {}
            routes_seen: list[object] = []

            async def attack(name: str, payload: bytes) -> None:
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    await stream.send_all(payload)
                    results[name] = await read_until_closed(stream, limit_s=10)

            async def query_routes(stop: trio.Event) -> None:
                async with await connect(host, port, client_id="normal") as client:
                    while not stop.is_set():
                        route = await client.call(RequestCode.GET_ROUTE, {"topic": "calm"})
                        routes_seen.append(route.fields)
                        await trio.sleep(0.005)

            stop = trio.Event()
            async with trio.open_nursery() as attackers:
                attackers.start_soon(query_routes, stop)
                async with trio.open_nursery() as each:
                    each.start_soon(attack, "random", rng.randbytes(4096))
                    each.start_soon(attack, "random-after-hello",
                                    hello() + rng.randbytes(4096))
                    each.start_soon(attack, "half-frame", hello() + frame(
                        {"code": int(RequestCode.REGISTER_BROKER), "opaque": 2, "flags": 0,
                         "fields": {"registration": good_registration("h:2")}})[:60])
                    each.start_soon(attack, "oversize", hello() + struct.pack(
                        ">II", 1 << 30, 16))
                    each.start_soon(attack, "not-hello-first", frame(
                        {"code": int(RequestCode.GET_ROUTE), "opaque": 1, "flags": 0,
                         "fields": {"topic": "calm"}}))
                    each.start_soon(attack, "bad-header", hello() + frame(
                        {"code": "route please", "opaque": -1}))
                # Typed errors on a healthy connection, which stays usable.
                async with await connect(host, port, client_id="typed") as client:
                    for code, fields in BOGUS_REQUESTS:
                        response = await client.request(code, fields)
                        assert response.code in (ErrorCode.INVALID_ARGUMENT,
                                                 ErrorCode.PROTOCOL_ERROR,
                                                 ErrorCode.NOT_LEADER), (code, fields, response)
                        assert response.remark
                    assert (await client.call(RequestCode.GET_ROUTE,
                                              {"topic": "calm"})).fields == expected
                stop.set()
        assert set(results) == {"random", "random-after-hello", "half-frame", "oversize",
                                "not-hello-first", "bad-header"}
        assert len(routes_seen) > 10
        assert all(route == expected for route in routes_seen)
        assert "evil:1" not in node.registry
        assert [r["address"] for r in node.registry.snapshot()] == [  # type: ignore[index, call-overload]
            "127.0.0.1:10911"]
        nursery.cancel_scope.cancel()
