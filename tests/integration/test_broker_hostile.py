"""Hostile input: every bad peer gets a typed error or a close, and a normal producer and
consumer running beside them are unaffected."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import trio
from hostile_wire import frame, hello, read_until_closed

from tidemq.broker.node import Broker
from tidemq.config import BrokerConfig, StoreConfig, TidemqConfig
from tidemq.net import connect
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.record import encode_draft, iter_records

SEED = random.randrange(2**32)

def config(tmp_path: Path) -> TidemqConfig:
    return TidemqConfig(
        broker=BrokerConfig(port=0, auto_create_topics=True, hello_timeout_ms=1500,
                            frame_stall_timeout_ms=1500),
        store=StoreConfig(data_dir=str(tmp_path / "data"), segment_size_bytes=8 << 20,
                          max_message_size_bytes=256 << 10, append_batch_bytes_max=1 << 20,
                          index_slots=1024, index_entries_per_file=16384))


async def normal_traffic(host: str, port: int, rounds: int) -> int:
    """A producer and a consumer doing ordinary work; returns messages consumed."""
    consumed = 0
    async with await connect(host, port, client_id="normal") as client:
        for index in range(rounds):
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "calm", "queue_id": 0},
                              encode_draft("calm", b"%d" % index))
            pulled = await client.call(RequestCode.PULL_MESSAGE, {
                "group": "g", "topic": "calm", "queue_id": 0, "offset": consumed})
            bodies = [r.body for r in iter_records(pulled.body)]
            assert bodies == [b"%d" % i for i in range(consumed, consumed + len(bodies))]
            consumed += len(bodies)
            await trio.sleep(0.01)
    return consumed


async def test_bad_peers_are_closed_and_others_unaffected(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    broker = Broker(config(tmp_path))
    async with trio.open_nursery() as nursery:
        started = await nursery.start(broker.run)
        host, port = started.host, started.port
        results: dict[str, bytes] = {}

        async def attack(name: str, payload: bytes) -> None:
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(payload)
                results[name] = await read_until_closed(stream, limit_s=10)

        idle = [await trio.open_tcp_stream(host, port) for _ in range(500)]
        consumed: list[int] = []

        async def run_normal() -> None:
            consumed.append(await normal_traffic(host, port, rounds=100))

        async with trio.open_nursery() as attackers:
            attackers.start_soon(run_normal)
            attackers.start_soon(attack, "random", rng.randbytes(4096))
            attackers.start_soon(attack, "random-after-hello", hello() + rng.randbytes(4096))
            attackers.start_soon(attack, "half-frame", hello() + frame(
                {"code": int(RequestCode.SEND_MESSAGE), "opaque": 2, "flags": 0,
                 "fields": {"topic": "calm", "queue_id": 0}}, bytes(1000))[:700])
            attackers.start_soon(attack, "oversize", hello() + struct.pack(
                ">II", 1 << 30, 16))
            attackers.start_soon(attack, "not-hello-first", frame(
                {"code": int(RequestCode.LIST_TOPICS), "opaque": 1, "flags": 0,
                 "fields": {}}))
        # Idle connections that never said HELLO are closed by the hello timeout.
        for stream in idle[:20]:
            assert await read_until_closed(stream, limit_s=10) == b""
        for stream in idle:
            await stream.aclose()
        assert consumed == [100]
        # Wrong field types on a healthy connection get typed errors; it stays usable.
        async with await connect(host, port, client_id="typed") as client:
            for bad in ({"topic": 7}, {"topic": "calm", "queue_id": "x"}, {"topic": None}):
                response = await client.request(RequestCode.SEND_MESSAGE, bad, b"")
                assert response.code != 0
                assert response.remark
            listed = await client.call(RequestCode.LIST_TOPICS)
            assert [t["name"] for t in listed.fields["topics"]] == ["calm"]  # type: ignore[index, union-attr]
        nursery.cancel_scope.cancel()
    # The broken peers got a close (some also an error frame first), never a hang.
    assert set(results) == {"random", "random-after-hello", "half-frame", "oversize",
                            "not-hello-first"}
