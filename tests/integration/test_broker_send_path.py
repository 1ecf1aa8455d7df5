"""Where a broker handles a send: on the connection's reader task when nothing has to wait
(``processors.send.send_now``), in a handler task when something does (a topic to create
and save, a queue segment being made, an fsync), with the records in order either way."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tidemq.broker.node import Broker, BrokerStarted
from tidemq.config import BrokerConfig, StoreConfig, TidemqConfig
from tidemq.errors import FlushTimeout
from tidemq.net import ServerConnectionContext, connect
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Response
from tidemq.protocol.record import encode_draft, iter_records
from tidemq.store import PutResult
from tidemq.store.mapped_file import MappedFile

WORKER_TASK = "tidemq.net.handler"  # the name net gives its handler tasks

Running = tuple[Broker, BrokerStarted]


def record_where_puts_run(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on the store service: one line per put, "<how> <topic>/<queue> <task>"."""
    service = broker.store_service
    put_now, put = service.put_packed_now, service.put_packed
    seen: list[str] = []

    def task_name() -> str:
        return "worker" if trio.lowlevel.current_task().name == WORKER_TASK else "reader"

    def spy_put_now(topic: str, queue_id: int, records: Any) -> PutResult | None:
        result = put_now(topic, queue_id, records)
        seen.append(f"{'now' if result else 'not-now'} {topic}/{queue_id} {task_name()}")
        return result

    async def spy_put(topic: str, queue_id: int, records: Any, **kwargs: Any) -> PutResult:
        seen.append(f"wait {topic}/{queue_id} {task_name()}")
        return await put(topic, queue_id, records, **kwargs)
    monkeypatch.setattr(service, "put_packed_now", spy_put_now)
    monkeypatch.setattr(service, "put_packed", spy_put)
    return seen


async def test_sends_that_need_no_waiting_are_stored_and_answered_on_the_reader(
        running_broker: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    broker, started = running_broker
    seen = record_where_puts_run(broker, monkeypatch)
    async with await connect(started.host, started.port, client_id="t") as client:
        async def send(queue_id: int, body: bytes) -> None:
            answer = await client.call(RequestCode.SEND_MESSAGE,
                                       {"topic": "fresh", "queue_id": queue_id},
                                       encode_draft("fresh", body))
            assert answer.fields["queue_id"] == queue_id

        await send(0, b"a")  # a new topic: created and saved in a handler task first
        await send(0, b"b")  # nothing to wait for
        await send(1, b"c")  # the queue's first segment is made first, in a worker thread
        await send(1, b"d")
        await send(0, b"e")
        for queue_id, bodies in ((0, [b"a", b"b", b"e"]), (1, [b"c", b"d"])):
            pulled = await client.call(RequestCode.PULL_MESSAGE, {
                "group": "g", "topic": "fresh", "queue_id": queue_id, "offset": 0,
                "max_count": 10})
            assert [record.body for record in iter_records(pulled.body)] == bodies
    assert seen == ["wait fresh/0 worker", "now fresh/0 reader", "not-now fresh/1 reader",
                    "wait fresh/1 worker", "now fresh/1 reader", "now fresh/0 reader"]
    assert tuple(broker.topics.topics) == ("fresh",)
    assert await trio.Path(broker.topics.path).exists()  # saved before its first record was stored


async def test_sends_while_a_queue_segment_is_made_keep_their_order(
        running_broker: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sends arriving while a queue's first segment is being made wait behind the one that
    asked for it, in order, though the queue is ready by the time some are read."""
    broker, started = running_broker
    store = broker.store
    prepare = store.prepare_queue_segment
    release = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def slow_prepare(topic: str, queue_id: int) -> None:
        trio.from_thread.run(release.wait, trio_token=token)
        prepare(topic, queue_id)
    monkeypatch.setattr(store, "prepare_queue_segment", slow_prepare)
    async with await connect(started.host, started.port, client_id="t") as client:
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "ordered", "queue_count": 1})
        sent: list[int] = []

        async def send(n: int) -> None:
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "ordered", "queue_id": 0},
                              encode_draft("ordered", b"%d" % n))
            sent.append(n)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for n in range(20):
                    nursery.start_soon(send, n)
                    await trio.lowlevel.checkpoint()
                await trio.sleep(0.05)
                assert sent == []  # all wait behind the segment being made
                release.set()
        pulled = await client.call(RequestCode.PULL_MESSAGE, {
            "group": "g", "topic": "ordered", "queue_id": 0, "offset": 0, "max_count": 100})
        stored = [int(record.body) for record in iter_records(pulled.body)]
    # The client started them in order; the broker stored them in the order they came.
    assert stored == list(range(20))


@pytest.fixture
async def sync_broker(tmp_path: Path) -> AsyncIterator[Running]:
    broker = Broker(TidemqConfig(
        broker=BrokerConfig(port=0),
        store=StoreConfig(data_dir=str(tmp_path / "sync"), flush="sync",
                          segment_size_bytes=8 << 20, index_slots=1024,
                          index_entries_per_file=16384)))
    async with trio.open_nursery() as nursery:
        started = await nursery.start(broker.run)
        yield broker, started
        nursery.cancel_scope.cancel()


async def test_with_sync_flush_the_reader_appends_and_a_flush_listener_acknowledges(
        sync_broker: Running, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tidemq.net.session")
    broker, started = sync_broker
    log = broker.store.log
    service = broker.store_service
    in_listener = False
    acknowledged: list[tuple[int, bool]] = []  # (opaque, from a flush listener)
    when_flushed, respond_now = service.when_flushed, ServerConnectionContext.respond_now

    def spy_when_flushed(offset: int, callback: Callable[[], None]) -> Any:
        def run() -> None:
            nonlocal in_listener
            in_listener = True
            try:
                callback()
            finally:
                in_listener = False
        return when_flushed(offset, run)

    def spy_respond_now(context: ServerConnectionContext, response: Response) -> bool:
        first = response.opaque not in {opaque for opaque, _ in acknowledged}
        sent = respond_now(context, response)  # True, sending nothing, when answered already
        if sent and first and "commit_offsets" in response.fields:
            acknowledged.append((response.opaque, in_listener))
        return sent
    monkeypatch.setattr(service, "when_flushed", spy_when_flushed)
    monkeypatch.setattr(ServerConnectionContext, "respond_now", spy_respond_now)
    async with await connect(started.host, started.port, client_id="t") as client:
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "durable", "queue_count": 1})
        await client.call(RequestCode.SEND_MESSAGE, {"topic": "durable", "queue_id": 0},
                          encode_draft("durable", b"warm-up"))  # makes the queue's segment
        seen = record_where_puts_run(broker, monkeypatch)
        acknowledged.clear()
        flushed_at_answer: list[tuple[int, int]] = []
        for n in range(5):
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "durable", "queue_id": 0},
                              encode_draft("durable", b"%d" % n))
            flushed_at_answer.append((log.flushed_offset, log.write_offset))
        pulled = await client.call(RequestCode.PULL_MESSAGE, {
            "group": "g", "topic": "durable", "queue_id": 0, "offset": 1, "max_count": 10})
        assert [record.body for record in iter_records(pulled.body)] == \
            [b"%d" % n for n in range(5)]
    assert seen == ["now durable/0 reader"] * 5
    assert all(flushed >= written for flushed, written in flushed_at_answer)
    # Each acknowledged by its flush listener; the handler task sent nothing more (the
    # client would have met an answer without a request).
    assert [from_listener for _, from_listener in acknowledged] == [True] * 5
    assert not [r for r in caplog.records if r.message == "response_without_waiter"]


async def test_with_sync_flush_a_burst_on_one_connection_is_appended_on_the_reader(
        sync_broker: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync send's answer waits for the fsync in a handler task, but the sends read with
    it are appended on the reader too (they used to queue behind that task, each then
    handled from the start in a task of its own)."""
    broker, started = sync_broker
    async with await connect(started.host, started.port, client_id="t") as client:
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "burst", "queue_count": 4})
        for queue_id in range(4):  # makes the queues' segments
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "burst", "queue_id": queue_id},
                              encode_draft("burst", b"warm-up"))
        seen = record_where_puts_run(broker, monkeypatch)
        answers: list[Response] = []

        async def send(queue_id: int, body: bytes) -> None:
            answers.append(await client.call(
                RequestCode.SEND_MESSAGE, {"topic": "burst", "queue_id": queue_id},
                encode_draft("burst", body)))

        async with trio.open_nursery() as nursery:  # one scheduler pass: one write, one read
            for n in range(16):
                nursery.start_soon(send, n % 4, b"%d" % n)
        for queue_id in range(4):
            pulled = await client.call(RequestCode.PULL_MESSAGE, {
                "group": "g", "topic": "burst", "queue_id": queue_id, "offset": 1,
                "max_count": 10})
            assert sorted(record.body for record in iter_records(pulled.body)) == \
                sorted(b"%d" % n for n in range(queue_id, 16, 4))
    assert len(answers) == 16
    # (Trio starts the sending tasks in any order.)
    assert sorted(seen) == sorted(f"now burst/{n % 4} reader" for n in range(16))


async def test_with_sync_flush_a_late_fsync_is_answered_flush_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync send whose fsync does not finish within ``sync_flush_timeout_ms`` is answered
    FLUSH_TIMEOUT (written, not known to be on disk), once, and the broker goes on: the
    record is readable, and sends are acknowledged again once the disk answers."""
    broker = Broker(TidemqConfig(
        broker=BrokerConfig(port=0),
        store=StoreConfig(data_dir=str(tmp_path / "late"), flush="sync",
                          segment_size_bytes=8 << 20, index_slots=1024,
                          index_entries_per_file=16384, sync_flush_timeout_ms=300)))
    release = threading.Event()
    sync = MappedFile.sync

    def hanging_sync(mapped: MappedFile) -> None:
        release.wait(10)
        sync(mapped)

    async with trio.open_nursery() as nursery:
        started = await nursery.start(broker.run)
        async with await connect(started.host, started.port, client_id="t") as client:
            await client.call(RequestCode.CREATE_TOPIC, {"topic": "late", "queue_count": 1})
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "late", "queue_id": 0},
                              encode_draft("late", b"warm-up"))
            monkeypatch.setattr(MappedFile, "sync", hanging_sync)
            with trio.fail_after(5):
                with pytest.raises(FlushTimeout):
                    await client.call(RequestCode.SEND_MESSAGE, {"topic": "late", "queue_id": 0},
                                      encode_draft("late", b"not known on disk"))
            pulled = await client.call(RequestCode.PULL_MESSAGE, {
                "group": "g", "topic": "late", "queue_id": 0, "offset": 0, "max_count": 10})
            assert [record.body for record in iter_records(pulled.body)] == \
                [b"warm-up", b"not known on disk"]
            release.set()
            monkeypatch.setattr(MappedFile, "sync", sync)
            with trio.fail_after(5):
                answer = await client.call(RequestCode.SEND_MESSAGE,
                                           {"topic": "late", "queue_id": 0},
                                           encode_draft("late", b"on disk again"))
            assert answer.fields["first_queue_offset"] == 2
        nursery.cancel_scope.cancel()
