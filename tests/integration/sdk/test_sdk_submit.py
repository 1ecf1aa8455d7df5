"""``Producer.submit``: many sends in flight without a task each, against a real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from conftest import make_consumer

from tidemq import Admin, Message, PendingSend, Producer, SendResult
from tidemq.common.units import MIB
from tidemq.errors import MessageIllegal, TopicNotFound
from tidemq.testing import EmbeddedBroker, open_embedded_broker


async def _consume(broker: EmbeddedBroker, topic: str, count: int) -> list[Message]:
    received: list[Message] = []
    async with make_consumer(broker, f"check-{topic}", topic) as consumer:
        with trio.fail_after(20):
            while len(received) < count:
                for message in await consumer.receive(max=1024, wait=5):
                    received.append(message)
                    await message.ack()
        assert await consumer.receive(max=1, wait=0.2) == []  # nothing more
    return received


async def test_submitted_sends_are_each_stored_once_where_their_results_say(
        embedded_broker: EmbeddedBroker) -> None:
    async with Admin(brokers=[embedded_broker.address]) as admin:
        await admin.create_topic("orders", queue_count=4)
    results: dict[str, SendResult] = {}
    called: list[PendingSend] = []

    def record(pending: PendingSend) -> None:
        called.append(pending)
        result = pending.result()
        results[result.unique_id] = result

    async with Producer(brokers=[embedded_broker.address], max_in_flight=256) as producer:
        await producer.send("orders", b"warm-up")
        before = embedded_broker.broker.store.stats().batches_appended
        handles = []
        for index in range(2000):
            pending = await producer.submit("orders", b"m%d" % index, tag="t")
            pending.add_done_callback(record)
            handles.append(pending)
        await producer.flush()
        appended = embedded_broker.broker.store.stats().batches_appended - before
        assert all(pending.done() for pending in handles)
        assert [await pending for pending in handles[:5]] == \
            [results[pending.unique_id] for pending in handles[:5]]
    assert len(called) == 2000
    assert len(set(map(id, called))) == 2000
    assert appended < 200, appended  # shared requests, not one each
    received = await _consume(embedded_broker, "orders", 2001)
    by_unique_id = {message.unique_id: message for message in received}
    assert len(by_unique_id) == 2001
    for unique_id, sent in results.items():
        message = by_unique_id[unique_id]
        assert (sent.queue_id, sent.queue_offset, sent.msg_id) == \
            (message.queue_id, message.queue_offset, message.msg_id)
    bodies = [by_unique_id[pending.unique_id].body for pending in handles]
    assert bodies == [b"m%d" % index for index in range(2000)]


class _TaskNames(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned.append(task.name)


async def test_submits_spread_over_many_queues_share_one_dispatch_task(
        embedded_broker: EmbeddedBroker) -> None:
    """W6's shape (many topics x queues, few messages per queue in flight): the lanes
    made busy in one scheduler pass are sent by one task, not a task each."""
    topics = [f"spread-{n}" for n in range(4)]
    async with Admin(brokers=[embedded_broker.address]) as admin:
        for topic in topics:
            await admin.create_topic(topic, queue_count=8)
    names = _TaskNames()
    async with Producer(brokers=[embedded_broker.address]) as producer:
        for topic in topics:
            await producer.send_batch(topic, [b"warm-up"] * 8)  # routes, connection
        trio.lowlevel.add_instrument(names)
        try:
            handles = [await producer.submit(topic, b"%s %d" % (topic.encode(), index))
                       for index in range(8) for topic in topics]
            queues = {(h.result().topic, h.result().queue_id) for h in
                      [await h and h for h in handles]}
        finally:
            trio.lowlevel.remove_instrument(names)
    assert len(queues) >= len(topics)  # a queue of each topic at least: as many lanes
    started = [name for name in names.spawned if name.startswith("tidemq.producer")]
    assert started == ["tidemq.producer.dispatch"], started
    for topic in topics:
        bodies = sorted(m.body for m in await _consume(embedded_broker, topic, 16))
        assert bodies == sorted([b"warm-up"] * 8 + [b"%s %d" % (topic.encode(), index)
                                                    for index in range(8)])


async def test_leaving_the_producer_normally_waits_for_what_was_submitted(
        embedded_broker: EmbeddedBroker) -> None:
    async with Producer(brokers=[embedded_broker.address]) as producer:
        handles = [await producer.submit("orders", b"x%d" % index) for index in range(500)]
    assert all(pending.done() and pending.exception() is None for pending in handles)
    received = await _consume(embedded_broker, "orders", 500)
    assert sorted(message.body for message in received) == \
        sorted(b"x%d" % index for index in range(500))


async def test_the_window_bounds_what_is_in_flight(embedded_broker: EmbeddedBroker) -> None:
    outstanding = 0
    most = 0

    def settled(pending: PendingSend) -> None:
        nonlocal outstanding
        outstanding -= 1

    async with Producer(brokers=[embedded_broker.address], max_in_flight=8) as producer:
        for index in range(300):
            pending = await producer.submit("orders", b"%d" % index)
            outstanding += 1
            most = max(most, outstanding)
            pending.add_done_callback(settled)
        await producer.flush()
    assert outstanding == 0
    assert most == 8  # full use of the window, never more


async def test_one_sharding_key_keeps_one_queue_in_submission_order(
        embedded_broker: EmbeddedBroker) -> None:
    async with Admin(brokers=[embedded_broker.address]) as admin:
        await admin.create_topic("orders", queue_count=4)
    async with Producer(brokers=[embedded_broker.address]) as producer:
        handles = [await producer.submit("orders", b"%d" % index, sharding_key="user-7")
                   for index in range(300)]
        results = [await pending for pending in handles]
    assert len({result.queue_id for result in results}) == 1
    offsets = [result.queue_offset for result in results]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 300


async def test_bad_messages_fail_at_once_and_unknown_topics_fail_their_send(
        tmp_path: Path) -> None:
    async with open_embedded_broker(tmp_path, auto_create_topics=False) as broker, \
            Producer(brokers=[broker.address], max_message_size_bytes=MIB) as producer:
        with pytest.raises(MessageIllegal):
            await producer.submit("orders", b"x" * (MIB + 1))
        pending = await producer.submit("no-such-topic", b"x")
        with pytest.raises(TopicNotFound):
            await pending
        assert isinstance(pending.exception(), TopicNotFound)
        await producer.flush()  # nothing left over from the failures


async def test_a_failing_callback_breaks_nothing(embedded_broker: EmbeddedBroker) -> None:
    seen: list[SendResult] = []

    def broken(pending: PendingSend) -> None:
        raise RuntimeError("an application bug")

    async with Producer(brokers=[embedded_broker.address]) as producer:
        first = await producer.submit("orders", b"a")
        first.add_done_callback(broken)
        first.add_done_callback(lambda pending: seen.append(pending.result()))
        second = await producer.submit("orders", b"b")
        assert (await second).topic == "orders"
        assert (await first).queue_offset >= 0
    assert seen == [first.result()]
    late: list[PendingSend] = []
    first.add_done_callback(late.append)  # already done: called at once
    assert late == [first]
