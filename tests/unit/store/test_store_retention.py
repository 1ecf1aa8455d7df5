"""Retention: by age (ManualClock) and by disk usage (injected), consume-queue segments and
index files below the log's new minimum follow, reads below it say OFFSET_TOO_SMALL, the
active segment is never deleted, and queue offsets never go back, even across a reopen."""

from __future__ import annotations

import os
from pathlib import Path

from tidemq.common.clock import ManualClock
from tidemq.config import StoreConfig
from tidemq.protocol.record import encode_draft, iter_records
from tidemq.store import GetStatus, MessageStore
from tidemq.testing.store_checks import check_store

SEGMENT = 64 * 1024
RETENTION_MS = 600_000  # segments span ~64 s of records: none is old at first


def config_for(directory: Path) -> StoreConfig:
    return StoreConfig(data_dir=str(directory), segment_size_bytes=SEGMENT,
                       max_message_size_bytes=16 * 1024, append_batch_bytes_max=32 * 1024,
                       consume_queue_segment_entries=16, index_slots=64,
                       index_entries_per_file=32, retention_ms=RETENTION_MS,
                       disk_usage_ratio_max=0.8)


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


Appended = dict[str, list[tuple[int, str]]]  # topic -> [(commit offset, key)] in order


def fill(store: MessageStore, clock: ManualClock, segments: int) -> Appended:
    """Append 1 KB keyed records, one second apart, to queues "A"/0 and "B"/1 until the
    log has ``segments`` full segments plus an active one."""
    appended: Appended = {"A": [], "B": []}
    step = 0
    while store.log.write_offset < segments * SEGMENT + 100:
        topic = "A" if step % 3 else "B"
        body = f"{topic}-{step}".encode().ljust(1_000, b".")
        key = f"key{step}"
        result = store.put_batch(topic, 0 if topic == "A" else 1,
                                 [encode_draft(topic, body, {"KEYS": key})])
        appended[topic].append((result.commit_offsets[0], key))
        clock.advance(1_000)
        step += 1
    return appended


def test_retention_by_age(tmp_path: Path) -> None:
    clock = ManualClock()
    store = MessageStore(config_for(tmp_path), clock=clock)
    store.open()
    offsets = fill(store, clock, segments=4)
    assert store.apply_retention().commit_log_segments_deleted == 0  # nothing is old yet

    # Segments 0 and 1 end more than RETENTION_MS ago once the clock passes the first
    # record of segment 2 by that much.
    first_of_segment_2 = store.log.store_timestamp_at(
        min(o for q in offsets.values() for o, _ in q if o >= 2 * SEGMENT))
    assert first_of_segment_2 is not None
    clock.advance(first_of_segment_2 + RETENTION_MS + 1 - clock.now_ms())
    report = store.apply_retention()
    assert report.commit_log_segments_deleted == 2
    assert store.log.min_offset == 2 * SEGMENT
    assert files_in(tmp_path / "commitlog")[0] == f"{2 * SEGMENT:020d}"
    assert report.consume_queue_segments_deleted > 0
    assert report.index_files_deleted > 0
    index_names = files_in(tmp_path / "index")
    assert all(int(name) <= 2 * SEGMENT for name in index_names[:1])
    assert_reads_follow_the_log(store, offsets)

    # However old everything gets, the active segment stays.
    clock.advance(100 * RETENTION_MS)
    store.apply_retention()
    assert store.log.min_offset == store.log.segments.last.start
    assert store.log.segments.last.start <= store.log.write_offset
    assert_reads_follow_the_log(store, offsets)
    maxima = {t: store.max_offset(t, q) for t, q in (("A", 0), ("B", 1))}
    store.close()

    reopened = MessageStore(config_for(tmp_path), clock=clock)
    report_after = reopened.open()
    try:
        assert report_after.consume_queue_problems == []
        assert report_after.dropped == []
        assert {t: reopened.max_offset(t, q) for t, q in (("A", 0), ("B", 1))} == maxima
        assert_reads_follow_the_log(reopened, offsets)
        result = reopened.put_batch("A", 0, [encode_draft("A", b"after")])
        assert result.first_queue_offset == maxima["A"]
    finally:
        reopened.close()


def test_retention_by_disk_usage(tmp_path: Path) -> None:
    clock = ManualClock()
    usage = {"ratio": 0.5}
    store = MessageStore(config_for(tmp_path), clock=clock,
                         disk_usage=lambda path: usage["ratio"])
    store.open()
    try:
        offsets = fill(store, clock, segments=5)
        assert store.apply_retention().commit_log_segments_deleted == 0
        # Usage falls as segments go: each deletion frees a fifth of the space.
        store_ref = store

        def falling(path: str) -> float:
            assert path == str(tmp_path)
            return 0.2 * len(store_ref.log.segments.segments) - 0.1

        store._disk_usage = falling  # the injected probe, swapped
        report = store.apply_retention()
        assert report.commit_log_segments_deleted == 2  # 6 segments: 1.1 -> 0.9 -> 0.7
        assert store.log.min_offset == 2 * SEGMENT
        assert_reads_follow_the_log(store, offsets)
        usage["ratio"] = 0.99
        store._disk_usage = lambda path: usage["ratio"]
        store.apply_retention()  # a disk that stays full never costs the active segment
        assert len(store.log.segments.segments) == 1
        assert_reads_follow_the_log(store, offsets)
    finally:
        store.close()


def test_a_queue_whose_records_all_expired_keeps_its_offsets(tmp_path: Path) -> None:
    """Its only consume-queue segment is full and points below the log: deleting it left
    no file, the reopen called the queue damaged and rebuilt it empty, and the next record
    got queue offset 0 again."""
    clock = ManualClock()
    store = MessageStore(config_for(tmp_path), clock=clock)
    store.open()
    store.put_batch("Q", 0, [encode_draft("Q", b"q" * 100)] * 16)  # one full CQ segment
    clock.advance(1_000)
    while store.log.write_offset < 2 * SEGMENT:  # other traffic rolls the log
        store.put_batch("A", 0, [encode_draft("A", b"a" * 2_000)] * 8)
    clock.advance(10 * RETENTION_MS)
    assert store.apply_retention().commit_log_segments_deleted >= 1
    assert store.max_offset("Q", 0) == 16
    assert store.min_offset("Q", 0) == 16
    assert store.get_messages("Q", 0, 3).status is GetStatus.OFFSET_TOO_SMALL
    assert store.get_messages("Q", 0, 16).status is GetStatus.NO_NEW_MESSAGE
    store.close()
    reopened = MessageStore(config_for(tmp_path), clock=clock)
    report = reopened.open()
    try:
        assert report.consume_queue_problems == []
        assert reopened.max_offset("Q", 0) == 16
        assert reopened.put_batch("Q", 0, [encode_draft("Q", b"new")]).first_queue_offset == 16
        assert [r.body for r in iter_records(reopened.get_messages("Q", 0, 16).data)] == \
            [b"new"]
    finally:
        reopened.close()


def assert_reads_follow_the_log(store: MessageStore, appended: Appended) -> None:
    check_store(store)
    log_min = store.log.min_offset
    for topic, queue_id in (("A", 0), ("B", 1)):
        offsets = [offset for offset, _ in appended[topic]]
        kept = [i for i, offset in enumerate(offsets) if offset >= log_min]
        low = store.min_offset(topic, queue_id)
        assert low == (kept[0] if kept else len(offsets))
        if low > 0:
            below = store.get_messages(topic, queue_id, low - 1)
            assert below.status is GetStatus.OFFSET_TOO_SMALL
            assert below.next_offset == low
            assert store.get_messages(topic, queue_id, 0).status is GetStatus.OFFSET_TOO_SMALL
        if kept:
            result = store.get_messages(topic, queue_id, low, max_count=1_000)
            assert [r.commit_offset for r in iter_records(result.data)] == \
                [offsets[i] for i in kept]
        # Keys of deleted records find nothing; keys of kept records still find them.
        for offset, key in appended[topic]:
            found = [r.commit_offset for r in store.lookup_by_key(topic, key)]
            assert found == ([offset] if offset >= log_min else []), (topic, key)


def test_a_queue_rebuilt_after_retention_loads_cleanly(tmp_path: Path) -> None:
    """Rebuilt from a log cut by retention, a queue starts mid-segment (empty entries
    first). Loading it assumed dense entries and found it short: every later open called
    it damaged and rebuilt it with a full scan."""
    clock = ManualClock()
    store = MessageStore(config_for(tmp_path), clock=clock)
    store.open()
    store.put_batch("Q", 0, [encode_draft("Q", b"early" * 200)] * 21)  # offsets 0..20
    clock.advance(10 * RETENTION_MS)
    while store.log.write_offset < 3 * SEGMENT:
        store.put_batch("A", 0, [encode_draft("A", b"a" * 3_000)] * 8)
    clock.advance(10 * RETENTION_MS)
    store.put_batch("Q", 0, [encode_draft("Q", b"late")] * 3)  # offsets 21..23
    store.apply_retention()
    assert store.min_offset("Q", 0) == 21
    store.close()
    for path in (tmp_path / "consumequeue" / "Q" / "0").iterdir():
        path.unlink()  # lost: rebuilt from the log, which now starts at offset 21
    for attempt in range(3):
        reopened = MessageStore(config_for(tmp_path), clock=clock)
        report = reopened.open()
        try:
            assert bool(report.consume_queue_problems) == (attempt == 0), report
            assert (reopened.min_offset("Q", 0), reopened.max_offset("Q", 0)) == (21, 24)
            got = reopened.get_messages("Q", 0, 21)
            assert [r.body for r in iter_records(got.data)] == [b"late"] * 3
        finally:
            reopened.close()
