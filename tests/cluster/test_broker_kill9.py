"""``kill -9`` of the broker process mid-stream, then a restart on the same port and data:
producers carry on, consumers resume from the committed offsets, and every acknowledged
message is delivered.

The broker runs in its own process (``python -m tidemq broker``, flush ``async``: an
acknowledged record is in the page cache, which a killed process does not take with it).
Two producers (four sending tasks each) send single messages continuously, recording every
send that returned a ``SendResult``; a send that raised (the broker is down, after the
SDK's retries) is counted as not acknowledged and the task goes on with its next message.
A group of two consumers acks everything it receives. Each round lets the stream run
``PHASE_S`` seconds (longer than the broker's 1 s offset-persist interval, so the group's
offsets reach ``offsets.json``), SIGKILLs the broker, reads the offsets it had persisted,
waits ``OUTAGE_S`` and starts it again.

What must hold:

* the restarted broker reports an unclean stop (``recovery.clean_shutdown`` false);
* sends failed during the outage, and sends succeeded again after each restart;
* every acknowledged message is delivered at least once;
* consumption resumed from the committed offsets: after a kill, nothing below the offset
  the broker had persisted for that queue is delivered again (no rewind to the start), so
  the duplicates are bounded by what was consumed after the last persist, plus the
  hand-over overlap while the group re-forms; both numbers are printed. The group goes
  on committing to the restarted broker: the next kill finds higher offsets persisted;
* after ``ROUNDS`` kills the last broker still stops cleanly (SIGTERM, exit 0).
"""

from __future__ import annotations

import struct
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from cluster_broker import RunningBroker, broker_process, free_port, log_tail

from tidemq import Admin, Consumer, Message, Producer
from tidemq.broker.offsets import ConsumerOffsets
from tidemq.errors import TideError

TOPIC = "kill9-orders"
GROUP = "kill9-billing"
QUEUES = 4
ROUNDS = 2
PHASE_S = 8.0
"""Streaming time before each kill: past the broker's first offset persist (at ~6 s)."""
OUTAGE_S = 1.0
TAIL_S = 3.0
"""Streaming time after the last restart."""
PRODUCERS = 2
SENDERS_PER_PRODUCER = 4
SEND_PAUSE_S = 0.002
FAILED_SEND_PAUSE_S = 0.05
BODY = struct.Struct("<HI")
OVERLAP_ALLOWANCE = 1_000
"""Duplicates allowed per kill beyond the re-read: while the group re-forms on the new
broker, two members may pull a queue for a heartbeat (200 ms, some 300 messages here)."""
CONSUMER_SETTINGS: dict[str, Any] = {
    "heartbeat_interval_ms": 200,
    "commit_interval_ms": 200,
    "start_from": "earliest",
    "connect_timeout_ms": 1_000,
    "request_timeout_ms": 3_000,
}

pytestmark = pytest.mark.slow


@dataclass
class Delivery:
    at_s: float
    queue_id: int
    queue_offset: int
    key: tuple[int, int]


@dataclass
class Kill:
    at_s: float
    persisted: dict[int, int]
    """The group's offsets per queue in ``offsets.json`` when the broker died."""
    restarted_at_s: float = 0.0
    recovery: dict[str, Any] = field(default_factory=dict)
    """The restarted broker's recovery report (its ``started`` line)."""


@dataclass
class Stream:
    acked: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    """(producer, sequence) -> (queue id, queue offset) of every acknowledged send."""
    acked_at_s: list[float] = field(default_factory=list)
    failed_sends: int = 0
    failed_at_s: list[float] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    delivered: set[tuple[int, int]] = field(default_factory=set)


def persisted_offsets(data_dir: Path) -> dict[int, int]:
    """The group's committed offsets the broker saved, read with the broker's own loader
    while it is down: what the restarted broker will know."""
    saved = ConsumerOffsets(str(data_dir))
    saved.load()
    return saved.of_group(GROUP).get(TOPIC, {})


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    with trio.move_on_after(timeout_s):
        while not predicate():  # noqa: ASYNC110  (counters have no event to wait on)
            await trio.sleep(0.05)
        return
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


async def produce(address: str, producer_id: int, stream: Stream, stop: trio.Event) -> None:
    """Send until ``stop``; record what was acknowledged and count what was not."""
    sequence = iter(range(1 << 31))
    async with Producer(brokers=[address], send_timeout_ms=3_000,
                        connect_timeout_ms=1_000) as producer:

        async def sender() -> None:
            while not stop.is_set():
                key = (producer_id, next(sequence))
                try:
                    result = await producer.send(TOPIC, BODY.pack(*key))
                except TideError:
                    stream.failed_sends += 1
                    stream.failed_at_s.append(trio.current_time())
                    await trio.sleep(FAILED_SEND_PAUSE_S)
                    continue
                stream.acked[key] = (result.queue_id, result.queue_offset)
                stream.acked_at_s.append(trio.current_time())
                await trio.sleep(SEND_PAUSE_S)

        async with trio.open_nursery() as nursery:
            for _ in range(SENDERS_PER_PRODUCER):
                nursery.start_soon(sender)


async def consume(consumer: Consumer, stream: Stream) -> None:
    """Ack everything, forever (cancelled by the test)."""
    while True:
        for message in await consumer.receive(max=128, wait=0.5):
            record(stream, message)
            await message.ack()


def record(stream: Stream, message: Message) -> None:
    key: tuple[int, int] = BODY.unpack_from(message.body)
    stream.deliveries.append(Delivery(trio.current_time(), message.queue_id,
                                      message.queue_offset, key))
    stream.delivered.add(key)


async def test_kill_9_mid_stream_loses_no_acknowledged_message(tmp_path: Path) -> None:
    port, data_dir, log_path = free_port(), tmp_path / "data", tmp_path / "broker.log"
    stream, kills = Stream(), list[Kill]()
    started = time.perf_counter()
    with ExitStack() as brokers:

        async def start_broker() -> RunningBroker:
            return await trio.to_thread.run_sync(brokers.enter_context, broker_process(
                data_dir, log_path, port=port))

        broker = await start_broker()
        address = broker.address
        assert address == f"127.0.0.1:{port}"
        try:
            with trio.fail_after(55):
                async with Admin(brokers=[address]) as admin:
                    await admin.create_topic(TOPIC, queue_count=QUEUES)
                async with AsyncExitStack() as clients:
                    consumers = [await clients.enter_async_context(Consumer(
                        GROUP, {TOPIC: "*"}, brokers=[address], **CONSUMER_SETTINGS))
                        for _ in range(2)]
                    await wait_until(lambda: all(len(c.statistics().assigned_queues) == 2
                                                 for c in consumers), 10, "the group to form")
                    stop_producing = trio.Event()
                    async with trio.open_nursery() as nursery:
                        for consumer in consumers:
                            nursery.start_soon(consume, consumer, stream)
                        async with trio.open_nursery() as producing:
                            for producer_id in range(PRODUCERS):
                                producing.start_soon(produce, address, producer_id, stream,
                                                     stop_producing)
                            for _ in range(ROUNDS):
                                await trio.sleep(PHASE_S)
                                killed_at = trio.current_time()
                                broker.kill9()
                                kill = Kill(killed_at, persisted_offsets(data_dir))
                                kills.append(kill)
                                await trio.sleep(OUTAGE_S)
                                broker = await start_broker()
                                kill.restarted_at_s = trio.current_time()
                                recovery = broker.started["recovery"]
                                assert recovery["clean_shutdown"] is False, recovery
                                kill.recovery = recovery
                            await trio.sleep(TAIL_S)
                            stop_producing.set()
                        produced_s = time.perf_counter() - started
                        await wait_until(lambda: stream.acked.keys() <= stream.delivered, 30,
                                         "every acknowledged message to be delivered")
                        await trio.sleep(0.5)  # room for a late duplicate to show up
                        nursery.cancel_scope.cancel()
            assert broker.stop() == 0
        except BaseException:
            print(f"broker log:\n{log_tail(log_path)}")
            raise
    report(stream, kills, produced_s, time.perf_counter() - started)


def report(stream: Stream, kills: list[Kill], produced_s: float, total_s: float) -> None:
    """Print the counts, then check them (see the module docstring)."""
    deliveries = Counter(d.key for d in stream.deliveries)
    duplicates = sum(count - 1 for count in deliveries.values())
    unacked_delivered = len(stream.delivered - stream.acked.keys())
    # What each kill could make the group re-read: consumed past the persisted offset.
    rereadable = 0
    for kill in kills:
        highest: dict[int, int] = defaultdict(lambda: -1)
        for d in stream.deliveries:
            if d.at_s < kill.at_s:
                highest[d.queue_id] = max(highest[d.queue_id], d.queue_offset)
        rereadable += sum(max(0, top + 1 - kill.persisted.get(q, 0))
                          for q, top in highest.items())
    print(f"\nkill -9 x{len(kills)}: {len(stream.acked)} sends acknowledged, "
          f"{stream.failed_sends} failed (broker down); {len(stream.deliveries)} deliveries "
          f"of {len(stream.delivered)} distinct messages ({unacked_delivered} of them "
          f"unacknowledged sends that were stored); {duplicates} duplicates, "
          f"{rereadable} consumed past the persisted offsets at the kills; persisted "
          f"{[k.persisted for k in kills]}; recovery scanned "
          f"{[k.recovery.get('records_scanned') for k in kills]} records, dropped "
          f"{[k.recovery.get('dropped') for k in kills]}; produced for {produced_s:.1f} s, "
          f"{total_s:.1f} s in all")
    missing = stream.acked.keys() - stream.delivered
    assert not missing, f"{len(missing)} acknowledged messages never delivered, e.g. " \
        f"{sorted(missing)[:5]} at {[stream.acked[k] for k in sorted(missing)[:5]]}"
    assert len(stream.acked) > 1_000
    for index, kill in enumerate(kills):
        following = kills[index + 1].at_s if index + 1 < len(kills) else float("inf")
        down = [t for t in stream.failed_at_s if kill.at_s <= t <= kill.restarted_at_s]
        assert down, f"kill {index}: no send failed while the broker was down"
        assert any(kill.restarted_at_s < t < following for t in stream.acked_at_s), \
            f"kill {index}: no send succeeded after the restart"
        assert sum(kill.persisted.values()) > 0, f"kill {index}: no offsets were persisted"
        if index:  # the group went on after the restart, and the new broker kept its commits
            before = kills[index - 1].persisted
            assert all(offset > before.get(q, 0) for q, offset in kill.persisted.items()), \
                f"kill {index}: offsets {kill.persisted} did not move past {before}"
        rewound = [d for d in stream.deliveries
                   if d.at_s > kill.at_s and d.queue_offset < kill.persisted.get(d.queue_id, 0)]
        assert not rewound, f"kill {index}: {len(rewound)} deliveries below the committed " \
            f"offsets {kill.persisted}, e.g. {rewound[:3]}"
    assert duplicates < len(stream.acked), f"{duplicates} duplicates"
    assert duplicates <= rereadable + OVERLAP_ALLOWANCE * len(kills), \
        f"{duplicates} duplicates, more than the {rereadable} consumed past the persisted " \
        f"offsets and {OVERLAP_ALLOWANCE} per kill for the group re-forming"
