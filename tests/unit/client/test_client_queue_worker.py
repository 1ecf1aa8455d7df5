"""A queue worker's pull loop (tidemq.client._queue_worker), over a fake broker pool."""

from __future__ import annotations

from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

from tidemq.client._core import ConsumerCore
from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._message import Message
from tidemq.client._pool import CallOutcome
from tidemq.client._queue_worker import QueueWorker, WorkerState
from tidemq.client._routes import MessageQueue
from tidemq.client._settings import ConsumerSettings, parse_topics
from tidemq.client._tracker import QueueTracker
from tidemq.errors import SystemBusy, TopicNotFound
from tidemq.protocol.codes import RequestCode, ResponseCode
from tidemq.protocol.events import Body, Fields, Response
from tidemq.protocol.record import STAMP, STAMP_OFFSET, encode_draft, pack_host, seal

BROKER = "127.0.0.1:10911"


def stored(topic: str, body: bytes, queue_offset: int) -> bytes:
    """A record as the broker stores it (what a pull returns)."""
    record = bytearray(encode_draft(topic, body))
    STAMP.pack_into(record, STAMP_OFFSET, 0, 0, queue_offset, 100 * queue_offset, 1,
                    pack_host("127.0.0.1"), 10911)
    seal(record)
    return bytes(record)


class OnePullPool:
    """Answers the first PULL with two records; records what the application had received
    when the next PULL was sent, and never answers that one."""

    def __init__(self, received: list[bytes]) -> None:
        self.received = received
        self.received_at_next_pull: list[bytes] | None = None
        self.next_pull_sent = anyio.Event()
        self.pulls = 0

    def call_nowait(self, *args: object, **kwargs: object) -> None:
        return None  # never at once: the worker awaits ``call``

    async def call(self, address: str, code: RequestCode, fields: Fields, body: Body = b"",
                   *, timeout_ms: int | None = None) -> Response:
        assert code is RequestCode.PULL_MESSAGE
        self.pulls += 1
        if self.pulls == 1:
            records = stored("orders", b"a", 0) + stored("orders", b"b", 1)
            return Response(ResponseCode.SUCCESS, 1, {"next_offset": 2}, records)
        self.received_at_next_pull = list(self.received)
        self.next_pull_sent.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_receivers_take_a_pull_before_the_next_pull_goes_out() -> None:
    """The end-to-end latency of a message includes whatever its queue worker does between
    delivering it and yielding; building and sending the next pull is not needed first."""
    received: list[bytes] = []
    pool = OnePullPool(received)
    core, owned, worker = await _worker_over(pool)

    async def application() -> None:  # what Consumer.receive(max=32) does
        batch: list[Message] = [await core.receive()]
        core.receive_many_nowait(batch, 32)
        received.extend(message.body for message in batch)

    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(application)
                await anyio.wait_all_tasks_blocked()  # the application waits first
                # Background tasks live in the consumer's own task group (only closing it
                # stops them), as Consumer.__aenter__ sets up.
                await owned.task_group.start(worker.run)
                await pool.next_pull_sent.wait()
                group.cancel_scope.cancel()
    finally:
        await owned.close()
    assert pool.received_at_next_pull == [b"a", b"b"]


class PassCountingPool:
    """Answers the first PULL with one record; notes how many scheduler passes a counting
    task saw when each PULL was sent. Never answers the second."""

    def __init__(self) -> None:
        self.passes = 0
        self.passes_at_pulls: list[int] = []
        self.next_pull_sent = anyio.Event()

    def call_nowait(self, *args: object, **kwargs: object) -> None:
        return None  # never at once: the worker awaits ``call``

    async def count_passes(self) -> None:
        while True:
            await anyio.lowlevel.checkpoint()
            self.passes += 1

    async def call(self, address: str, code: RequestCode, fields: Fields, body: Body = b"",
                   *, timeout_ms: int | None = None) -> Response:
        self.passes_at_pulls.append(self.passes)
        if len(self.passes_at_pulls) == 1:
            return Response(ResponseCode.SUCCESS, 1, {"next_offset": 1},
                            stored("orders", b"a", 0))
        self.next_pull_sent.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_with_no_receiver_waiting_the_next_pull_goes_out_at_once() -> None:
    """Receivers busy elsewhere (the inbox is not awaited): yielding would only delay the
    next pull, so a throughput consumer keeps its pipeline full."""
    pool = PassCountingPool()
    core, owned, worker = await _worker_over(pool)
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(pool.count_passes)
                await owned.task_group.start(worker.run)
                await pool.next_pull_sent.wait()
                group.cancel_scope.cancel()
    finally:
        await owned.close()
    first, second = pool.passes_at_pulls
    assert second == first  # delivered and pulled again within one step
    assert len(core.inbox) == 1


class ReaderPool:
    """Takes pulls through ``call_nowait`` and keeps their callbacks; the test answers them
    (as the connection's reader task would). Records what the application had received when
    each pull was sent, and the pulls withdrawn (``forget``)."""

    def __init__(self, received: list[bytes]) -> None:
        self.received = received
        self.pulls: list[tuple[Fields, CallOutcome, list[bytes]]] = []
        self.pull_sent = anyio.Event()
        self.forgotten: list[int] = []

    def call_nowait(self, address: str, code: RequestCode, fields: Fields, body: Body,
                    on_outcome: CallOutcome, *, timeout_ms: int | None = None
                    ) -> tuple[ReaderPool, int]:
        assert code is RequestCode.PULL_MESSAGE
        self.pulls.append((fields, on_outcome, list(self.received)))
        self.pull_sent.set()
        return self, len(self.pulls)

    def forget(self, opaque: int) -> bool:
        self.forgotten.append(opaque)
        return True

    async def next_pull(self, count: int) -> tuple[Fields, CallOutcome, list[bytes]]:
        while len(self.pulls) < count:
            self.pull_sent = anyio.Event()
            await self.pull_sent.wait()
        return self.pulls[count - 1]

    async def call(self, *args: object, **kwargs: object) -> Response:
        raise AssertionError("the worker pulls through call_nowait when it can")


async def test_the_reader_delivers_and_receivers_run_before_the_next_pull() -> None:
    """The pull's answer is delivered by the task that gets it (no hop through the worker),
    and the receivers it woke still take the messages before the next pull goes out."""
    received: list[bytes] = []
    pool = ReaderPool(received)
    core, owned, worker = await _worker_over(pool)
    delivered: list[int] = []

    async def application() -> None:  # what Consumer.receive(max=32) does
        batch: list[Message] = [await core.receive()]
        core.receive_many_nowait(batch, 32)
        received.extend(message.body for message in batch)

    deliver_many = core.deliver_many

    def recording(messages: list[Message]) -> None:
        delivered.append(len(messages))
        deliver_many(messages)

    core.deliver_many = recording  # type: ignore[method-assign]
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(application)
                await anyio.wait_all_tasks_blocked()
                await owned.task_group.start(worker.run)
                fields, on_outcome, _ = await pool.next_pull(1)
                assert fields["offset"] == 0
                records = stored("orders", b"a", 0) + stored("orders", b"b", 1)
                on_outcome(Response(ResponseCode.SUCCESS, 1, {"next_offset": 2}, records), None)
                assert delivered == [2]  # delivered within the callback itself
                assert worker.tracker.next_offset == 2
                fields, _, received_then = await pool.next_pull(2)
                group.cancel_scope.cancel()
    finally:
        await owned.close()
    assert received_then == [b"a", b"b"]
    assert fields["offset"] == 2
    assert pool.forgotten == [2]  # closing withdrew the pull still out


async def test_a_stopped_worker_delivers_no_late_answer() -> None:
    pool = ReaderPool([])
    core, owned, worker = await _worker_over(pool)
    try:
        with anyio.fail_after(5):
            await owned.task_group.start(worker.run)
            _, on_outcome, _ = await pool.next_pull(1)
            await worker.stop(drain_timeout_ms=0)
            on_outcome(Response(ResponseCode.SUCCESS, 1, {"next_offset": 1},
                                stored("orders", b"late", 0)), None)
    finally:
        await owned.close()
    assert len(core.inbox) == 0
    assert worker.tracker.next_offset == 0
    assert pool.forgotten == [1]


async def test_pull_errors_from_the_reader_back_off_and_a_gone_topic_ends_the_worker(
        caplog: pytest.LogCaptureFixture) -> None:
    pool = ReaderPool([])
    _core, owned, worker = await _worker_over(pool, pull_backoff_ms=50)
    try:
        with anyio.fail_after(5):
            await owned.task_group.start(worker.run)
            _, on_outcome, _ = await pool.next_pull(1)
            on_outcome(None, SystemBusy("busy"))
            await anyio.sleep(0.01)
            assert len(pool.pulls) == 1  # backing off
            _, on_outcome, _ = await pool.next_pull(2)  # then pulls again, same offset
            assert pool.pulls[1][0]["offset"] == 0
            on_outcome(None, TopicNotFound("topic 'orders' does not exist"))
            await worker._finished.wait()
    finally:
        await owned.close()
    assert "pull_failed" in caplog.text
    assert worker.state is WorkerState.DROPPED  # worker_gone: the topic is gone
    assert len(pool.pulls) == 2


async def _worker_over(pool: object, **settings_given: Any
                       ) -> tuple[ConsumerCore, OwnedTaskGroup, QueueWorker]:
    """A consumer core bound to an entered task group, and a worker of queue orders/0."""
    settings = ConsumerSettings(group="g", client_id="c",
                                subscriptions=parse_topics({"orders": "*"}), **settings_given)
    core = ConsumerCore(cast(Any, pool), settings)
    owned = OwnedTaskGroup()
    await owned.enter()
    core.bind(owned)
    return core, owned, QueueWorker(core, MessageQueue("orders", BROKER, 0), QueueTracker(0))
