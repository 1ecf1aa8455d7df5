"""Consumer groups: clustering shares queues, broadcasting copies them, members come and go,
orderly consumption keeps per-queue order, offsets outlive a consumer."""

from __future__ import annotations

import random
from collections import Counter
from functools import partial

import trio
from conftest import is_partition, make_consumer, wait_until

from tidemq import Admin, Message, MessageQueue, Producer
from tidemq.testing import EmbeddedBroker


async def _create(broker: EmbeddedBroker, topic: str, queue_count: int) -> set[MessageQueue]:
    async with Admin(brokers=[broker.address]) as admin:
        await admin.create_topic(topic, queue_count=queue_count)
    return {MessageQueue(topic, broker.address, q) for q in range(queue_count)}


async def _produce(broker: EmbeddedBroker, topic: str, count: int, *, senders: int = 8,
                   pause_s: float = 0.0) -> None:
    """Send bodies b"0" .. b"count-1" from ``senders`` tasks at once."""
    async with Producer(brokers=[broker.address]) as producer:

        async def sender(first: int) -> None:
            for sequence in range(first, count, senders):
                await producer.send(topic, b"%d" % sequence)
                if pause_s:
                    await trio.sleep(pause_s)

        async with trio.open_nursery() as nursery:
            for first in range(senders):
                nursery.start_soon(sender, first)


async def test_clustering_delivers_each_message_to_one_member_in_queue_order(
        embedded_broker: EmbeddedBroker) -> None:
    total = 5_000
    queues = await _create(embedded_broker, "orders", 8)
    received: list[list[Message]] = [[], [], []]
    async with make_consumer(embedded_broker, "billing", "orders") as c0, \
            make_consumer(embedded_broker, "billing", "orders") as c1, \
            make_consumer(embedded_broker, "billing", "orders") as c2:
        consumers = [c0, c1, c2]
        await wait_until(lambda: is_partition(
            [c.statistics().assigned_queues for c in consumers], set(queues)))

        async def drain(index: int) -> None:
            async for message in consumers[index]:
                received[index].append(message)
                await message.ack()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(3):
                    nursery.start_soon(drain, index)
                await _produce(embedded_broker, "orders", total)
                await wait_until(lambda: sum(map(len, received)) >= total, timeout_s=50)
                await trio.sleep(0.3)  # room for a duplicate to show up
                nursery.cancel_scope.cancel()
    bodies = [int(m.body) for share in received for m in share]
    assert sorted(bodies) == list(range(total))  # each message exactly once
    assert all(share for share in received)  # every member took part
    for share in received:
        for queue_id in {m.queue_id for m in share}:
            offsets = [m.queue_offset for m in share if m.queue_id == queue_id]
            assert offsets == sorted(offsets)


async def test_broadcast_gives_every_consumer_every_message(
        embedded_broker: EmbeddedBroker) -> None:
    await _produce(embedded_broker, "news", 200)
    seen: list[set[bytes]] = [set(), set()]
    async with make_consumer(embedded_broker, "readers", "news", mode="broadcast") as c0, \
            make_consumer(embedded_broker, "readers", "news", mode="broadcast") as c1:
        for consumer in (c0, c1):
            assert len(consumer.statistics().assigned_queues) == 4
        with trio.fail_after(10):
            for index, consumer in enumerate((c0, c1)):
                while len(seen[index]) < 200:
                    for message in await consumer.receive(max=64, wait=1):
                        seen[index].add(message.body)
                        await message.ack()
    assert seen[0] == seen[1] == {b"%d" % i for i in range(200)}


async def test_members_joining_and_leaving_mid_stream_lose_nothing(
        embedded_broker: EmbeddedBroker) -> None:
    total = 3_000
    await _create(embedded_broker, "orders", 6)
    counts: Counter[int] = Counter()
    leave = [trio.Event() for _ in range(3)]
    joined = [trio.Event() for _ in range(3)]

    async def member(index: int) -> None:
        async with make_consumer(embedded_broker, "billing", "orders") as consumer:
            joined[index].set()
            while not leave[index].is_set():
                for message in await consumer.receive(max=32, wait=0.05):
                    counts[int(message.body)] += 1
                    await message.ack()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in (0, 1):
                nursery.start_soon(member, index)
            await joined[0].wait()
            await joined[1].wait()
            async with trio.open_nursery() as producing:
                producing.start_soon(partial(_produce, embedded_broker, "orders", total,
                                             senders=4, pause_s=0.002))
                await wait_until(lambda: len(counts) >= total // 3, timeout_s=30)
                nursery.start_soon(member, 2)  # a member joins...
                await joined[2].wait()
                await wait_until(lambda: len(counts) >= 2 * total // 3, timeout_s=30)
                leave[0].set()  # ...and one leaves, while messages keep coming
            await wait_until(lambda: len(counts) == total, timeout_s=30)
            for event in leave:
                event.set()
    assert set(counts) == set(range(total))  # nothing lost
    duplicates = sum(count - 1 for count in counts.values())
    assert duplicates < total // 2, f"{duplicates} duplicates"
    print(f"join/leave: {duplicates} duplicates of {total}")


async def test_orderly_consumers_keep_each_queue_in_order(
        embedded_broker: EmbeddedBroker) -> None:
    queues = await _create(embedded_broker, "orders", 4)
    keys, per_key = 12, 40
    seen: dict[str, list[int]] = {f"user-{k}": [] for k in range(keys)}
    failed_once: set[bytes] = set()
    done = trio.Event()
    rng = random.Random(3)

    async def handler(message: Message) -> None:
        key, sequence = message.body.decode().split(":")
        if int(sequence) % 17 == 5 and message.body not in failed_once:
            failed_once.add(message.body)  # a nack must not let the next message overtake
            raise RuntimeError("try again")
        await trio.sleep(rng.random() / 2000)
        seen[key].append(int(sequence))
        if sum(map(len, seen.values())) == keys * per_key:
            done.set()

    async with make_consumer(embedded_broker, "shipping", "orders", orderly=True) as c0, \
            make_consumer(embedded_broker, "shipping", "orders", orderly=True) as c1:
        await wait_until(lambda: is_partition(
            [c0.statistics().assigned_queues, c1.statistics().assigned_queues], queues))
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(c0.run, handler)
                nursery.start_soon(c1.run, handler)
                async with Producer(brokers=[embedded_broker.address]) as producer:
                    for sequence in range(per_key):
                        for k in range(keys):
                            await producer.send("orders", f"user-{k}:{sequence}".encode(),
                                                sharding_key=f"user-{k}")
                await done.wait()
                nursery.cancel_scope.cancel()
    for sequences in seen.values():
        assert sequences == list(range(per_key))
    assert failed_once


async def test_a_new_consumer_continues_where_the_group_acked(
        embedded_broker: EmbeddedBroker) -> None:
    await _create(embedded_broker, "orders", 1)
    await _produce(embedded_broker, "orders", 100, senders=1)
    async with make_consumer(embedded_broker, "billing", "orders") as first:
        with trio.fail_after(10):
            for expected in range(50):
                message = await anext(first)
                assert message.queue_offset == expected
                await message.ack()
            unacked = await anext(first)  # delivered, never acked: must come back
        await wait_until(lambda: first.statistics().buffered > 0)
    async with make_consumer(embedded_broker, "billing", "orders",
                             start_from="latest") as second:
        with trio.fail_after(10):
            resumed = await anext(second)
        await resumed.ack()
    assert unacked.queue_offset == resumed.queue_offset == 50


async def test_start_from_applies_when_the_group_has_no_offset(
        embedded_broker: EmbeddedBroker) -> None:
    await _create(embedded_broker, "orders", 1)
    async with Producer(brokers=[embedded_broker.address]) as producer:
        old = [await producer.send("orders", b"%d" % i) for i in range(5)]
        await trio.sleep(0.01)  # store timestamps have millisecond resolution
        new = [await producer.send("orders", b"%d" % i) for i in range(5, 10)]
        assert old[-1].store_timestamp_ms < new[0].store_timestamp_ms
        async with make_consumer(embedded_broker, "from-time", "orders",
                                 start_from=new[0].store_timestamp_ms) as by_time, \
                make_consumer(embedded_broker, "from-latest", "orders",
                              start_from="latest") as latest:
            await producer.send("orders", b"10")
            with trio.fail_after(10):
                timed = [await anext(by_time) for _ in range(6)]
                newest = await anext(latest)
    assert [m.body for m in timed] == [b"%d" % i for i in range(5, 11)]
    assert newest.body == b"10"


async def test_broadcast_nack_redelivers_locally(embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        await producer.send("news", b"again")
    async with make_consumer(embedded_broker, "readers", "news", mode="broadcast") as consumer:
        with trio.fail_after(10):
            first = await anext(consumer)
            await first.nack()
            second = await anext(consumer)
            await second.ack()
    assert (second.body, second.reconsume_times) == (b"again", 1)


async def test_orderly_nacks_past_the_maximum_go_to_dead_letters(
        embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        await producer.send("orders", b"poison", sharding_key="k")
        await producer.send("orders", b"next", sharding_key="k")
    attempts: list[int] = []
    async with make_consumer(embedded_broker, "shipping", "orders", orderly=True,
                             retry_delay_ms=0) as consumer:
        with trio.fail_after(10):
            async for message in consumer:
                if message.body == b"next":
                    await message.ack()
                    break
                attempts.append(message.reconsume_times)
                await message.nack()
    assert attempts == list(range(17))  # the first delivery and 16 local redeliveries
    async with Admin(brokers=[embedded_broker.address]) as admin:
        dead = await admin.describe_topic("%DLQ%shipping")
        letter = await admin.get_message_at("%DLQ%shipping", 0, 0)
    assert dead.message_count == 1
    assert (letter.body, letter.reconsume_times) == (b"poison", 17)
    assert letter.properties["ORIGIN_TOPIC"] == "orders"  # admin shows records as stored


async def test_a_consumer_cancelled_from_outside_still_commits_and_leaves(
        embedded_broker: EmbeddedBroker) -> None:
    await _create(embedded_broker, "orders", 1)
    await _produce(embedded_broker, "orders", 10, senders=1)
    consumer = make_consumer(embedded_broker, "billing", "orders")
    with trio.move_on_after(1) as scope:
        async with consumer:
            for _ in range(4):
                await (await anext(consumer)).ack()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    async with Admin(brokers=[embedded_broker.address]) as admin:
        info = await admin.describe_group("billing")
    assert info.members == ()  # it unregistered on the way out
    assert [(o.committed, o.lag) for o in info.offsets if o.topic == "orders"] == [(4, 6)]
