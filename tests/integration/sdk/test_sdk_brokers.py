"""Several brokers: a topic's queues span them, and clients route around one that stops."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import trio
from conftest import make_consumer, wait_until

from tidemq import Admin, Consumer, Message, Producer
from tidemq.testing import EmbeddedBroker, open_embedded_broker


async def _receive(consumers: Sequence[Consumer], count: int, into: list[Message]) -> None:
    """Receive until ``into`` holds ``count`` distinct bodies (duplicates may come too)."""
    with trio.fail_after(15):
        while len({message.body for message in into}) < count:
            for consumer in consumers:
                for message in await consumer.receive(max=64, wait=0.05):
                    into.append(message)
                    await message.ack()


async def test_queues_span_brokers_and_a_stopped_broker_is_routed_around(
        tmp_path: Path) -> None:
    stop_b = trio.Event()
    stopped_b = trio.Event()

    async def run_b(*, task_status: trio.TaskStatus[EmbeddedBroker]) -> None:
        try:
            async with open_embedded_broker(tmp_path / "b") as broker_b:
                task_status.started(broker_b)
                await stop_b.wait()
        finally:
            stopped_b.set()

    received: list[Message] = []
    async with open_embedded_broker(tmp_path / "a") as broker_a, \
            trio.open_nursery() as nursery:
        broker_b = await nursery.start(run_b)
        brokers = [broker_a.address, broker_b.address]
        async with Admin(brokers=brokers) as admin:
            topic = await admin.create_topic("orders", queue_count=2)
        assert topic.brokers == tuple(brokers)
        assert len(topic.queues) == 4
        async with Producer(brokers=brokers) as producer, \
                make_consumer(brokers, "billing", "orders", broker_down_ms=500) as c0, \
                make_consumer(brokers, "billing", "orders", broker_down_ms=500) as c1:
            first = [await producer.send("orders", b"%d" % i) for i in range(40)]
            assert {(r.broker, r.queue_id) for r in first} == {
                (b, q) for b in brokers for q in range(2)}
            await _receive([c0, c1], 40, received)
            assert {m.broker for m in received} == set(brokers)

            stop_b.set()
            await stopped_b.wait()
            # The first send to b finds it gone, marks it down and goes to a; the rest
            # skip b while it is down.
            second = [await producer.send("orders", b"%d" % i) for i in range(40, 60)]
            assert {r.broker for r in second} == {broker_a.address}
            await _receive([c0, c1], 60, received)
            # The members drop b's queues once a heartbeat round finds b gone.
            await wait_until(lambda: all(q.broker == broker_a.address for c in (c0, c1)
                                         for q in c.statistics().assigned_queues))
    assert sorted({int(m.body) for m in received}) == list(range(60))
