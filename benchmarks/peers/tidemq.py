"""TideMQ through the existing harness: the broker command of ``tidemq.bench.
broker_process`` (its own process, 1 GiB segments, ``flush`` async or sync), the SDK on
Trio in the client process, W3 by ``tidemq.bench.client_bench.latency``.

Workloads: W1/W5 ``submit()`` from one task with ``max_in_flight = in_flight``, every
PendingSend's outcome counted by a callback (the SDK's asynchronous send, as nats-py's
``publish_async``; the SDK coalesces what is in flight per queue), and the ``-batch`` form
with ``send_batch`` of ``batch`` bodies, ``in_flight / batch`` batches in flight; W2 one
consumer from the start, each message acked; W6 16 topics of 8 queues (created with Admin),
16 Producer objects (own connections) with ``in_flight / 16`` each, used by ``in_flight /
16`` tasks each calling ``send()``: with ~4 messages in flight per topic, ``submit()`` from
one task per producer gathered 1.9 messages per request against 3.6 with tasks, and gave
0.55-0.75x their throughput (measured 2026-11-25).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import trio

from peers.common import (
    Params,
    cpu_since,
    cpu_snapshot,
    result,
    run_workloads,
    server_process,
)
from tidemq.bench.broker_process import broker_command
from tidemq.bench.client_bench import latency as harness_latency
from tidemq.client import Admin, Consumer, PendingSend, Producer


@contextlib.contextmanager
def server(variant: str, workdir: str, trace_file: str | None = None) -> Iterator[str]:
    flush = {"tidemq-async": "async", "tidemq-sync": "sync"}[variant]
    data = os.path.join(workdir, "tidemq-data")
    os.makedirs(data, exist_ok=True)
    with server_process(broker_command(data, flush=flush),
                        log_path=os.path.join(workdir, "tidemq.log"), trace_file=trace_file,
                        stdout=subprocess.PIPE, stop_timeout_s=60) as process:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError("the TideMQ broker did not start (see tidemq.log)")
        yield str(json.loads(line)["broker"])


async def produce_workload(variant: str, address: str, workload: str, params: Params, *,
                           topic: str, body_bytes: int, messages: int, batch: int = 1,
                           topics: int = 1, producers: int = 1) -> dict[str, Any]:
    body = os.urandom(body_bytes)
    names = [f"{topic}-{n}" for n in range(topics)] if topics > 1 else [topic]
    if topics > 1:
        async with Admin(brokers=[address]) as admin:
            for name in names:
                await admin.create_topic(name, queue_count=params.queues_per_topic)
    senders_per_producer = max(1, params.in_flight // batch // producers)
    window = params.in_flight if producers == 1 else max(1, params.in_flight // producers)
    submits = batch == 1  # W6 too: one submitting task per producer, as W1
    remaining = messages
    acked = 0
    failed = 0
    deadline = math.inf
    warm = max(1, params.warmup // len(names))
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            Producer(brokers=[address], max_in_flight=window))
            for _ in range(producers)]
        for name in names:  # routes and first appends, not timed
            await clients[0].send_batch(name, [body] * warm)

        def settled(pending: PendingSend) -> None:
            nonlocal acked, failed
            if pending.exception() is None:
                acked += 1
            else:
                failed += 1

        async def submitter(client: Producer, first: int) -> None:
            nonlocal remaining
            index = first
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                pending = await client.submit(names[index % len(names)], body)
                pending.add_done_callback(settled)
                index += 1
            await client.flush()

        async def sender(client: Producer, first: int) -> None:
            nonlocal remaining, acked
            index = first
            while remaining > 0 and time.perf_counter() < deadline:
                count = min(batch, remaining)
                remaining -= count
                name = names[index % len(names)]
                index += 1
                if count == 1:
                    await client.send(name, body)
                else:
                    await client.send_batch(name, [body] * count)
                acked += count

        wall = time.time()
        cpu = cpu_snapshot()
        start = time.perf_counter()
        deadline = start + params.max_seconds
        async with trio.open_nursery() as nursery:
            for number, client in enumerate(clients):
                if submits:
                    nursery.start_soon(submitter, client, number)
                    continue
                for slot in range(senders_per_producer):
                    nursery.start_soon(sender, client, number * senders_per_producer + slot)
        seconds = time.perf_counter() - start
        usage = cpu_since(cpu)
    return result(variant, workload, acked, seconds, body_bytes, window=[wall, time.time()],
                  **usage, in_flight=params.in_flight, batch=batch,
                  stored=acked + warm * len(names), failed=failed,
                  **({"error": f"{failed} sends failed"} if failed else {}))


async def consume_workload(variant: str, address: str, params: Params, *, topic: str,
                           expected: int) -> dict[str, Any]:
    received = 0
    deadline = time.perf_counter() + params.max_seconds * 2
    async with Consumer(f"bench-w2-{os.getpid()}", {topic: "*"}, brokers=[address],
                        start_from="earliest", pull_batch_size=256,
                        prefetch_per_queue=2048) as consumer:
        cpu = cpu_snapshot()
        start = time.perf_counter()
        while received < expected and time.perf_counter() < deadline:
            batch = await consumer.receive(max=1024, wait=5)
            if not batch:
                break
            for message in batch:
                await message.ack()
            received += len(batch)
        seconds = time.perf_counter() - start
        usage = cpu_since(cpu)
    return result(variant, "W2", received, seconds, params.body_bytes, **usage)


async def latency_workload(variant: str, address: str, params: Params,
                           name: str) -> dict[str, Any]:
    measured = await harness_latency(address, f"{name}-{os.getpid()}", params.latency_rate,
                                     params.latency_seconds)
    extra = measured.extra
    return result(variant, "W3", measured.messages, measured.seconds, params.body_bytes,
                  rate_per_s=params.latency_rate, p50_ms=extra["p50_ms"],
                  p99_ms=extra["p99_ms"], p999_ms=extra["p99.9_ms"])


async def run(variant: str, address: str, workloads: list[str], params: Params,
              emit: Any) -> None:
    await run_workloads(
        workloads, params, emit, batches=True,
        latency=lambda name: latency_workload(variant, address, params, name),
        produce=lambda workload, name, **kw: produce_workload(
            variant, address, workload, params, topic=name, **kw),
        consume=lambda name, **kw: consume_workload(variant, address, params, topic=name, **kw))
