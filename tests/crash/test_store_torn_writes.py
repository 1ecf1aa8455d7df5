"""The exact states a kill can leave inside one append, built in-process and recovered.

A random SIGKILL (test_store_crash.py) rarely lands inside the microseconds an append
spends copying bytes, so each window is built here directly: a batch copied but not
dispatched to its consume queue and index; a record copied but not yet checksummed; a
record half copied; a new segment created but the old one not yet closed by its marker;
a segment preallocated ahead of need. Each time the store reopens unclean, serves every
whole record (acknowledged or not), cuts only the torn tail, and appends on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemq.common.clock import ManualClock
from tidemq.config import StoreConfig
from tidemq.protocol.record import CRC_OFFSET, encode_draft, iter_records
from tidemq.store import Dropped, MessageStore
from tidemq.testing.store_checks import check_store


def config_for(directory: Path) -> StoreConfig:
    return StoreConfig(data_dir=str(directory), segment_size_bytes=64 * 1024,
                       max_message_size_bytes=16 * 1024, append_batch_bytes_max=32 * 1024,
                       consume_queue_segment_entries=16, index_slots=64,
                       index_entries_per_file=64)


def opened(directory: Path) -> MessageStore:
    store = MessageStore(config_for(directory), clock=ManualClock())
    store.open()
    return store


def acknowledged_batches(store: MessageStore) -> list[bytes]:
    bodies = [f"ack-{i}".encode() * 50 for i in range(20)]
    for body in bodies:
        store.put_batch("T", 0, [encode_draft("T", body, {"KEYS": body[:6].decode()})])
    return bodies


def bodies_of(store: MessageStore) -> list[bytes]:
    got = store.get_messages("T", 0, 0, max_count=1_000)
    return [r.body for r in iter_records(got.data)]


def copy_without_dispatch(store: MessageStore, bodies: list[bytes]) -> list[int]:
    """What ``put_batch`` has done when a kill lands between the copy into the log and
    the dispatch to consume queue and index. Returns the records' commit offsets."""
    queue = store.queues.get_or_create("T", 0)
    drafts = [encode_draft("T", body, {"KEYS": f"torn-{i}"}) for i, body in
              enumerate(bodies)]
    appended = store.log.append_batch(b"T", 0, queue.max_offset, drafts, 0, 0)
    return appended.commit_offsets


def reopen_after_kill(store: MessageStore, directory: Path) -> tuple[MessageStore,
                                                                     list[Dropped]]:
    store.abandon()
    reopened = MessageStore(config_for(directory), clock=ManualClock())
    report = reopened.open()
    assert not report.clean_shutdown
    assert report.consume_queue_problems == []
    assert report.index_problems == []
    check_store(reopened)
    return reopened, report.dropped


def test_batch_copied_but_not_dispatched(tmp_path: Path) -> None:
    store = opened(tmp_path)
    acknowledged = acknowledged_batches(store)
    extra = [b"whole-1", b"whole-2", b"whole-3"]
    copy_without_dispatch(store, extra)
    store, dropped = reopen_after_kill(store, tmp_path)
    assert dropped == []
    assert bodies_of(store) == acknowledged + extra  # whole records are kept and indexed
    assert [r.body for r in store.lookup_by_key("T", "torn-1")] == [b"whole-2"]
    store.put_batch("T", 0, [encode_draft("T", b"next")])
    assert bodies_of(store)[-1] == b"next"
    store.close()


@pytest.mark.parametrize("torn", ["crc-not-written", "half-copied"])
def test_last_record_of_a_batch_torn(tmp_path: Path, torn: str) -> None:
    store = opened(tmp_path)
    acknowledged = acknowledged_batches(store)
    offsets = copy_without_dispatch(store, [b"kept-1", b"kept-2", b"x" * 2_000])
    end = store.log.write_offset
    segment = store.log.segments.find(offsets[-1])
    assert segment is not None
    relative = offsets[-1] - segment.start
    if torn == "crc-not-written":
        segment.map[relative + CRC_OFFSET:relative + CRC_OFFSET + 4] = bytes(4)
    else:
        segment.zero(relative + 1_000, end - segment.start)
    store, dropped = reopen_after_kill(store, tmp_path)
    assert [(d.offset, d.action) for d in dropped] == [(offsets[-1], "truncated")]
    assert store.log.write_offset == offsets[-1]
    assert bodies_of(store) == [*acknowledged, b"kept-1", b"kept-2"]
    result = store.put_batch("T", 0, [encode_draft("T", b"next", {"KEYS": "torn-2"})])
    assert result.commit_offsets == [offsets[-1]]  # the torn bytes are written over
    assert [r.body for r in store.lookup_by_key("T", "torn-2")] == [b"next"]
    store.close()
    again = opened(tmp_path)
    assert bodies_of(again) == [*acknowledged, b"kept-1", b"kept-2", b"next"]
    again.close()


def test_new_segment_created_before_the_old_one_is_closed(tmp_path: Path) -> None:
    store = opened(tmp_path)
    acknowledged = acknowledged_batches(store)
    store.log.segments.create(store.log.segments.last.end)  # then the kill
    store, dropped = reopen_after_kill(store, tmp_path)
    assert dropped == []
    assert bodies_of(store) == acknowledged
    assert store.stats().commit_log_segments == 1
    for index in range(120):  # appends go on and roll into a new segment normally
        store.put_batch("T", 0, [encode_draft("T", f"more-{index}".encode() * 100)])
    assert store.stats().commit_log_segments >= 2
    check_store(store)
    store.close()


def test_segment_preallocated_ahead_of_need(tmp_path: Path) -> None:
    store = opened(tmp_path)
    acknowledged = acknowledged_batches(store)
    store.prepare_next_segment()
    store, dropped = reopen_after_kill(store, tmp_path)
    assert dropped == []
    assert bodies_of(store) == acknowledged
    store.prepare_next_segment()
    for index in range(120):
        store.put_batch("T", 0, [encode_draft("T", f"more-{index}".encode() * 100)])
    check_store(store)
    store.close()
