"""``FlushChain``: back-to-back flushes from completion callbacks, errors, cancellation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

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


async def test_flushes_follow_each_other_while_more_is_wanted(tmp_path: Path) -> None:
    """Each completion starts the next flush itself, covering what was appended while the
    previous one ran; no task runs in between (the appends here happen in the callback)."""
    store = open_store(tmp_path)
    flushed_at: list[int] = []
    appends_left = 3

    def on_flushed() -> None:
        nonlocal appends_left
        flushed_at.append(store.log.flushed_offset)
        if appends_left:
            appends_left -= 1
            append(store)

    def wants_more() -> bool:
        return store.log.flushed_offset < store.log.write_offset

    chain = FlushChain(store, on_flushed=on_flushed, wants_more=wants_more)
    append(store)
    assert await chain.run(store.plan_flush(with_indexes=False)) == 4
    assert flushed_at == sorted(set(flushed_at))  # four flushes, each further on
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


async def test_start_is_a_plain_call_that_flushes_in_a_thread(tmp_path: Path) -> None:
    """A writer starts a flush itself (no task hop); one under way makes ``start`` a no-op;
    with nothing unflushed there is nothing to start."""
    store = open_store(tmp_path)
    chain = FlushChain(store, on_flushed=lambda: None, wants_more=lambda: False)
    assert not chain.start()  # nothing appended yet
    append(store)
    target = store.log.write_offset
    assert chain.start()
    assert chain.busy
    assert not chain.start()  # one under way
    await chain.wait_idle()
    assert store.log.flushed_offset == target
    assert chain.completed == 1
    store.close()


async def test_a_flush_started_while_a_waiter_wakes_is_not_mistaken_for_cancellation(
        tmp_path: Path) -> None:
    """``wait_idle`` returns normally even when a writer has started the next flush before
    the waiting task ran again (Trio runs the two woken tasks in either order, so the
    round is repeated); that flush completes and later ones still start."""
    store = open_store(tmp_path)
    chain = FlushChain(store, on_flushed=lambda: None, wants_more=lambda: False)

    async def restart_when_idle() -> None:
        await chain._idle.wait()  # the event wait_idle waits on: woken with it
        append(store)
        assert chain.start()

    for round_number in range(20):
        append(store)
        assert chain.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(restart_when_idle)
            await trio.testing.wait_all_tasks_blocked()
            await chain.wait_idle()
        await chain.wait_idle()
        assert chain.completed == 2 * (round_number + 1)
    assert store.log.flushed_offset == store.log.write_offset
    store.close()


async def test_a_failed_flush_started_by_a_writer_reaches_the_watcher(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    failed: list[bool] = []
    chain = FlushChain(store, on_flushed=lambda: None, wants_more=lambda: False,
                       on_failed=lambda: failed.append(True))
    append(store)
    assert chain.start(FailingPlan(store.log.write_offset, []))
    with pytest.raises(StoreError, match="syncing failed"):
        await chain.wait_idle()
    assert failed == [True]
    assert not chain.start()  # a failed chain starts nothing more
    store.close()
