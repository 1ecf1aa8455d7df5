"""RabbitMQ (rabbitmq-server 3.10 from Debian, client aio-pika) with publisher confirms.

Server: one node named for the run, its own epmd, mnesia, logs and config under the run's
temporary directory, every listener on 127.0.0.1. Queues: ``x-queue-type=stream`` (ack
once the stream's log has the message; streams do not fsync per message) or
``x-queue-type=quorum`` (ack once the Raft WAL is synced), both durable, persistent
messages, declared over AMQP 0-9-1 (no stream plugin).

Workloads: W1/W5/W6 ``in_flight`` concurrent publishes, each awaiting its confirm (aio-pika
channels with ``publisher_confirms``); W2 a consumer with prefetch 1000 from the start
(``x-stream-offset=first`` for the stream), acking every message (``multiple=true`` per
100); W3 publishes at a fixed
rate and a consumer that acks.
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
RABBIT = "/usr/lib/rabbitmq/bin/rabbitmq-server"


@contextlib.contextmanager
def server(variant: str, workdir: str, trace_file: str | None = None) -> Iterator[str]:
    """One node for both variants (the queue type is chosen per queue)."""
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    base = os.path.join(workdir, "rabbitmq")
    os.makedirs(base, exist_ok=True)
    config = os.path.join(base, "rabbitmq.conf")
    with open(config, "w", encoding="ascii") as file:
        file.write(f"listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n")
    plugins = os.path.join(base, "enabled_plugins")
    with open(plugins, "w", encoding="ascii") as file:
        file.write("[].\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": base,  # the Erlang cookie lives here
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "RABBITMQ_NODENAME": f"bench{os.getpid()}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
        "RABBITMQ_LOG_BASE": os.path.join(base, "log"), "RABBITMQ_LOGS": "-",
        "RABBITMQ_CONFIG_FILE": config, "RABBITMQ_ENABLED_PLUGINS_FILE": plugins,
        "RABBITMQ_PID_FILE": os.path.join(base, "pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_PORT": str(epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    # Our own epmd, in the foreground: the node would otherwise start a daemon that
    # outlives the run.
    with server_process(["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"],
                        log_path=os.path.join(base, "epmd.log"), env=env) as epmd:
        wait_for_port(epmd_port, epmd, 10)
        with server_process([RABBIT], log_path=os.path.join(base, "rabbitmq.log"),
                            trace_file=trace_file, env=env, stop_timeout_s=60) as process:
            wait_for_port(port, process, 90)
            time.sleep(1.0)  # the listener opens slightly before the node is ready
            yield f"127.0.0.1:{port}"


def _queue_type(variant: str) -> str:
    return {"rabbitmq-stream": "stream", "rabbitmq-quorum": "quorum"}[variant]


async def _connect(address: str) -> Any:
    import aio_pika

    host, port = address.rsplit(":", 1)
    return await aio_pika.connect(host=host, port=int(port), login="guest",
                                  password="guest")


async def _declare(channel: Any, name: str, variant: str) -> Any:
    return await channel.declare_queue(
        name, durable=True, arguments={"x-queue-type": _queue_type(variant)})


async def produce_workload(variant: str, address: str, workload: str, params: Params, *,
                           queue: str, body_bytes: int, messages: int, topics: int = 1,
                           producers: int = 1) -> dict[str, Any]:
    import aio_pika

    body = os.urandom(body_bytes)
    names = [f"{queue}-{n}" for n in range(topics)] if topics > 1 else [queue]
    connections = [await _connect(address) for _ in range(producers)]
    try:
        channels = [await connection.channel(publisher_confirms=True)
                    for connection in connections]
        for name in names:
            await _declare(channels[0], name, variant)
        exchanges = [channel.default_exchange for channel in channels]
        warm = max(1, params.warmup // len(names))
        for name in names:
            await asyncio.gather(*(exchanges[0].publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=name) for _ in range(warm)))
        per_producer = max(1, params.in_flight // producers)
        remaining = messages
        acked = 0
        deadline = time.perf_counter() + params.max_seconds

        async def publisher(exchange: Any, first: int) -> None:
            nonlocal remaining, acked
            index = first
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                await exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=names[index % len(names)])
                index += 1
                acked += 1

        wall = time.time()
        cpu = cpu_snapshot()
        start = time.perf_counter()
        await asyncio.gather(*(publisher(exchange, p * per_producer + slot)
                               for p, exchange in enumerate(exchanges)
                               for slot in range(per_producer)))
        seconds = time.perf_counter() - start
        usage = cpu_since(cpu)
        return result(variant, workload, acked, seconds, body_bytes,
                      window=[wall, time.time()], **usage, in_flight=params.in_flight,
                      stored=acked + warm * len(names))
    finally:
        for connection in connections:
            await connection.close()


async def consume_workload(variant: str, address: str, params: Params, *, queue: str,
                           expected: int) -> dict[str, Any]:
    connection = await _connect(address)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        declared = await _declare(channel, queue, variant)
        received = 0
        done = asyncio.Event()

        async def on_message(message: Any) -> None:
            # Every message is acknowledged: one basic.ack with multiple=true per 100
            # deliveries (and for the last), as Redis acks a batch with one XACK.
            nonlocal received
            received += 1
            if received % 100 == 0 or received >= expected:
                await message.ack(multiple=True)
            if received >= expected:
                done.set()

        arguments = {"x-stream-offset": "first"} if variant == "rabbitmq-stream" else {}
        cpu = cpu_snapshot()
        start = time.perf_counter()
        tag = await declared.consume(on_message, arguments=arguments)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=params.max_seconds * 2)
        seconds = time.perf_counter() - start
        usage = cpu_since(cpu)
        await declared.cancel(tag)
        return result(variant, "W2", min(received, expected), seconds, params.body_bytes, **usage)
    finally:
        await connection.close()


async def latency_workload(variant: str, address: str, params: Params,
                           name: str) -> dict[str, Any]:
    import aio_pika

    queue = f"{name}-{_queue_type(variant)}"
    padding = bytes(params.body_bytes - _STAMP.size)
    total = int(params.latency_rate * params.latency_seconds)
    samples: list[float] = []
    producer_connection = await _connect(address)
    consumer_connection = await _connect(address)
    try:
        producer = await producer_connection.channel(publisher_confirms=True)
        consumer = await consumer_connection.channel()
        await consumer.set_qos(prefetch_count=1000)
        declared = await _declare(consumer, queue, variant)
        finished = asyncio.Event()

        async def on_message(message: Any) -> None:
            now = time.perf_counter()
            sent = _STAMP.unpack_from(message.body)[0]
            if sent:
                samples.append((now - sent) * 1000)
            await message.ack()
            if len(samples) >= total:
                finished.set()

        arguments = {"x-stream-offset": "next"} if variant == "rabbitmq-stream" else {}
        await declared.consume(on_message, arguments=arguments)
        exchange = producer.default_exchange
        await exchange.publish(aio_pika.Message(_STAMP.pack(0.0) + padding), routing_key=queue)
        await asyncio.sleep(1)
        start = await publish_at_rate(
            total, params.latency_rate, padding,
            lambda body: exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue))
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
    kind = _queue_type(variant)
    await run_workloads(
        workloads, params, emit,
        latency=lambda name: latency_workload(variant, address, params, name),
        produce=lambda workload, name, **kw: produce_workload(
            variant, address, workload, params, queue=f"{name}-{kind}", **kw),
        consume=lambda name, **kw: consume_workload(variant, address, params,
                                                    queue=f"{name}-{kind}", **kw))
