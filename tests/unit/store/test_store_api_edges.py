"""The store facade at its edges: bad input is refused with nothing written, a closed store
refuses every call with StoreClosed, and open/close/abandon manage the lock file."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from tidemq.common.clock import ManualClock
from tidemq.common.ids import encode_message_id
from tidemq.config import StoreConfig
from tidemq.errors import MessageIllegal, StoreClosed, StoreError
from tidemq.protocol.record import (
    HEADER_SIZE,
    compact_host,
    encode_draft,
    iter_records,
    pack_host,
)
from tidemq.store import GetStatus, MessageStore
from tidemq.testing.store_checks import check_store


def config_for(directory: Path, **overrides: object) -> StoreConfig:
    values: dict[str, object] = dict(
        data_dir=str(directory), segment_size_bytes=64 * 1024,
        max_message_size_bytes=16 * 1024, append_batch_bytes_max=32 * 1024,
        consume_queue_segment_entries=64, index_slots=64, index_entries_per_file=256)
    values.update(overrides)
    return StoreConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> MessageStore:
    opened = MessageStore(config_for(tmp_path), clock=ManualClock())
    opened.open()
    yield opened  # type: ignore[misc]
    opened.close()


def garbage_properties_draft(topic: str) -> bytes:
    """An indexed draft whose properties block is not msgpack (same length)."""
    draft = bytearray(encode_draft(topic, b"body", {"KEYS": "a"}))
    length = struct.unpack_from("<I", draft, 108)[0]
    start = HEADER_SIZE + len(topic)
    draft[start:start + length] = b"\xc1" * length
    return bytes(draft)


@pytest.mark.parametrize("drafts_for", [
    lambda: [],
    lambda: [b"short"],
    lambda: [encode_draft("other", b"x")],  # names another topic
    lambda: [encode_draft("T", b"x" * 17_000)],  # over max_message_size_bytes
    lambda: [encode_draft("T", b"x" * 15_000)] * 3,  # over append_batch_bytes_max
    lambda: [garbage_properties_draft("T")],  # the index could never read its keys
    lambda: [encode_draft("T", b"x", {"KEYS": " ".join(f"k{i}" for i in range(300))})],
    lambda: [encode_draft("T", b"x")[:-1]],  # parts do not add up
    lambda: [encode_draft("T", b"x") + encode_draft("T", b"y")],  # two records in one draft
    lambda: [encode_draft("T", b"x"), b""],  # an empty draft
    lambda: [encode_draft("T", b"x") + encode_draft("T", b"y"), b""],  # split elsewhere
])
def test_bad_batches_are_refused_with_nothing_written(store: MessageStore,
                                                      drafts_for: object) -> None:
    assert callable(drafts_for)
    with pytest.raises(MessageIllegal):
        store.put_batch("T", 0, drafts_for())
    assert store.log.write_offset == 0
    assert store.max_offset("T", 0) == 0
    store.put_batch("T", 0, [encode_draft("T", b"fine", {"KEYS": "k"})])
    assert store.max_offset("T", 0) == 1
    check_store(store)


@pytest.mark.parametrize("records", [
    b"", b"short", encode_draft("T", b"x")[:-1], encode_draft("T", b"x") + b"\0" * 8])
def test_bad_packed_batches_are_refused_with_nothing_written(store: MessageStore,
                                                             records: bytes) -> None:
    with pytest.raises(MessageIllegal):
        store.put_packed("T", 0, records)
    assert store.log.write_offset == 0
    packed = encode_draft("T", b"a", {"KEYS": "k"}) + encode_draft("T", b"b")
    assert store.put_packed("T", 0, memoryview(packed)).count == 2
    assert [record.body for record in iter_records(store.get_messages("T", 0, 0).data)] == \
        [b"a", b"b"]
    check_store(store)


@pytest.mark.parametrize(("topic", "queue_id"), [
    ("", 0), ("bad topic", 0), ("x" * 128, 0), ("T/1", 0), ("T", -1), ("T", 65536)])
def test_bad_topics_and_queue_ids_are_refused(store: MessageStore, topic: str,
                                              queue_id: int) -> None:
    with pytest.raises(MessageIllegal):
        store.put_batch(topic, queue_id, [encode_draft(topic or "x", b"x")])


def test_a_batch_larger_than_a_segment_on_an_empty_store(tmp_path: Path) -> None:
    """The first segment is checked like every later one (was: IndexError from mmap)."""
    store = MessageStore(config_for(tmp_path, append_batch_bytes_max=256 * 1024))
    store.open()
    try:
        with pytest.raises(MessageIllegal):
            store.put_batch("T", 0, [encode_draft("T", b"y" * 15_000)] * 5)
        assert store.log.write_offset == 0
        store.put_batch("T", 0, [encode_draft("T", b"y" * 15_000)] * 4)
        check_store(store)
    finally:
        store.close()


def test_records_with_unreadable_properties_in_an_old_log_do_not_stop_recovery(
        tmp_path: Path) -> None:
    """A log written before puts checked properties still opens; the record is served."""
    store = MessageStore(config_for(tmp_path))
    store.open()
    store.put_batch("T", 0, [encode_draft("T", b"before", {"KEYS": "k"})])
    raw = garbage_properties_draft("T")
    appended = store.log.append_batch(b"T", 0, 1, [raw], 0, 0)  # as an old version would
    store.dispatcher.dispatch_batch(store.queues.get_or_create("T", 0), 1, appended, 0, [])
    store.abandon()
    reopened = MessageStore(config_for(tmp_path))
    report = reopened.open()
    try:
        assert report.dropped == []
        result = reopened.get_messages("T", 0, 0)
        assert result.count == 2
        assert [r.body for r in reopened.lookup_by_key("T", "k")] == [b"before"]
    finally:
        reopened.close()


def test_a_closed_store_refuses_everything(tmp_path: Path) -> None:
    store = MessageStore(config_for(tmp_path))
    store.open()
    result = store.put_batch("T", 0, [encode_draft("T", b"x", {"KEYS": "k"})])
    store.close()
    message_id = encode_message_id(compact_host(pack_host("127.0.0.1")), 10911, 0)
    calls = [
        lambda: store.put_batch("T", 0, [encode_draft("T", b"x")]),
        lambda: store.get_messages("T", 0, 0),
        lambda: store.min_offset("T", 0),
        lambda: store.max_offset("T", 0),
        lambda: store.offset_for_timestamp("T", 0, 0),
        lambda: store.read_record(result.commit_offsets[0]),
        lambda: store.lookup_by_message_id(message_id),
        lambda: store.lookup_by_key("T", "k"),
        lambda: store.lookup_by_unique_id("T", "u"),
        store.apply_retention,
    ]
    for call in calls:
        with pytest.raises(StoreClosed):
            call()
    store.close()  # closing twice is harmless


def test_lock_file_marks_an_unclean_stop_and_blocks_a_second_store(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    first = MessageStore(config_for(tmp_path))
    assert first.open().clean_shutdown
    assert lock.exists()
    with pytest.raises(StoreError, match="in use"):
        MessageStore(config_for(tmp_path)).open()
    first.close()
    assert not lock.exists()
    with pytest.raises(StoreError, match="opens once"):
        first.open()
    second = MessageStore(config_for(tmp_path))
    assert second.open().clean_shutdown
    second.abandon()
    assert lock.exists()
    third = MessageStore(config_for(tmp_path))
    assert not third.open().clean_shutdown
    third.close()


def test_a_failed_open_releases_the_lock(tmp_path: Path) -> None:
    (tmp_path / "commitlog").mkdir()
    (tmp_path / "commitlog" / f"{123:020d}").write_bytes(b"x")  # not on a boundary
    with pytest.raises(StoreError, match="boundary"):
        MessageStore(config_for(tmp_path)).open()
    os.unlink(tmp_path / "commitlog" / f"{123:020d}")
    store = MessageStore(config_for(tmp_path))
    store.open()  # was: "in use by another store" (the failed open kept the flock)
    store.close()


def test_reads_outside_the_queue(store: MessageStore) -> None:
    assert store.get_messages("nothing", 0, 0).status is GetStatus.NO_NEW_MESSAGE
    assert store.get_messages("nothing", 0, 5).status is GetStatus.OFFSET_OVERFLOW
    assert (store.min_offset("nothing", 0), store.max_offset("nothing", 0)) == (0, 0)
    assert store.offset_for_timestamp("nothing", 0, 0) == 0
    store.put_batch("T", 0, [encode_draft("T", b"a", tag="TagA"), encode_draft("T", b"b")])
    assert store.read_record(1) is None  # inside a record
    assert store.read_record(10**9) is None
    filtered = store.get_messages("T", 0, 0, tag_hashes=frozenset({12345}))
    assert filtered.status is GetStatus.NO_MATCHED_MESSAGE
    assert filtered.next_offset == 2


def test_message_ids_name_this_store_only(store: MessageStore) -> None:
    result = store.put_batch("T", 0, [encode_draft("T", b"a"), encode_draft("T", b"b")])
    host = compact_host(pack_host("127.0.0.1"))
    second = result.commit_offsets[1]
    found = store.lookup_by_message_id(encode_message_id(host, 10911, second))
    assert found is not None
    assert found.body == b"b"
    assert store.lookup_by_message_id("not hex") is None
    assert store.lookup_by_message_id(encode_message_id(host, 10911, second + 1)) is None
    # The same offset on another broker is another message.
    assert store.lookup_by_message_id(encode_message_id(host, 10912, second)) is None
    other = compact_host(pack_host("10.0.0.9"))
    assert store.lookup_by_message_id(encode_message_id(other, 10911, second)) is None


def test_first_batch_of_a_queue_larger_than_a_consume_queue_segment(tmp_path: Path) -> None:
    """Was: the segment of the batch's last entry became the queue's first, and dispatch
    failed on an AssertionError after the records were in the log."""
    store = MessageStore(config_for(tmp_path, consume_queue_segment_entries=16))
    store.open()
    try:
        bodies = [f"b{i}".encode() for i in range(40)]
        result = store.put_batch("T", 0, [encode_draft("T", body) for body in bodies])
        assert result.first_queue_offset == 0
        assert (store.min_offset("T", 0), store.max_offset("T", 0)) == (0, 40)
        got = store.get_messages("T", 0, 0, max_count=100)
        assert [r.body for r in iter_records(got.data)] == bodies
        check_store(store)
    finally:
        store.close()


def test_a_read_across_segments_where_positions_line_up(store: MessageStore) -> None:
    # A queue's record ends at relative position P in one segment and its next record starts
    # at P in the next: the read must not join them as one run (it once did, and returned
    # garbage for the second segment's part).
    def draft(topic: str, fill: int) -> bytes:
        return encode_draft(topic, bytes([fill]) * 1000)

    size = len(draft("aaaa", 0))
    assert size == len(draft("xxxx", 0))
    store.put_batch("aaaa", 0, [draft("aaaa", 1)] * 3)
    store.put_batch("xxxx", 0, [draft("xxxx", 7)])  # relative [3 * size, 4 * size)
    for _ in range(store.log.segment_size // size + 1):  # until the roll
        if len(store.log.segments.segments) > 1:
            break
        store.put_batch("aaaa", 0, [draft("aaaa", 1)])
    assert store.log.write_offset - store.log.segments.last.start == size  # one in the new
    store.put_batch("aaaa", 0, [draft("aaaa", 1)] * 3)
    store.put_batch("xxxx", 0, [draft("xxxx", 8)])  # relative [4 * size, 5 * size)
    result = store.get_messages("xxxx", 0, 0, max_count=10)
    records = list(iter_records(result.data))
    assert result.count == 2
    assert [r.body for r in records] == [bytes([7]) * 1000, bytes([8]) * 1000]
