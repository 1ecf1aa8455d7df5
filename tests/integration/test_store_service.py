"""The store's Trio shell: acknowledgement per flush mode, group commit, clean shutdown."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from tidemq.broker.store_service import StoreService
from tidemq.config import StoreConfig
from tidemq.errors import MessageIllegal, StoreClosed
from tidemq.protocol.record import encode_draft, iter_records
from tidemq.store import MessageStore, PutResult
from tidemq.store import message_store as message_store_module
from tidemq.store import segments as segments_module
from tidemq.store.checkpoint import Checkpoint
from tidemq.store.mapped_file import MappedFile


def small_config(tmp_path: Path, **overrides: object) -> StoreConfig:
    values: dict[str, object] = dict(
        data_dir=str(tmp_path / "data"), segment_size_bytes=256 * 1024,
        max_message_size_bytes=16 * 1024, append_batch_bytes_max=64 * 1024,
        consume_queue_segment_entries=256, index_slots=64, index_entries_per_file=512,
        flush_interval_ms=20, checkpoint_interval_ms=50,
    )
    values.update(overrides)
    return StoreConfig(**values)  # type: ignore[arg-type]


async def test_sync_flush_acknowledges_after_fsync_with_group_commit(tmp_path: Path) -> None:
    store = MessageStore(small_config(tmp_path, flush="sync", flush_interval_ms=10_000))
    service = StoreService(store)
    acknowledged: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)

        async def writer(writer_id: int) -> None:
            for sequence in range(20):
                draft = encode_draft("orders", f"{writer_id}-{sequence}".encode())
                result = await service.put_batch("orders", writer_id % 4, [draft])
                # The promise of flush = "sync": acknowledged only once fsync covered it.
                assert store.log.flushed_offset >= result.end_offset
                acknowledged.append(result.end_offset)

        async with trio.open_nursery() as writers:
            for writer_id in range(16):
                writers.start_soon(writer, writer_id)
        nursery.cancel_scope.cancel()
    assert len(acknowledged) == 320
    # 320 acknowledged writes with the interval flusher parked at 10 s: only group commits
    # triggered by waiting writers flushed, and they shared fsyncs.
    assert 0 < service.flushes < 320


async def test_flush_listeners_run_once_their_offset_is_on_disk_before_waiting_tasks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``when_flushed``: called after the fsync covering its offset, in offset order, on
    the event loop before the tasks waiting on the same flush; never when cancelled; one
    that raises is logged and the others still run."""
    store = MessageStore(small_config(tmp_path, flush="sync", flush_interval_ms=10_000))
    service = StoreService(store)
    called: list[tuple[str, int]] = []  # (what, flushed offset then)

    def listener(name: str) -> None:
        called.append((name, store.log.flushed_offset))
        if name == "raises":
            raise RuntimeError("a broken listener")

    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.put_packed("orders", 0, encode_draft("orders", b"makes the queue"))
        results: list[PutResult] = []
        for name in ("first", "cancelled", "raises", "last"):
            result = service.put_packed_now("orders", 0, encode_draft("orders", b"x"))
            assert result is not None
            results.append(result)
            handle = service.when_flushed(result.end_offset, partial(listener, name))
            if name == "cancelled":
                handle.cancel()
        assert called == []  # nothing before the fsync

        async def wait_for_the_last() -> None:
            await service.acknowledged(results[-1])
            called.append(("waiting task", store.log.flushed_offset))
        await wait_for_the_last()
        nursery.cancel_scope.cancel()
    assert [name for name, _ in called] == ["first", "raises", "last", "waiting task"]
    assert all(flushed >= results[-1].end_offset for _, flushed in called)
    assert any(record.message == "flush_listener_failed" for record in caplog.records)


async def test_a_sync_ack_comes_after_an_fdatasync_that_began_after_its_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records every fdatasync of a commit-log segment: how far the log was written when it
    began, and that it finished. Each sync acknowledgement must find a finished one that
    began after its batch was written; an ack published before (or without) that fsync
    fails here, unlike a check of ``flushed_offset``, which the flusher itself sets."""
    store = MessageStore(small_config(tmp_path, flush="sync", flush_interval_ms=10_000,
                                      checkpoint_interval_ms=5))
    finished_covering: list[int] = []  # write offsets read just before each fdatasync
    real_sync = MappedFile.sync

    def recording_sync(self: MappedFile) -> None:
        written = store.log.write_offset
        real_sync(self)
        if "commitlog" in self.path:
            finished_covering.append(written)

    monkeypatch.setattr(MappedFile, "sync", recording_sync)
    service = StoreService(store)
    acknowledged = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)

        async def writer(writer_id: int) -> None:
            nonlocal acknowledged
            for sequence in range(25):
                draft = encode_draft("orders", f"{writer_id}-{sequence}".encode())
                if sequence % 2:
                    result = await service.put_packed("orders", writer_id % 3, draft)
                else:
                    result = await service.put_batch("orders", writer_id % 3, [draft])
                assert max(finished_covering, default=-1) >= result.end_offset
                acknowledged += 1
                if sequence % 5 == 0:
                    await trio.sleep(0.002)  # the flusher goes idle now and then

        async with trio.open_nursery() as writers:
            for writer_id in range(8):
                writers.start_soon(writer, writer_id)
        nursery.cancel_scope.cancel()
    assert acknowledged == 200
    assert service.checkpoints > 0


async def test_a_slow_checkpoint_does_not_hold_sync_acknowledgements(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint (consume queues, index, checkpoint file) runs beside the commit-log
    flushes: while one hangs, sync writers are still acknowledged, each after its fsync."""
    store = MessageStore(small_config(tmp_path, flush="sync", flush_interval_ms=10_000,
                                      checkpoint_interval_ms=1))
    checkpoint_started = threading.Event()
    release = threading.Event()
    real_write = message_store_module.write_checkpoint

    def slow_write(path: str, checkpoint: Checkpoint) -> None:
        if checkpoint.commit_log_flushed:  # not the one the store writes as it opens
            checkpoint_started.set()
            release.wait(10)
        real_write(path, checkpoint)

    monkeypatch.setattr(message_store_module, "write_checkpoint", slow_write)
    service = StoreService(store)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await service.put_batch("orders", 0, [encode_draft("orders", b"first")])
            with trio.fail_after(5):
                while not checkpoint_started.is_set():  # noqa: ASYNC110 (a thread sets it)
                    await trio.sleep(0.001)
            with trio.fail_after(5):  # the checkpoint is still hanging (10 s)
                for index in range(20):
                    result = await service.put_packed("orders", 0,
                                                      encode_draft("orders", b"%d" % index))
                    assert store.log.flushed_offset >= result.end_offset
            assert service.checkpoints == 0
            release.set()
            nursery.cancel_scope.cancel()
    finally:
        release.set()
    assert service.checkpoints <= 1


async def test_async_flush_acknowledges_at_once_and_close_flushes(tmp_path: Path) -> None:
    config = small_config(tmp_path, flush="async", flush_interval_ms=60_000,
                          checkpoint_interval_ms=60_000)
    store = MessageStore(config)
    service = StoreService(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        for index in range(50):
            await service.put_batch("orders", 0, [encode_draft("orders", b"%d" % index)])
        assert store.log.flushed_offset < store.log.write_offset  # not yet fsync'd
        nursery.cancel_scope.cancel()
    # Cancellation closed the store: flushed, checkpointed, lock removed.
    assert not (tmp_path / "data" / "lock").exists()
    reopened = MessageStore(config)
    report = reopened.open()
    assert report.clean_shutdown
    result = reopened.get_messages("orders", 0, 0, max_count=100)
    assert [r.body for r in iter_records(result.data)] == [b"%d" % i for i in range(50)]
    reopened.close()


async def test_errors_are_typed_and_service_keeps_running(tmp_path: Path) -> None:
    store = MessageStore(small_config(tmp_path))
    service = StoreService(store)
    with pytest.raises(StoreClosed):
        await service.put_batch("orders", 0, [encode_draft("orders", b"x")])
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        with pytest.raises(MessageIllegal):
            await service.put_batch("bad topic!", 0, [encode_draft("orders", b"x")])
        with pytest.raises(MessageIllegal):
            await service.put_batch("orders", 0, [b"not a record"])
        with pytest.raises(MessageIllegal):  # a draft naming another topic
            await service.put_batch("orders", 0, [encode_draft("payments", b"x")])
        with pytest.raises(MessageIllegal):
            await service.put_batch("orders", 0, [encode_draft("orders", bytes(20_000))])
        result = await service.put_batch("orders", 0, [encode_draft("orders", b"fine")])
        assert result.first_queue_offset == 0
        nursery.cancel_scope.cancel()


async def test_next_segment_is_prepared_ahead_of_need(tmp_path: Path) -> None:
    store = MessageStore(small_config(tmp_path))
    service = StoreService(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        body = bytes(1000)
        while store.log.write_offset < 200 * 1024:  # past half of the 256 KiB segment
            await service.put_batch("orders", 0, [encode_draft("orders", body)] * 10)
        with trio.fail_after(5):
            while store.log.segments._prepared is None:  # noqa: ASYNC110 (a worker thread sets it)
                await trio.sleep(0.01)
        prepared = store.log.segments._prepared
        while store.log.write_offset < 300 * 1024:
            await service.put_batch("orders", 0, [encode_draft("orders", body)] * 10)
        assert store.log.segments.segments[1] is prepared  # adopted, not created inline
        nursery.cancel_scope.cancel()


async def test_no_segment_is_prepared_before_the_active_one_is_half_full(
        tmp_path: Path) -> None:
    store = MessageStore(small_config(tmp_path))
    service = StoreService(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.put_batch("orders", 0, [encode_draft("orders", bytes(1000))] * 10)
        await trio.sleep(0.2)  # time for a preparer thread, were one started
        assert store.log.segments._prepared is None  # a fresh broker populates nothing ahead
        assert store.log.segments.segments[0].start == 0  # made at start, then adopted
        nursery.cancel_scope.cancel()


async def test_consume_queue_segments_are_made_in_worker_threads_and_puts_keep_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new queue's first segment and a half-full queue's next one are made off the event
    loop (a put never creates files there), and puts that wait for a first segment are
    stored in the order they came."""
    created_on: list[tuple[str, bool]] = []
    real_mapped_file = segments_module.MappedFile

    def recording_mapped_file(path: str, *args: object, **kwargs: object) -> MappedFile:
        created_on.append((path, threading.current_thread() is threading.main_thread()))
        return real_mapped_file(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(segments_module, "MappedFile", recording_mapped_file)
    store = MessageStore(small_config(tmp_path, flush="async"))
    service = StoreService(store)
    offsets: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)

        async def put(name: str) -> None:
            result = await service.put_packed("orders", 5, encode_draft("orders", b"x"))
            offsets[name] = result.first_queue_offset

        async with trio.open_nursery() as putters:
            for name in "abc":  # each parks (on the first segment) before the next starts
                putters.start_soon(put, name)
                await trio.testing.wait_all_tasks_blocked()
        assert offsets == {"a": 0, "b": 1, "c": 2}
        queue = store.queues.get("orders", 5)
        assert queue is not None
        for _ in range(128 - 3 + 1):  # past half of its 256 entries: the next is prepared
            await service.put_packed("orders", 5, encode_draft("orders", b"y"))
        with trio.fail_after(10):
            while not queue.segments.next_prepared:  # noqa: ASYNC110 (a worker thread sets it)
                await trio.sleep(0.01)
        for _ in range(200):  # across into the prepared segment
            await service.put_packed("orders", 5, encode_draft("orders", b"z"))
        assert len(queue.segments.segments) == 2
        nursery.cancel_scope.cancel()
    queue_files = [(path, on_loop) for path, on_loop in created_on if "consumequeue" in path]
    assert len(queue_files) == 2
    assert not any(on_loop for _path, on_loop in queue_files)


async def test_pages_are_populated_ahead_of_the_writer_off_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh store's first segment is populated before serving; the next segment's pages
    only once it is made (at half full), by the preparer's thread, never on the loop."""
    populated_on_loop: list[bool] = []
    real = MappedFile.populate

    def recording(self: MappedFile, begin: int, length: int) -> bool:
        populated_on_loop.append(threading.current_thread() is threading.main_thread())
        return real(self, begin, length)

    monkeypatch.setattr(MappedFile, "populate", recording)
    store = MessageStore(small_config(tmp_path, flush="async"))
    service = StoreService(store)
    segment_size = store.log.segment_size
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        segments = store.log.segments
        assert segments.populated_until == segment_size  # the whole first one
        assert populated_on_loop == [False]
        body = b"p" * 1000
        while store.log.write_offset < segment_size // 2 + 4096:
            await service.put_packed("orders", 0, encode_draft("orders", body))
        with trio.fail_after(10):
            while segments.populated_until < 2 * segment_size:  # noqa: ASYNC110 (a thread)
                await trio.sleep(0.01)
        assert segments.next_prepared
        assert populated_on_loop
        assert not any(populated_on_loop)
        nursery.cancel_scope.cancel()
