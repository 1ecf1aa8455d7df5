"""Producer and consumer against a real broker: what a send stores, what a consumer sees."""

from __future__ import annotations

import pytest
import trio
from conftest import make_consumer, wait_until

from tidemq import Admin, ConsumerClosed, Message, Producer
from tidemq.testing import EmbeddedBroker


async def test_round_trip_keeps_key_tag_properties_and_ids(
        embedded_broker: EmbeddedBroker) -> None:
    address = embedded_broker.address
    async with Producer(brokers=[address]) as producer:
        sent = await producer.send("orders", b"body", key="k1", tag="created",
                                   properties={"a": "b"})
        assert (sent.topic, sent.broker, sent.queue_offset) == ("orders", address, 0)
        assert sent.queue_id in range(4)
        async with make_consumer(embedded_broker, "billing", {"orders": "created || paid"}
                                 ) as consumer:
            with trio.fail_after(10):
                message = await anext(consumer)
            await message.ack()
    assert (message.topic, message.body, message.key, message.keys, message.tag) == \
        ("orders", b"body", "k1", ("k1",), "created")
    assert message.properties == {"a": "b"}
    assert message.msg_id == sent.msg_id
    assert message.unique_id == sent.unique_id
    assert (message.queue_id, message.queue_offset) == (sent.queue_id, sent.queue_offset)
    assert message.reconsume_times == 0
    assert message.born_timestamp_ms <= message.store_timestamp_ms == sent.store_timestamp_ms


async def test_tag_filtering_delivers_only_matching_tags(embedded_broker: EmbeddedBroker
                                                         ) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        for index in range(30):
            await producer.send("orders", str(index).encode(),
                                tag=("created", "paid", "refunded")[index % 3])
        await producer.send("orders", b"untagged")
        await producer.send("orders", b"last", tag="paid")
    async with make_consumer(embedded_broker, "paid-only", {"orders": "paid"}) as consumer:
        received: list[Message] = []
        with trio.fail_after(10):
            async for message in consumer:
                received.append(message)
                await message.ack()
                if message.body == b"last":
                    break
    assert all(message.tag == "paid" for message in received)
    assert len(received) == 11


async def test_sharding_key_keeps_a_key_on_one_queue(embedded_broker: EmbeddedBroker) -> None:
    async with Admin(brokers=[embedded_broker.address]) as admin:
        await admin.create_topic("orders", queue_count=8)
    async with Producer(brokers=[embedded_broker.address]) as producer:
        queues: dict[str, set[int]] = {}
        for index in range(80):
            key = f"user-{index % 10}"
            result = await producer.send("orders", b"x", sharding_key=key)
            queues.setdefault(key, set()).add(result.queue_id)
        plain = {(await producer.send("orders", b"y")).queue_id for _ in range(16)}
    assert all(len(ids) == 1 for ids in queues.values())
    assert len({next(iter(ids)) for ids in queues.values()}) > 1  # keys spread over queues
    assert plain == set(range(8))  # without a key: round-robin over every queue


async def test_batch_is_one_queue_in_order_and_oneway_arrives(
        embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        results = await producer.send_batch("orders", [b"a", b"b", b"c"], tag="batch")
        await producer.send_oneway("orders", b"oneway", tag="oneway")
    # Closing right after a oneway send still delivers it (the producer's close barrier).
    assert len({r.queue_id for r in results}) == 1
    assert [r.queue_offset for r in results] == [0, 1, 2]
    assert len({r.msg_id for r in results}) == len({r.unique_id for r in results}) == 3
    async with make_consumer(embedded_broker, "g", "orders") as consumer:
        bodies: list[bytes] = []
        with trio.fail_after(10):
            while len(bodies) < 4:
                for message in await consumer.receive(max=10, wait=1):
                    bodies.append(message.body)
                    await message.ack()
    assert sorted(bodies) == [b"a", b"b", b"c", b"oneway"]
    assert [b for b in bodies if b != b"oneway"] == [b"a", b"b", b"c"]


async def test_receive_returns_up_to_max_and_waits_at_most_wait(
        embedded_broker: EmbeddedBroker) -> None:
    async with make_consumer(embedded_broker, "g", "orders") as consumer:
        start = trio.current_time()
        assert await consumer.receive(max=5, wait=0.2) == []
        assert 0.2 <= trio.current_time() - start < 2
        async with Producer(brokers=[embedded_broker.address]) as producer:
            await producer.send_batch("orders", [b"%d" % i for i in range(10)])
        await wait_until(lambda: consumer.statistics().buffered == 10)
        first = await consumer.receive(max=4, wait=1)
        rest = await consumer.receive(max=32, wait=1)
    assert [m.body for m in first + rest] == [b"%d" % i for i in range(10)]
    assert len(first) == 4
    with pytest.raises(ConsumerClosed):
        await consumer.receive()
    assert [message async for message in consumer] == []


async def test_nack_redelivers_through_the_retry_topic(embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        sent = await producer.send("orders", b"try again", key="k", tag="created")
    async with make_consumer(embedded_broker, "billing", {"orders": "created"}) as consumer:
        with trio.fail_after(10):
            first = await anext(consumer)
            await first.nack()
            again = await anext(consumer)
            await again.ack()
    assert first.reconsume_times == 0
    assert again.reconsume_times == 1
    # A retried copy looks like the original: same topic, id, body, key and tag.
    assert (again.topic, again.msg_id, again.unique_id, again.body, again.key, again.tag) == \
        ("orders", sent.msg_id, sent.unique_id, b"try again", "k", "created")


async def test_process_acks_on_success_and_nacks_on_error(
        embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        await producer.send("orders", b"ok")
        await producer.send("orders", b"fails once")
    attempts: dict[bytes, int] = {}
    async with make_consumer(embedded_broker, "g", "orders") as consumer:
        with trio.fail_after(10):
            async for message in consumer:
                attempts[message.body] = attempts.get(message.body, 0) + 1
                try:
                    async with message.process():
                        if message.body == b"fails once" and message.reconsume_times == 0:
                            raise ValueError("handler failure")
                except ValueError:
                    continue  # process() nacked it and re-raised
                if len(attempts) == 2 and attempts[b"fails once"] == 2:
                    break
        await wait_until(lambda: consumer.statistics().in_flight == 0)
    assert attempts == {b"ok": 1, b"fails once": 2}


async def test_run_acks_returns_and_nacks_raises(embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        for index in range(20):
            await producer.send("orders", b"%d" % index)
    seen: list[tuple[bytes, int]] = []
    done = trio.Event()

    async def handler(message: Message) -> None:
        seen.append((message.body, message.reconsume_times))
        if message.body == b"7" and message.reconsume_times == 0:
            raise RuntimeError("first attempt fails")
        if len({body for body, _ in seen}) == 20 and (b"7", 1) in seen:
            done.set()

    async with make_consumer(embedded_broker, "g", "orders") as consumer:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer.run, handler)
                await done.wait()
                nursery.cancel_scope.cancel()
        await wait_until(lambda: consumer.statistics().in_flight == 0)
    assert sorted(body for body, times in seen if times == 0) == sorted(
        b"%d" % i for i in range(20))
    assert (b"7", 1) in seen


async def test_a_cancelled_process_block_gives_the_message_back(
        embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        await producer.send("orders", b"slow")
    async with make_consumer(embedded_broker, "g", "orders") as consumer:
        with trio.fail_after(10):
            message = await anext(consumer)
            with trio.move_on_after(0.05):
                async with message.process():
                    await trio.sleep(10)
            again = await anext(consumer)
            await again.ack()
            await message.ack()  # settled already (released): a no-op
        assert consumer.statistics().in_flight == 0
    assert (again.queue_offset, again.reconsume_times) == (message.queue_offset, 0)


async def test_cancelled_send_and_receive_leave_the_clients_usable(
        embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        with trio.move_on_after(0):
            await producer.send("orders", b"maybe")
        async with make_consumer(embedded_broker, "g", "orders") as consumer:
            with trio.move_on_after(0.05):
                await consumer.receive(max=1, wait=5)
            await producer.send("orders", b"surely")
            with trio.fail_after(10):
                bodies = [m.body for m in await consumer.receive(max=5, wait=5)]
            while b"surely" not in bodies:
                with trio.fail_after(10):
                    bodies += [m.body for m in await consumer.receive(max=5, wait=5)]
    assert b"surely" in bodies


async def test_a_topic_created_after_subscribing_is_read_from_its_start(
        embedded_broker: EmbeddedBroker) -> None:
    async with make_consumer(embedded_broker, "early", "fresh", start_from="latest"
                             ) as consumer:
        assert consumer.statistics().assigned_queues == ()
        async with Producer(brokers=[embedded_broker.address]) as producer:
            for index in range(3):
                await producer.send("fresh", b"%d" % index)  # auto-creates the topic
        with trio.fail_after(10):
            bodies = sorted([(await anext(consumer)).body for _ in range(3)])
    # "latest" means "from when I subscribed": every message of a topic that appeared
    # later qualifies.
    assert bodies == [b"0", b"1", b"2"]
