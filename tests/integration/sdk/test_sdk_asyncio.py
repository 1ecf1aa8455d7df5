"""The same SDK classes under asyncio (the broker, Trio-only, runs in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tidemq import Admin, Consumer, Message, Producer
from tidemq.testing import embedded_broker_thread


async def _round_trip(address: str) -> tuple[list[Message], int]:
    async with Admin(brokers=[address]) as admin:
        await admin.create_topic("orders", queue_count=2)
    async with Producer(brokers=[address]) as producer:
        for index in range(20):
            await producer.send("orders", b"%d" % index, key=f"k{index}",
                                tag="paid" if index % 2 else "created")
        await producer.send_batch("orders", [b"b1", b"b2"], tag="paid")
        submitted = [await producer.submit("orders", b"s%d" % i, tag="created")
                     for i in range(50)]  # filtered out by the consumer below
        assert (await submitted[0]).topic == "orders"
    assert all(pending.exception() is None for pending in submitted)  # flushed on leaving
    received: list[Message] = []
    async with Consumer("billing", {"orders": "paid"}, brokers=[address],
                        start_from="earliest", heartbeat_interval_ms=200) as consumer:
        async with asyncio.timeout(20):
            async for message in consumer:
                async with message.process():
                    received.append(message)
                if len(received) == 12:
                    break
            handled: list[Message] = []
            handled_one = asyncio.Event()

            async def handler(message: Message) -> None:
                handled.append(message)
                handled_one.set()

            async with Producer(brokers=[address]) as producer:
                await producer.send("orders", b"late", tag="paid")
            runner = asyncio.create_task(consumer.run(handler, concurrency=2))
            await handled_one.wait()
            runner.cancel()
            try:
                await runner
            except asyncio.CancelledError:
                pass
    # Cancelled from outside (a timeout around the block): it still commits and leaves.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.3), Consumer("billing", "orders", brokers=[address]):
            await asyncio.sleep(10)
    async with Admin(brokers=[address]) as admin:
        group = await admin.describe_group("billing")
    assert group.members == ()
    return received + handled, group.lag


def test_producer_consumer_admin_under_asyncio(tmp_path: Path) -> None:
    with embedded_broker_thread(tmp_path / "broker") as broker:
        messages, lag = asyncio.run(_round_trip(broker.address))
    assert sorted(m.body for m in messages) == sorted(
        [b"%d" % i for i in range(1, 20, 2)] + [b"b1", b"b2", b"late"])
    assert all(m.tag == "paid" for m in messages)
    # Committed on close: nothing the group subscribed to is left (created-tagged messages
    # were filtered out, so they count as consumed too).
    assert lag == 0
