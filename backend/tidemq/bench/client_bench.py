"""Client workloads of DESIGN.md section 10 against a broker in its own process.

    W1 produce  1 KiB messages with acknowledgements, a bounded window of sends in flight
                (``--in-flight``): ``submit()`` from one task (default), or ``--api send``:
                that many tasks each awaiting ``send()``; also ``send_batch`` (``--batch``)
    W2 consume  the same messages read back from the start by one consumer, each acked
    W3 latency  end-to-end (send -> receive) at a fixed rate, p50 / p99 / p99.9

The client runs in this process, the broker in another (``broker_process``). Latency uses
a monotonic timestamp written into each body by the sender (same host, same clock).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from tidemq.bench.broker_process import broker_process
from tidemq.client import Consumer, PendingSend, Producer

BODY_BYTES = 1024
_STAMP = struct.Struct("<d")


@dataclass(slots=True)
class ClientBenchResult:
    workload: str
    messages: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


async def produce(broker: str, topic: str, messages: int, in_flight: int,
                  batch: int, api: str = "submit") -> ClientBenchResult:
    """W1 with ``in_flight`` messages under way at most. ``api``: ``submit`` (one task
    hands messages over, every PendingSend's result is checked) or ``send`` (``in_flight``
    tasks each awaiting ``send()``); with ``batch`` > 1, ``in_flight // batch`` tasks each
    awaiting ``send_batch`` of ``batch``."""
    body = os.urandom(BODY_BYTES)
    async with Producer(brokers=[broker], max_in_flight=max(in_flight, 1)) as producer:
        await producer.send(topic, body)  # route warm-up (not timed)
        if batch == 1 and api == "submit":
            acked = 0

            def count(pending: PendingSend) -> None:
                nonlocal acked
                pending.result()  # raises if the send failed
                acked += 1

            start = time.perf_counter()
            for _ in range(messages):
                (await producer.submit(topic, body)).add_done_callback(count)
            await producer.flush()
            seconds = time.perf_counter() - start
            if acked != messages:
                raise RuntimeError(f"{messages - acked} of {messages} sends failed")
            return ClientBenchResult(f"W1 produce 1 KiB, submit(), {in_flight} in flight",
                                     messages, seconds)
        senders = max(1, in_flight // batch) if batch > 1 else in_flight
        per_sender = math.ceil(messages / senders / batch)

        async def sender() -> None:
            for _ in range(per_sender):
                if batch == 1:
                    await producer.send(topic, body)
                else:
                    await producer.send_batch(topic, [body] * batch)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(senders):
                nursery.start_soon(sender)
        seconds = time.perf_counter() - start
    how = f"{senders} concurrent send()" if batch == 1 else \
        f"{senders} concurrent send_batch() of {batch}"
    return ClientBenchResult(f"W1 produce 1 KiB, {how}", per_sender * senders * batch,
                             seconds)


async def consume(broker: str, topic: str, messages: int) -> ClientBenchResult:
    received = 0
    async with Consumer(f"bench-{os.getpid()}-{time.monotonic_ns()}", {topic: "*"},
                        brokers=[broker], start_from="earliest",
                        pull_batch_size=256, prefetch_per_queue=2048) as consumer:
        start = time.perf_counter()
        while received < messages:
            batch = await consumer.receive(max=1024, wait=10)
            if not batch:
                break
            for message in batch:
                await message.ack()
            received += len(batch)
        seconds = time.perf_counter() - start
    return ClientBenchResult("W2 consume 1 KiB from the start, acked", received, seconds)


async def latency(broker: str, topic: str, rate_per_s: int, duration_s: float
                  ) -> ClientBenchResult:
    samples_ms: list[float] = []
    padding = bytes(BODY_BYTES - _STAMP.size)
    total = int(rate_per_s * duration_s)
    async with Consumer(f"latency-{os.getpid()}", {topic: "*"}, brokers=[broker],
                        start_from="latest") as consumer, \
            Producer(brokers=[broker]) as producer:
        await producer.send(topic, _STAMP.pack(0.0) + padding)  # warm-up, not a sample
        await trio.sleep(2)  # the consumer owns its queues and is long-polling
        # What a latency-sensitive application does after start-up (docs/client.md): keep
        # the start-up heap out of full collections, whose pauses are the latency tail.
        gc.collect()
        gc.freeze()

        async def receive() -> None:
            while len(samples_ms) < total:
                for message in await consumer.receive(max=256, wait=5):
                    sent = _STAMP.unpack_from(message.body)[0]
                    if sent:
                        samples_ms.append((time.perf_counter() - sent) * 1000)
                    await message.ack()

        async def send_at_rate() -> None:
            # Each message at its own time, sleeping only when it is over a millisecond
            # away: the pacing of the peer suite's publish_at_rate (bursts of 5 every 5 ms,
            # as before, queued 4 of every 5 messages behind the first).
            begin = time.perf_counter()
            async with trio.open_nursery() as senders:
                for sent in range(total):
                    delay = begin + sent / rate_per_s - time.perf_counter()
                    if delay > 0.001:
                        await trio.sleep(delay)
                    body = _STAMP.pack(time.perf_counter()) + padding
                    senders.start_soon(producer.send, topic, body)

        start = time.perf_counter()
        with trio.move_on_after(duration_s + 30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                nursery.start_soon(send_at_rate)
        seconds = time.perf_counter() - start
    samples_ms.sort()
    extra = {f"p{label}_ms": round(_percentile(samples_ms, q), 3)
             for label, q in (("50", 0.5), ("99", 0.99), ("99.9", 0.999))}
    extra["max_ms"] = round(samples_ms[-1], 3) if samples_ms else math.nan
    extra["rate_per_s"] = rate_per_s
    return ClientBenchResult(f"W3 latency at {rate_per_s} msg/s", len(samples_ms), seconds,
                             extra)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brokers", help="use this running broker instead of starting one")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--in-flight", type=int, default=1000,
                        help="the bounded in-flight window (sends under way at once; "
                             "with --api send or --batch, that many tasks)")
    parser.add_argument("--batch", type=int, default=1, help="messages per send")
    parser.add_argument("--api", choices=["submit", "send"], default="submit",
                        help="W1 single sends: submit() from one task (default) or "
                             "send() from --in-flight tasks")
    parser.add_argument("--rate", type=int, default=5_000, help="W3 messages per second")
    parser.add_argument("--duration", type=float, default=20.0, help="W3 seconds")
    parser.add_argument("--flush", choices=["async", "sync"], default="async")
    parser.add_argument("--dir", default=".", help="where the broker keeps its data")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer messages, shorter W3")


def run_from_args(args: argparse.Namespace) -> int:
    workload: str = args.bench_action
    if args.quick:
        args.messages, args.duration = min(args.messages, 30_000), min(args.duration, 5.0)
    topic = f"bench-{workload}-{os.getpid()}"
    if args.brokers:
        results = trio.run(_workload, workload, args.brokers, topic, args)
    else:
        with broker_process(args.dir, flush=args.flush) as broker:
            results = trio.run(_workload, workload, broker, topic, args)
    for result in results:
        line = {"workload": result.workload, "messages": result.messages,
                "seconds": round(result.seconds, 3), "msg_per_s": round(result.rate),
                "mb_per_s": round(result.rate * BODY_BYTES / 1e6, 1), **result.extra}
        print(json.dumps(line))
    if args.json:
        with open(args.json, "w") as file:
            json.dump([asdict(result) | {"rate": result.rate} for result in results], file,
                      indent=2)
    return 0


async def _workload(workload: str, broker: str, topic: str, args: argparse.Namespace
                    ) -> list[ClientBenchResult]:
    if workload == "produce":
        return [await produce(broker, topic, args.messages, args.in_flight, args.batch,
                              args.api)]
    if workload == "consume":
        produced = await produce(broker, topic, args.messages, args.in_flight,
                                 max(args.batch, 100))
        return [produced, await consume(broker, topic, produced.messages)]
    return [await latency(broker, topic, args.rate, args.duration)]
