"""The store's Trio shell: acknowledgement per flush mode, group commit, clean shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tidemq.broker.store_service import StoreService
from tidemq.config import StoreConfig
from tidemq.errors import MessageIllegal, StoreClosed
from tidemq.protocol.record import encode_draft, iter_records
from tidemq.store import MessageStore


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
