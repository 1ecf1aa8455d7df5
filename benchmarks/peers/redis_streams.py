"""Redis Streams (redis-server from Debian, client redis-py's asyncio API).

Server: ``appendonly yes`` with ``appendfsync everysec`` (ack = written to the AOF, fsync
within a second) or ``always`` (Redis fsyncs the AOF before it sends the replies of an
event-loop turn); no RDB snapshots. One stream key per topic.

Workloads: W1/W5/W6 ``XADD`` in pipelines (``in_flight / producers`` commands per
pipeline, ``in_flight`` commands outstanding in all); W2 ``XREADGROUP`` of 1000 entries,
each acknowledged with ``XACK`` (sent with the next read); W3 ``XADD`` at a fixed rate and
a blocking ``XREADGROUP`` reader that acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

from peers.common import (
    Params,
    cpu_since,
    cpu_snapshot,
    free_port,
    percentiles,
    publish_at_rate,
    result,
    run_workloads,
    server_process,
    wait_for_port,
)

FIELD = b"d"
_STAMP = struct.Struct("<d")


@contextlib.contextmanager
def server(variant: str, workdir: str, trace_file: str | None = None) -> Iterator[str]:
    fsync = {"redis-everysec": "everysec", "redis-always": "always"}[variant]
    port = free_port()
    data = os.path.join(workdir, "redis-data")
    os.makedirs(data, exist_ok=True)
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", data,
               "--appendonly", "yes", "--appendfsync", fsync, "--save", "",
               "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]
    with server_process(command, log_path=os.path.join(workdir, "redis.log"),
                        trace_file=trace_file) as process:
        wait_for_port(port, process, 20)
        yield f"127.0.0.1:{port}"


def _client(address: str) -> Any:
    import redis.asyncio as redis

    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), max_connections=64)


async def _produce(clients: list[Any], keys: list[str], body: bytes, total: int,
                   params: Params) -> tuple[int, float]:
    """Pipelines of XADD from every client, ``in_flight`` commands outstanding in all."""
    per_pipeline = max(1, params.in_flight // len(clients))
    remaining = total
    acked = 0
    deadline = time.perf_counter() + params.max_seconds

    async def producer(number: int, client: Any) -> None:
        nonlocal remaining, acked
        key_index = number
        while remaining > 0 and time.perf_counter() < deadline:
            count = min(per_pipeline, remaining)
            remaining -= count
            pipe = client.pipeline(transaction=False)
            for _ in range(count):
                pipe.xadd(keys[key_index % len(keys)], {FIELD: body})
                key_index += 1
            replies = await pipe.execute()
            acked += len(replies)

    start = time.perf_counter()
    await asyncio.gather(*(producer(n, c) for n, c in enumerate(clients)))
    return acked, time.perf_counter() - start


async def _warm(client: Any, key: str, body: bytes, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for _ in range(count):
        pipe.xadd(key, {FIELD: body})
    await pipe.execute()


async def produce_workload(variant: str, address: str, workload: str, params: Params,
                           *, key: str, body_bytes: int, messages: int,
                           topics: int = 1, producers: int = 1) -> dict[str, Any]:
    body = os.urandom(body_bytes)
    clients = [_client(address) for _ in range(producers)]
    keys = [f"{key}-{n}" for n in range(topics)] if topics > 1 else [key]
    try:
        for k in keys:
            await _warm(clients[0], k, body, max(1, params.warmup // len(keys)))
        wall = time.time()
        cpu = cpu_snapshot()
        acked, seconds = await _produce(clients, keys, body, messages, params)
        usage = cpu_since(cpu)
        return result(variant, workload, acked, seconds, body_bytes,
                      window=[wall, time.time()], **usage, in_flight=params.in_flight,
                      stored=acked + len(keys) * max(1, params.warmup // len(keys)))
    finally:
        for client in clients:
            await client.aclose()


async def consume_workload(variant: str, address: str, params: Params, *, key: str,
                           expected: int) -> dict[str, Any]:
    client = _client(address)
    try:
        await client.xgroup_create(key, "w2", id="0")
        received = 0
        pending: list[bytes] = []
        deadline = time.perf_counter() + params.max_seconds * 2
        cpu = cpu_snapshot()
        start = time.perf_counter()
        while received < expected and time.perf_counter() < deadline:
            pipe = client.pipeline(transaction=False)
            if pending:
                pipe.xack(key, "w2", *pending)
            pipe.xreadgroup("w2", "c1", {key: ">"}, count=1000)
            replies = await pipe.execute()
            batch = replies[-1][0][1] if replies[-1] else []
            if not batch:
                break
            pending = [entry_id for entry_id, _ in batch]
            received += len(batch)
        if pending:
            await client.xack(key, "w2", *pending)
        seconds = time.perf_counter() - start
        usage = cpu_since(cpu)
        return result(variant, "W2", received, seconds, params.body_bytes, **usage)
    finally:
        await client.aclose()


async def latency_workload(variant: str, address: str, params: Params,
                           name: str) -> dict[str, Any]:
    key = name
    padding = bytes(params.body_bytes - _STAMP.size)
    total = int(params.latency_rate * params.latency_seconds)
    producer, reader = _client(address), _client(address)
    samples: list[float] = []
    try:
        await producer.xadd(key, {FIELD: _STAMP.pack(0.0) + padding})
        await reader.xgroup_create(key, "w3", id="$")

        async def receive() -> None:
            while len(samples) < total:
                reply = await reader.xreadgroup("w3", "c1", {key: ">"}, count=256, block=200)
                if not reply:
                    continue
                entries = reply[0][1]
                now = time.perf_counter()
                for _, fields in entries:
                    sent = _STAMP.unpack_from(fields[FIELD])[0]
                    if sent:
                        samples.append((now - sent) * 1000)
                await reader.xack(key, "w3", *[entry_id for entry_id, _ in entries])

        receiver = asyncio.ensure_future(receive())
        start = await publish_at_rate(total, params.latency_rate, padding,
                                      lambda body: producer.xadd(key, {FIELD: body}))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(receiver, timeout=10)
        seconds = time.perf_counter() - start
        return result(variant, "W3", len(samples), seconds, params.body_bytes,
                      rate_per_s=params.latency_rate, **percentiles(samples))
    finally:
        await producer.aclose()
        await reader.aclose()


async def run(variant: str, address: str, workloads: list[str], params: Params,
              emit: Any) -> None:
    await run_workloads(
        workloads, params, emit,
        latency=lambda name: latency_workload(variant, address, params, name),
        produce=lambda workload, name, **kw: produce_workload(
            variant, address, workload, params, key=name, **kw),
        consume=lambda name, **kw: consume_workload(variant, address, params, key=name, **kw))
