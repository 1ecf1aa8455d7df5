"""``FlushChain``: back-to-back flushes from completion callbacks, errors, cancellation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from tidemq.broker.flush_chain import FlushChain
from tidemq.config import StoreConfig
from tidemq.errors import StoreError
from tidemq.protocol.record import encode_draft
from tidemq.store import FlushPlan, MessageStore


def open_store(tmp_path: Path) -> MessageStore:
    store = MessageStore(StoreConfig(
        data_dir=str(tmp_path), segment_size_bytes=256 * 1024, max_message_size_bytes=16 * 1024,
        append_batch_bytes_max=64 * 1024,
        consume_queue_segment_entries=256, index_slots=64, index_entries_per_file=512))
    store.open()
    return store


def append(store: MessageStore) -> None:
    store.put_batch("T", 0, [encode_draft("T", b"x" * 100)])


async def test_flushes_follow_each_other_while_more_is_wanted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each completion starts the next flush itself, covering what was appended while the
    previous one ran, before it publishes (the next fsync runs while the acknowledgements
    of this one go out); no task runs in between."""
    store = open_store(tmp_path)
    plan_flush = store.plan_flush
    plans_made = 0
    published: list[tuple[int, int]] = []  # (flushed offset, plans made by then)
    appends_left = 3

    def counting_plan_flush(*, with_indexes: bool) -> FlushPlan:
        nonlocal plans_made
        plans_made += 1
        return plan_flush(with_indexes=with_indexes)
    monkeypatch.setattr(store, "plan_flush", counting_plan_flush)

    def on_flushed() -> None:
        published.append((store.log.flushed_offset, plans_made))

    def wants_more() -> bool:
        nonlocal appends_left
        if appends_left:  # a writer appended while the fsync ran
            appends_left -= 1
            append(store)
        return store.log.flushed_offset < store.log.write_offset

    chain = FlushChain(store, on_flushed=on_flushed, wants_more=wants_more)
    append(store)
    assert await chain.run(store.plan_flush(with_indexes=False)) == 4
    offsets = [offset for offset, _ in published]
    assert offsets == sorted(set(offsets))  # four flushes, each further on
    # Each of the first three was published once the next one was planned and started.
    assert [made for _, made in published] == [2, 3, 4, 4]
    assert store.log.flushed_offset == store.log.write_offset
    store.close()


class FailingPlan(FlushPlan):
    def execute(self) -> None:
        raise StoreError("syncing failed")


async def test_a_failed_flush_ends_the_chain_and_is_raised(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    append(store)
    flushed = store.log.flushed_offset
    chain = FlushChain(store, on_flushed=lambda: None, wants_more=lambda: True)
    with pytest.raises(StoreError, match="syncing failed"):
        await chain.run(FailingPlan(store.log.write_offset, []))
    assert store.log.flushed_offset == flushed  # not published
    store.close()


async def test_cancelled_it_waits_for_the_fsync_under_way_and_starts_no_other(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    started = trio.Event()
    release = threading.Event()
    token = trio.lowlevel.current_trio_token()

    class SlowPlan(FlushPlan):
        def execute(self) -> None:
            token.run_sync_soon(started.set)
            release.wait(10)

    flushes = 0

    def on_flushed() -> None:
        nonlocal flushes
        flushes += 1
        append(store)  # always more to flush

    append(store)
    target = store.log.write_offset
    chain = FlushChain(store, on_flushed=on_flushed, wants_more=lambda: flushes < 5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chain.run, SlowPlan(target, []))
        await started.wait()
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await trio.sleep(0.05)
            assert nursery.child_tasks  # still waiting for the fsync under way
            release.set()
    assert flushes == 1  # the one under way was published; no other was started
    assert store.log.flushed_offset == target
    store.close()
