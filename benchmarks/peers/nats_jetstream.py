"""NATS JetStream (nats-server 2.9 from Debian, client nats-py).

Server: ``nats-server -js -sd DIR -a 127.0.0.1 -p PORT``; streams with file storage (the
default), one subject per stream. A PubAck means the message is in the stream's block
file (page cache); 2.9 syncs on a timer (``sync_interval``, 2 minutes by default).

Workloads: W1/W5/W6 ``publish_async`` with ``publish_async_max_pending = in_flight`` (per
connection: ``in_flight / producers``), every PubAck awaited; W2 a durable pull consumer,
``fetch(1000)``, each message acked; W3 publishes at a fixed rate and a push consumer that
acks each message.
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

_STAMP = struct.Struct("<d")


@contextlib.contextmanager
def server(variant: str, workdir: str, trace_file: str | None = None) -> Iterator[str]:
    port = free_port()
    store = os.path.join(workdir, "nats-store")
    os.makedirs(store, exist_ok=True)
    command = ["nats-server", "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)]
    with server_process(command, log_path=os.path.join(workdir, "nats.log"),
                        trace_file=trace_file) as process:
        wait_for_port(port, process, 20)
        yield f"127.0.0.1:{port}"


async def _connect(address: str) -> Any:
    import nats

    return await nats.connect(f"nats://{address}", max_reconnect_attempts=0,
                              pending_size=64 * 1024 * 1024)


async def _stream(js: Any, name: str) -> None:
    from nats.js.api import StorageType

    await js.add_stream(name=name, subjects=[name.lower()], storage=StorageType.FILE)


async def produce_workload(variant: str, address: str, workload: str, params: Params, *,
                           stream: str, body_bytes: int, messages: int, topics: int = 1,
                           producers: int = 1) -> dict[str, Any]:
    body = os.urandom(body_bytes)
    names = [f"{stream}_{n}" for n in range(topics)] if topics > 1 else [stream]
    connections = [await _connect(address) for _ in range(producers)]
    window = max(1, params.in_flight // producers)
    try:
        contexts = [connection.jetstream(publish_async_max_pending=window)
                    for connection in connections]
        for name in names:
            await _stream(contexts[0], name)
        warm = max(1, params.warmup // len(names))
        for name in names:
            await asyncio.gather(*(contexts[0].publish(name.lower(), body)
                                   for _ in range(warm)))
        remaining = messages
        acked = 0
        failed = 0
        deadline = time.perf_counter() + params.max_seconds

        def settled(future: asyncio.Future[Any]) -> None:
            nonlocal acked, failed
            if future.cancelled() or future.exception() is not None:
                failed += 1
            else:
                acked += 1

        async def producer(js: Any, first: int) -> None:
            nonlocal remaining
            index = first
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                future = await js.publish_async(names[index % len(names)].lower(), body)
                future.add_done_callback(settled)
                index += 1
            await js.publish_async_completed()

        wall = time.time()
        cpu = cpu_snapshot()
        start = time.perf_counter()
        await asyncio.gather(*(producer(js, n) for n, js in enumerate(contexts)))
        seconds = time.perf_counter() - start
        usage = cpu_since(cpu)
        return result(variant, workload, acked, seconds, body_bytes,
                      window=[wall, time.time()], **usage, in_flight=params.in_flight,
                      stored=acked + warm * len(names), failed=failed,
                      **({"error": f"{failed} publishes failed"} if failed else {}))
    finally:
        for connection in connections:
            await connection.close()


async def consume_workload(variant: str, address: str, params: Params, *, stream: str,
                           expected: int) -> dict[str, Any]:
    connection = await _connect(address)
    try:
        js = connection.jetstream()
        subscription = await js.pull_subscribe(stream.lower(), durable="w2", stream=stream)
        received = 0
        deadline = time.perf_counter() + params.max_seconds * 2
        cpu = cpu_snapshot()
        start = time.perf_counter()
        while received < expected and time.perf_counter() < deadline:
            try:
                batch = await subscription.fetch(min(1000, expected - received), timeout=2)
            except TimeoutError:
                break
            for message in batch:
                await message.ack()
            received += len(batch)
        await connection.flush()
        seconds = time.perf_counter() - start
        usage = cpu_since(cpu)
        return result(variant, "W2", received, seconds, params.body_bytes, **usage)
    finally:
        await connection.close()


async def latency_workload(variant: str, address: str, params: Params,
                           name: str) -> dict[str, Any]:
    padding = bytes(params.body_bytes - _STAMP.size)
    total = int(params.latency_rate * params.latency_seconds)
    samples: list[float] = []
    producer_connection = await _connect(address)
    consumer_connection = await _connect(address)
    try:
        producer = producer_connection.jetstream()
        consumer = consumer_connection.jetstream()
        await _stream(producer, name.upper())
        finished = asyncio.Event()

        async def on_message(message: Any) -> None:
            now = time.perf_counter()
            sent = _STAMP.unpack_from(message.data)[0]
            if sent:
                samples.append((now - sent) * 1000)
            await message.ack()
            if len(samples) >= total:
                finished.set()

        await consumer.subscribe(name, cb=on_message, manual_ack=True, durable=name,
                                 pending_msgs_limit=100_000)
        await producer.publish(name, _STAMP.pack(0.0) + padding)
        await asyncio.sleep(1)
        start = await publish_at_rate(total, params.latency_rate, padding,
                                      lambda body: producer.publish(name, body))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(finished.wait(), timeout=10)
        seconds = time.perf_counter() - start
        return result(variant, "W3", len(samples), seconds, params.body_bytes,
                      rate_per_s=params.latency_rate, **percentiles(samples))
    finally:
        await producer_connection.close()
        await consumer_connection.close()


async def run(variant: str, address: str, workloads: list[str], params: Params,
              emit: Any) -> None:
    await run_workloads(
        workloads, params, emit,
        latency=lambda name: latency_workload(variant, address, params, name),
        produce=lambda workload, name, **kw: produce_workload(
            variant, address, workload, params, stream=name.upper(), **kw),
        consume=lambda name, **kw: consume_workload(variant, address, params,
                                                    stream=name.upper(), **kw))
