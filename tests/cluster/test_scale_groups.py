"""Consumer groups at scale, against a broker in its own process on 127.0.0.1.

* Clustering: 100,000 messages from 4 concurrent producers (each its own ``Producer``,
  sending batches of 100 one after another, so its messages keep their order in each
  queue) consumed by a group of 3. No failure is injected, so each message must arrive
  exactly once, each queue must be read by one member in offset order, and each producer's
  sequence numbers must increase along each queue.
* Broadcasting: 10,000 messages, 3 consumers of one broadcast group: each sees every
  message exactly once.
* A member joining and one leaving while 20,000 messages stream in (members take a few
  milliseconds per batch before acking, so messages are in hand when queues move):
  nothing is lost; the duplicates (queues changing hands) are counted, printed and
  bounded.

A body is ``(producer id, sequence)`` packed, padded to 64 bytes. Counts and durations are
printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import struct
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import trio
from cluster_broker import RunningBroker, broker_process, log_tail

from tidemq import Admin, Consumer, Message, MessageQueue, Producer

BODY = struct.Struct("<HI")
BODY_BYTES = 64
PRODUCERS = 4
BATCH = 100
CONSUMER_SETTINGS: dict[str, Any] = {
    "heartbeat_interval_ms": 200,
    "commit_interval_ms": 200,
    "pull_batch_size": 64,
    "start_from": "earliest",
}

WORK_S = 0.005
"""Join/leave: time a member spends on each batch it receives before acking it."""

pytestmark = pytest.mark.slow


@dataclass(frozen=True, slots=True)
class Received:
    consumer: int
    queue_id: int
    queue_offset: int
    producer: int
    sequence: int


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RunningBroker]:
    log_path = tmp_path / "broker.log"
    with broker_process(tmp_path / "data", log_path) as running:
        yield running
        code = running.stop()
        assert code == 0, f"the broker did not stop cleanly ({code}):\n{log_tail(log_path)}"


def body(producer: int, sequence: int) -> bytes:
    return BODY.pack(producer, sequence).ljust(BODY_BYTES, b".")


def received(consumer: int, message: Message) -> Received:
    producer, sequence = BODY.unpack_from(message.body)
    return Received(consumer, message.queue_id, message.queue_offset, producer, sequence)


def make_consumer(address: str, group: str, topic: str, **overrides: Any) -> Consumer:
    return Consumer(group, {topic: "*"}, brokers=[address], **{**CONSUMER_SETTINGS, **overrides})


async def create_topic(address: str, topic: str, queue_count: int) -> set[MessageQueue]:
    async with Admin(brokers=[address]) as admin:
        await admin.create_topic(topic, queue_count=queue_count)
    return {MessageQueue(topic, address, queue_id) for queue_id in range(queue_count)}


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    with trio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110  (counters and statistics have no event)
            await trio.sleep(0.02)
        return
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def split_evenly(consumers: Sequence[Consumer], queues: set[MessageQueue]) -> bool:
    """Every queue held by exactly one consumer, shares differing by at most one."""
    shares = [consumer.statistics().assigned_queues for consumer in consumers]
    flat = [queue for share in shares for queue in share]
    sizes = [len(share) for share in shares]
    return (len(flat) == len(set(flat)) and set(flat) == queues
            and max(sizes) - min(sizes) <= 1)


async def produce(address: str, topic: str, total: int, *, batch: int = BATCH,
                  pause_s: float = 0.0) -> None:
    """``PRODUCERS`` producers at once, each sending its ``total / PRODUCERS`` sequence
    numbers in batches, one batch after another (so each keeps its order per queue)."""
    per_producer = total // PRODUCERS
    assert per_producer * PRODUCERS == total
    assert per_producer % batch == 0

    async def one_producer(producer_id: int) -> None:
        async with Producer(brokers=[address]) as producer:
            for first in range(0, per_producer, batch):
                await producer.send_batch(topic, [body(producer_id, sequence)
                                                  for sequence in range(first, first + batch)])
                if pause_s:
                    await trio.sleep(pause_s)

    async with trio.open_nursery() as nursery:
        for producer_id in range(PRODUCERS):
            nursery.start_soon(one_producer, producer_id)


def check_queue_order(records: Sequence[Received]) -> None:
    """Per consumer and queue, offsets strictly increase in the order received; along each
    queue (by offset), each producer's sequence numbers strictly increase."""
    by_consumer_queue: dict[tuple[int, int], list[int]] = defaultdict(list)
    by_queue: dict[int, list[Received]] = defaultdict(list)
    for record in records:
        by_consumer_queue[record.consumer, record.queue_id].append(record.queue_offset)
        by_queue[record.queue_id].append(record)
    for (consumer, queue_id), offsets in by_consumer_queue.items():
        assert all(a < b for a, b in pairwise(offsets)), \
            f"consumer {consumer} got queue {queue_id} out of order"
    for queue_id, in_queue in by_queue.items():
        last: dict[int, int] = {}
        for record in sorted(in_queue, key=lambda r: r.queue_offset):
            assert record.sequence > last.get(record.producer, -1), \
                f"queue {queue_id}: producer {record.producer} out of order at " \
                f"offset {record.queue_offset}"
            last[record.producer] = record.sequence


async def test_clustering_group_of_3_consumes_100k_messages_exactly_once_in_order(
        broker: RunningBroker) -> None:
    total, topic, group = 100_000, "scale-orders", "scale-billing"
    address = broker.address
    queues = await create_topic(address, topic, 8)
    records: list[Received] = []
    seen: set[tuple[int, int]] = set()
    with trio.fail_after(75):
        async with AsyncExitStack() as stack:
            consumers = [await stack.enter_async_context(make_consumer(address, group, topic))
                         for _ in range(3)]
            await wait_until(lambda: split_evenly(consumers, queues), 10,
                             "the 3 consumers to split the 8 queues")
            shares = [len(c.statistics().assigned_queues) for c in consumers]

            async def drain(index: int) -> None:
                while True:
                    for message in await consumers[index].receive(max=256, wait=1):
                        record = received(index, message)
                        records.append(record)
                        seen.add((record.producer, record.sequence))
                        await message.ack()

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for index in range(3):
                    nursery.start_soon(drain, index)
                await produce(address, topic, total)
                produced_s = time.perf_counter() - started
                await wait_until(lambda: len(seen) >= total, 60, f"{total} distinct messages")
                consumed_s = time.perf_counter() - started
                await trio.sleep(0.5)  # room for a duplicate to show up
                nursery.cancel_scope.cancel()
            assert split_evenly(consumers, queues)  # nothing moved: no member came or went
    per_consumer = Counter(record.consumer for record in records)
    print(f"\nclustering: {total} messages, queues per consumer {shares}, produced in "
          f"{produced_s:.1f} s, all consumed after {consumed_s:.1f} s; received "
          f"{len(records)} (per consumer {dict(sorted(per_consumer.items()))})")
    deliveries = Counter((record.producer, record.sequence) for record in records)
    duplicates = {key: count for key, count in deliveries.items() if count > 1}
    assert not duplicates, f"{len(duplicates)} messages delivered more than once"
    assert set(deliveries) == {(p, s) for p in range(PRODUCERS)
                               for s in range(total // PRODUCERS)}
    assert len(records) == total
    owners: dict[int, set[int]] = defaultdict(set)
    offsets: dict[int, set[int]] = defaultdict(set)
    for record in records:
        owners[record.queue_id].add(record.consumer)
        offsets[record.queue_id].add(record.queue_offset)
    assert set(offsets) == set(range(8))  # round-robin reached every queue
    for queue_id, queue_offsets in offsets.items():
        assert queue_offsets == set(range(len(queue_offsets))), f"gap in queue {queue_id}"
        assert len(owners[queue_id]) == 1, f"queue {queue_id} read by {owners[queue_id]}"
    assert len(per_consumer) == 3
    check_queue_order(records)


async def test_broadcast_consumers_each_see_every_message(broker: RunningBroker) -> None:
    total, topic, group = 10_000, "scale-news", "scale-readers"
    address = broker.address
    queues = await create_topic(address, topic, 8)
    records: list[list[Received]] = [[], [], []]
    with trio.fail_after(40):
        async with AsyncExitStack() as stack:
            consumers = [await stack.enter_async_context(
                make_consumer(address, group, topic, mode="broadcast")) for _ in range(3)]
            for consumer in consumers:
                assert set(consumer.statistics().assigned_queues) == queues

            async def drain(index: int) -> None:
                while True:
                    for message in await consumers[index].receive(max=256, wait=1):
                        records[index].append(received(index, message))
                        await message.ack()

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for index in range(3):
                    nursery.start_soon(drain, index)
                await produce(address, topic, total)
                await wait_until(lambda: all(len(r) >= total for r in records), 30,
                                 f"every consumer to receive {total} messages")
                consumed_s = time.perf_counter() - started
                await trio.sleep(0.5)  # room for a duplicate to show up
                nursery.cancel_scope.cancel()
    print(f"\nbroadcast: {total} messages to each of 3 consumers in {consumed_s:.1f} s; "
          f"received {[len(r) for r in records]}")
    expected = {(p, s) for p in range(PRODUCERS) for s in range(total // PRODUCERS)}
    for index, share in enumerate(records):
        keys = [(record.producer, record.sequence) for record in share]
        assert len(keys) == total, f"consumer {index}: {len(keys)} deliveries"
        assert set(keys) == expected, f"consumer {index} missed messages"
        check_queue_order(share)


async def test_members_joining_and_leaving_mid_stream_lose_nothing(
        broker: RunningBroker) -> None:
    total, topic, group = 20_000, "scale-churn", "scale-churners"
    address = broker.address
    await create_topic(address, topic, 8)
    deliveries: Counter[tuple[int, int]] = Counter()
    per_member: Counter[int] = Counter()
    leave = [trio.Event() for _ in range(3)]
    joined = [trio.Event() for _ in range(3)]
    left = [trio.Event() for _ in range(3)]

    async def member(index: int) -> None:
        async with make_consumer(address, group, topic) as consumer:
            joined[index].set()
            while not leave[index].is_set():
                batch = await consumer.receive(max=64, wait=0.05)
                await trio.sleep(WORK_S)  # "processing": messages stay in hand a while
                for message in batch:
                    record = received(index, message)
                    deliveries[record.producer, record.sequence] += 1
                    per_member[index] += 1
                    await message.ack()
        left[index].set()

    started = time.perf_counter()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in (0, 1):
                nursery.start_soon(member, index)
            await joined[0].wait()
            await joined[1].wait()
            async with trio.open_nursery() as producing:
                # ~2,500 messages a second: the stream lasts long enough for both changes
                producing.start_soon(partial(produce, address, topic, total, batch=20,
                                             pause_s=0.03))
                await wait_until(lambda: len(deliveries) >= total // 3, 30, "a third")
                nursery.start_soon(member, 2)  # a member joins...
                await joined[2].wait()
                joined_at = len(deliveries)
                await wait_until(lambda: len(deliveries) >= 2 * total // 3, 30, "two thirds")
                leave[0].set()  # ...and one leaves, while messages keep coming
                await left[0].wait()
                left_at = len(deliveries)
            await wait_until(lambda: len(deliveries) >= total, 30, f"{total} distinct")
            await trio.sleep(0.5)  # room for a late duplicate to show up
            for event in leave:
                event.set()
    duplicates = sum(count - 1 for count in deliveries.values())
    print(f"\njoin/leave: {total} messages in {time.perf_counter() - started:.1f} s, "
          f"member 2 joined at {joined_at}, member 0 left at {left_at}; deliveries per "
          f"member {dict(sorted(per_member.items()))}; {duplicates} duplicates")
    expected = {(p, s) for p in range(PRODUCERS) for s in range(total // PRODUCERS)}
    assert set(deliveries) == expected  # nothing lost, nothing foreign
    assert per_member[2] > 0, "the member that joined took no share"
    assert left_at < total, "member 0 left after the stream ended"
    # Each handover may redeliver what the previous owner had pulled but not committed:
    # at most a heartbeat's worth of a few queues, far below this bound.
    assert duplicates < total // 10, f"{duplicates} duplicates"
