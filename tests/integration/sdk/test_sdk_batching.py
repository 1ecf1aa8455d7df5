"""Natural batching of concurrent sends against a real broker: fewer appends, same results."""

from __future__ import annotations

import gc

import trio
from conftest import make_consumer

from tidemq import Admin, Message, Producer, SendResult
from tidemq.common.units import MIB
from tidemq.errors import MessageIllegal
from tidemq.testing import EmbeddedBroker


async def test_concurrent_sends_coalesce_and_each_gets_its_own_place(
        embedded_broker: EmbeddedBroker) -> None:
    async with Admin(brokers=[embedded_broker.address]) as admin:
        await admin.create_topic("orders", queue_count=1)
    results: dict[bytes, SendResult] = {}
    async with Producer(brokers=[embedded_broker.address]) as producer:
        await producer.send("orders", b"warm-up")  # learn the route
        before = embedded_broker.broker.store.stats().batches_appended

        async def send(body: bytes) -> None:
            results[body] = await producer.send("orders", body)

        async with trio.open_nursery() as nursery:
            for index in range(300):
                nursery.start_soon(send, b"m%d" % index)
        appended = embedded_broker.broker.store.stats().batches_appended - before
    assert appended < 30, appended  # 300 sends, far fewer requests
    assert sorted(r.queue_offset for r in results.values()) == list(range(1, 301))
    assert len({r.msg_id for r in results.values()}) == 300
    async with make_consumer(embedded_broker, "check", "orders") as consumer:
        received: list[Message] = []
        with trio.fail_after(10):
            while len(received) < 301:
                for message in await consumer.receive(max=512, wait=5):
                    received.append(message)
                    await message.ack()
    for message in received[1:]:  # each result says where its own body is stored
        sent = results[message.body]
        assert (sent.queue_offset, sent.msg_id, sent.unique_id) == \
            (message.queue_offset, message.msg_id, message.unique_id)


async def test_sequential_sends_per_sharding_key_keep_their_order_under_concurrency(
        embedded_broker: EmbeddedBroker) -> None:
    async with Admin(brokers=[embedded_broker.address]) as admin:
        await admin.create_topic("orders", queue_count=2)
    offsets: dict[str, list[tuple[int, int]]] = {}
    async with Producer(brokers=[embedded_broker.address]) as producer:

        async def sender(key: str) -> None:
            for index in range(40):
                sent = await producer.send("orders", f"{key}:{index}".encode(),
                                           sharding_key=key)
                offsets.setdefault(key, []).append((sent.queue_id, sent.queue_offset))

        async with trio.open_nursery() as nursery:
            for number in range(12):
                nursery.start_soon(sender, f"k{number}")
    async with make_consumer(embedded_broker, "check", "orders", orderly=True) as consumer:
        seen: dict[str, list[int]] = {}
        with trio.fail_after(10):
            while sum(map(len, seen.values())) < 12 * 40:
                for message in await consumer.receive(max=512, wait=5):
                    key, index = message.body.decode().split(":")
                    seen.setdefault(key, []).append(int(index))
                    await message.ack()
    for key, places in offsets.items():
        assert len({queue for queue, _ in places}) == 1
        assert [offset for _, offset in places] == sorted({o for _, o in places})
        assert seen[key] == list(range(40))


async def test_an_oversize_message_among_concurrent_sends_fails_alone(
        embedded_broker: EmbeddedBroker) -> None:
    async with Admin(brokers=[embedded_broker.address]) as admin:
        await admin.create_topic("orders", queue_count=1)
    outcomes: dict[int, SendResult | Exception] = {}
    # The producer's own limit is higher than the broker's: only the broker refuses it.
    async with Producer(brokers=[embedded_broker.address],
                        max_message_size_bytes=5 * MIB, batch_max_bytes=8 * MIB) as producer:

        async def send(index: int, body: bytes) -> None:
            try:
                outcomes[index] = await producer.send("orders", body)
            except MessageIllegal as error:
                outcomes[index] = error

        async with trio.open_nursery() as nursery:
            for index in range(20):
                body = b"x" * (4 * MIB + 1) if index == 10 else b"small %d" % index
                nursery.start_soon(send, index, body)
    assert isinstance(outcomes.pop(10), MessageIllegal)
    assert sorted(r.queue_offset for r in outcomes.values()
                  if isinstance(r, SendResult)) == list(range(19))


async def test_concurrent_sends_stick_to_one_queue_and_sequential_ones_rotate(
        embedded_broker: EmbeddedBroker) -> None:
    async with Admin(brokers=[embedded_broker.address]) as admin:
        await admin.create_topic("spread", queue_count=8)
    async with Producer(brokers=[embedded_broker.address]) as producer:
        await producer.send("spread", b"warm-up")
        assert producer._batcher is not None
        before = producer._batcher.requests
        results: list[SendResult] = []

        async def send(index: int) -> None:
            results.append(await producer.send("spread", b"m%d" % index))

        async with trio.open_nursery() as nursery:  # started together: one request
            for index in range(64):
                nursery.start_soon(send, index)
        assert producer._batcher.requests - before == 1
        assert len({r.queue_id for r in results}) == 1
        # one at a time, each request goes out alone: the queues take turns
        sequential = [await producer.send("spread", b"s%d" % i) for i in range(16)]
    assert sorted({r.queue_id for r in sequential}) == list(range(8))


async def test_answered_sends_leave_no_reference_cycles_for_the_collector(
        embedded_broker: EmbeddedBroker) -> None:
    """A send's request, once answered, is freed by reference counting: no cycle per
    request waits for the garbage collector (whose passes were W3's latency tail). Sends
    and submits alike; the embedded broker shares the process and is counted too."""
    async with Admin(brokers=[embedded_broker.address]) as admin:
        await admin.create_topic("orders", queue_count=4)
    async with Producer(brokers=[embedded_broker.address]) as producer:
        await producer.send("orders", b"warm-up")  # learn the route, open the connection
        gc.collect()
        gc.disable()
        try:
            for round_ in range(50):  # lone sends: one request each
                await producer.send("orders", b"lone %d" % round_)
            async with trio.open_nursery() as nursery:  # concurrent sends share requests
                for index in range(200):
                    nursery.start_soon(producer.send, "orders", b"together %d" % index)
            submitted = [await producer.submit("orders", b"submitted %d" % index)
                         for index in range(200)]
            await producer.flush()
            assert all(send.result().queue_offset >= 0 for send in submitted)
            del submitted
            unreachable = gc.collect()
        finally:
            gc.enable()
    assert unreachable < 45, unreachable  # with a cycle per request: ~670 here
