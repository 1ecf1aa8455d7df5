"""Admin against a real broker, and the typed errors the SDK raises."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from conftest import make_consumer, wait_until

from tidemq import (
    Admin,
    ConnectionClosed,
    Consumer,
    GroupNotFound,
    InvalidArgument,
    MessageIllegal,
    MessageQueue,
    NoPermission,
    OffsetMoved,
    Producer,
    TopicNotFound,
)
from tidemq.testing import EmbeddedBroker, embedded_config, open_embedded_broker


async def test_topic_administration(embedded_broker: EmbeddedBroker) -> None:
    address = embedded_broker.address
    async with Admin(brokers=[address]) as admin:
        created = await admin.create_topic("orders", queue_count=3)
        assert (created.name, created.read_queue_count, created.write_queue_count,
                created.permission, created.brokers) == ("orders", 3, 3, 6, (address,))
        assert [q.queue_id for q in created.queues] == [0, 1, 2]
        assert created.message_count == 0
        updated = await admin.update_topic("orders", write_queue_count=2, permission=6)
        assert (updated.read_queue_count, updated.write_queue_count) == (3, 2)
        await admin.create_topic("refunds")
        assert [t.name for t in await admin.list_topics()] == ["orders", "refunds"]
        await admin.delete_topic("refunds")
        assert [t.name for t in await admin.list_topics()] == ["orders"]
        with pytest.raises(TopicNotFound):
            await admin.describe_topic("refunds")
        with pytest.raises(TopicNotFound):
            await admin.delete_topic("refunds")


async def test_message_queries(embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer, \
            Admin(brokers=[embedded_broker.address]) as admin:
        await admin.create_topic("orders", queue_count=1)
        results = [await producer.send("orders", b"%d" % i, key=f"order-{i % 2}", tag="t")
                   for i in range(6)]
        by_id = await admin.get_message(results[3].msg_id)
        assert (by_id.body, by_id.queue_offset, by_id.msg_id) == (b"3", 3, results[3].msg_id)
        by_key = await admin.get_messages_by_key("orders", "order-1")
        assert sorted(m.body for m in by_key) == [b"1", b"3", b"5"]
        by_unique_id = await admin.get_messages_by_key("orders", results[0].unique_id)
        assert [m.body for m in by_unique_id] == [b"0"]
        at = await admin.get_message_at("orders", 0, 4)
        assert (at.body, at.tag) == (b"4", "t")
        with pytest.raises(OffsetMoved):
            await admin.get_message_at("orders", 0, 99)
        assert await admin.min_offset("orders", 0) == 0
        assert await admin.max_offset("orders", 0) == 6
        assert await admin.offset_for_time("orders", 0, results[2].store_timestamp_ms) <= 2
        assert await admin.offset_for_time("orders", 0, 2**62) == 6
        with pytest.raises(InvalidArgument):
            await admin.get_message("not-an-id")
        with pytest.raises(InvalidArgument):  # not one of the admin's brokers
            await admin.min_offset("orders", 0, broker="127.0.0.1:1")


async def test_group_administration_and_offset_reset(embedded_broker: EmbeddedBroker) -> None:
    address = embedded_broker.address
    async with Admin(brokers=[address]) as admin, Producer(brokers=[address]) as producer:
        await admin.create_topic("orders", queue_count=2)
        for index in range(10):
            await producer.send("orders", b"%d" % index)
        with pytest.raises(GroupNotFound):
            await admin.describe_group("billing")
        async with make_consumer(embedded_broker, "billing", "orders") as consumer:
            with trio.fail_after(10):
                for _ in range(4):
                    await (await anext(consumer)).ack()
            await wait_until(lambda: consumer.statistics().in_flight == 6)
            info = await admin.describe_group("billing")
            assert info.client_ids == (consumer.client_id,)
            assert info.mode == "clustering"
            assert "orders" in info.members[0].subscriptions
        assert "billing" in await admin.list_groups()
        info = await admin.describe_group("billing")
        assert info.members == ()
        assert info.lag == 6
        assert {(o.topic, o.queue_id) for o in info.offsets} >= {("orders", 0), ("orders", 1)}
        latest = await admin.reset_offset("billing", "orders", "latest")
        assert latest == {MessageQueue("orders", address, 0): 5,
                          MessageQueue("orders", address, 1): 5}
        assert (await admin.describe_group("billing")).lag == 0
        earliest = await admin.reset_offset("billing", "orders", "earliest")
        assert set(earliest.values()) == {0}
        assert (await admin.describe_group("billing")).lag == 10
        by_time = await admin.reset_offset("billing", "orders", 2**62)
        assert set(by_time.values()) == {5}
        with pytest.raises(InvalidArgument):
            await admin.reset_offset("billing", "orders", "tomorrow")  # type: ignore[arg-type]


async def test_typed_errors(tmp_path: Path) -> None:
    config = embedded_config(tmp_path, auto_create_topics=False,
                             max_message_size_bytes=64 * 1024)
    async with open_embedded_broker(config=config) as broker:
        address = broker.address
        async with Producer(brokers=[address], retries=0) as producer, \
                Admin(brokers=[address]) as admin:
            with pytest.raises(TopicNotFound):
                await producer.send("unknown", b"x")
            await admin.create_topic("orders", queue_count=1)
            with pytest.raises(MessageIllegal):  # the broker's limit
                await producer.send("orders", b"x" * (100 * 1024))
            with pytest.raises(MessageIllegal):  # the producer's own limit, checked first
                await producer.send("orders", b"x" * (5 * 1024 * 1024))
            with pytest.raises(MessageIllegal):
                await producer.send("bad topic", b"x")
            await admin.update_topic("orders", permission=4)  # read only
            with pytest.raises(NoPermission):
                await producer.send("orders", b"x")
    with pytest.raises(ConnectionClosed):
        async with Producer(brokers=[address], retries=1, connect_timeout_ms=500) as producer:
            await producer.send("orders", b"x")
    with pytest.raises(ConnectionClosed):
        async with Consumer("g", "orders", brokers=[address], connect_timeout_ms=500):
            pass


async def test_a_client_outside_async_with_refuses_to_work() -> None:
    producer = Producer(brokers=["127.0.0.1:1"])
    with pytest.raises(RuntimeError, match="async with"):
        await producer.send("orders", b"x")


async def test_a_running_group_follows_an_offset_reset(embedded_broker: EmbeddedBroker) -> None:
    address = embedded_broker.address
    async with Admin(brokers=[address]) as admin, Producer(brokers=[address]) as producer:
        await admin.create_topic("orders", queue_count=1)
        for index in range(10):
            await producer.send("orders", b"%d" % index)
        async with make_consumer(embedded_broker, "billing", "orders") as consumer:
            with trio.fail_after(10):
                first = [await anext(consumer) for _ in range(10)]
                for message in first:
                    await message.ack()
                await wait_until(lambda: consumer.statistics().in_flight == 0)
                await trio.sleep(0.3)  # a commit round
                await admin.reset_offset("billing", "orders", "earliest")
                again = [await anext(consumer) for _ in range(10)]
    assert [m.queue_offset for m in again] == list(range(10))


async def test_an_error_in_the_block_comes_out_unwrapped(embedded_broker: EmbeddedBroker
                                                         ) -> None:
    async def send_then_fail() -> None:
        async with Producer(brokers=[embedded_broker.address]) as producer:
            await producer.send("orders", b"x")
            raise ValueError("mine")

    with pytest.raises(ValueError, match="mine"):
        await send_then_fail()
    with pytest.raises(KeyError):
        async with make_consumer(embedded_broker, "g", "orders"):
            raise KeyError("mine")
