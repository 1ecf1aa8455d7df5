"""Damaged files on disk: the store opens, its RecoveryReport says what was dropped (offset,
bytes, records, action), every record outside the damage is still served in order, appends
continue, and nothing raises an untyped error.

Covered: a flipped byte in a record of the last segment (clean and unclean reopen) and of an
older segment (forced full scan: garbage, missing or truncated checkpoint); a flipped size
field; damage to the very last record; truncated segment files (last and older); missing
commit-log segments (middle, with and without a full scan; the last one); missing or short
consume-queue files (one segment, the first, the last, the queue dir, the topic dir); random
bytes flipped anywhere in the data directory.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tidemq.common.clock import ManualClock
from tidemq.config import StoreConfig
from tidemq.errors import ProtocolError, TideError
from tidemq.protocol.record import decode_record, encode_draft, iter_records
from tidemq.store import Dropped, GetStatus, MessageStore, RecoveryReport
from tidemq.testing.store_checks import check_store

SEGMENT = 64 * 1024
QUEUES = [("orders", 0), ("orders", 1), ("audit", 0)]


def config_for(directory: Path) -> StoreConfig:
    return StoreConfig(data_dir=str(directory), segment_size_bytes=SEGMENT,
                       max_message_size_bytes=16 * 1024, append_batch_bytes_max=32 * 1024,
                       consume_queue_segment_entries=16, index_slots=64,
                       index_entries_per_file=256)


@dataclass(frozen=True)
class Appended:
    topic: str
    queue_id: int
    queue_offset: int
    commit_offset: int
    size: int
    body: bytes
    key: str


def build(directory: Path, *, segments: int = 4, clean: bool = True) -> list[Appended]:
    """Append ~700-byte keyed records round-robin over QUEUES until the log has
    ``segments`` segments, then close (or abandon) the store."""
    store = MessageStore(config_for(directory), clock=ManualClock())
    store.open()
    appended: list[Appended] = []
    step = 0
    while store.log.write_offset < (segments - 1) * SEGMENT + SEGMENT // 2:
        topic, queue_id = QUEUES[step % len(QUEUES)]
        body = f"{topic}/{queue_id}#{step}".encode().ljust(600 + step % 200, b"~")
        key = f"key-{step}"
        result = store.put_batch(topic, queue_id, [encode_draft(topic, body, {"KEYS": key})])
        appended.append(Appended(topic, queue_id, result.first_queue_offset,
                                 result.commit_offsets[0], result.end_offset -
                                 result.commit_offsets[0], body, key))
        step += 1
    if clean:
        store.close()
    else:
        store.abandon()
    return appended


def open_store(directory: Path) -> tuple[MessageStore, RecoveryReport]:
    store = MessageStore(config_for(directory), clock=ManualClock())
    try:
        report = store.open()
    except TideError as error:  # typed, but opening must not fail on damage at all
        pytest.fail(f"open failed: {error!r}")
    return store, report


def flip(path: Path, position: int) -> None:
    with open(path, "r+b") as file:
        file.seek(position)
        byte = file.read(1)[0]
        file.seek(position)
        file.write(bytes([byte ^ 0x5A]))


def segment_path(directory: Path, start: int) -> Path:
    return directory / "commitlog" / f"{start:020d}"


def intersects(item: Appended, dropped: list[Dropped]) -> bool:
    return any(d.offset < item.commit_offset + item.size and item.commit_offset <
               d.offset + d.bytes for d in dropped)


def served(store: MessageStore) -> dict[tuple[str, int], list[tuple[int, bytes]]]:
    """Every queue read from its minimum to its end through get_messages."""
    result: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
    for topic, queue_id in QUEUES:
        records: list[tuple[int, bytes]] = []
        offset = store.min_offset(topic, queue_id)
        for _ in range(10_000):
            got = store.get_messages(topic, queue_id, offset, max_count=50)
            if got.status is GetStatus.NO_NEW_MESSAGE:
                break
            assert got.status in (GetStatus.FOUND, GetStatus.NO_MATCHED_MESSAGE), got.status
            records.extend((r.queue_offset, r.body) for r in iter_records(got.data))
            offset = got.next_offset
        result[(topic, queue_id)] = records
    return result


def assert_serves_all_but(store: MessageStore, appended: list[Appended],
                          dropped: list[Dropped]) -> list[Appended]:
    """Everything outside ``dropped`` is served, in order, and findable by key; returns
    the records lost."""
    kept = [a for a in appended if not intersects(a, dropped)]
    expected: dict[tuple[str, int], list[tuple[int, bytes]]] = {q: [] for q in QUEUES}
    for item in kept:
        expected[(item.topic, item.queue_id)].append((item.queue_offset, item.body))
    assert served(store) == expected
    for item in kept[:: max(1, len(kept) // 40)]:
        found = store.lookup_by_key(item.topic, item.key)
        assert [r.body for r in found] == [item.body]
    check_store(store, holes_allowed=True)
    return [a for a in appended if intersects(a, dropped)]


def assert_appends_continue(store: MessageStore, directory: Path,
                            still_missing: list[Dropped] | None = None) -> None:
    """New records go after the damage, and a further reopen reports nothing new (but a
    missing segment file, ``still_missing``, which is still missing)."""
    before = {q: store.max_offset(*q) for q in QUEUES}
    for topic, queue_id in QUEUES:
        result = store.put_batch(topic, queue_id, [encode_draft(topic, b"after damage")])
        assert result.first_queue_offset == before[(topic, queue_id)]
    check_store(store, holes_allowed=True)
    contents = served(store)
    store.close()
    again, report = open_store(directory)
    try:
        assert report.dropped == (still_missing or []), report
        assert report.consume_queue_problems == [], report
        assert report.checkpoint_problem is None
        assert served(again) == contents
    finally:
        again.close()


def pick(appended: list[Appended], low: int, high: int, *, not_last: bool = True
         ) -> Appended:
    """A record wholly inside [low, high), not the last of its segment."""
    inside = [a for a in appended if low <= a.commit_offset and
              a.commit_offset + a.size <= high]
    assert len(inside) >= 3
    return inside[len(inside) // 2] if not_last else inside[-1]


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "unclean"])
def test_flipped_byte_in_the_last_segment_becomes_a_hole(tmp_path: Path, clean: bool) -> None:
    appended = build(tmp_path, clean=clean)
    last_start = 3 * SEGMENT
    victim = pick(appended, last_start, last_start + SEGMENT)
    flip(segment_path(tmp_path, last_start), victim.commit_offset - last_start +
         victim.size - 10)  # in the body
    store, report = open_store(tmp_path)
    assert report.clean_shutdown == clean
    assert report.dropped == [Dropped(victim.commit_offset, victim.size, 1, "hole")]
    assert assert_serves_all_but(store, appended, report.dropped) == [victim]
    # The queue offset of the lost record is skipped, not reused.
    assert store.max_offset(victim.topic, victim.queue_id) == 1 + max(
        a.queue_offset for a in appended if (a.topic, a.queue_id) ==
        (victim.topic, victim.queue_id))
    assert_appends_continue(store, tmp_path)


@pytest.mark.parametrize("checkpoint", ["garbage", "missing", "truncated"])
def test_flipped_byte_in_an_older_segment_with_a_full_scan(tmp_path: Path,
                                                           checkpoint: str) -> None:
    appended = build(tmp_path)
    victim = pick(appended, SEGMENT, 2 * SEGMENT)
    flip(segment_path(tmp_path, SEGMENT), victim.commit_offset - SEGMENT + 3)  # size field
    checkpoint_path = tmp_path / "checkpoint"
    if checkpoint == "garbage":
        checkpoint_path.write_bytes(os.urandom(64))
    elif checkpoint == "missing":
        checkpoint_path.unlink()
    else:
        checkpoint_path.write_bytes(checkpoint_path.read_bytes()[:-3])
    store, report = open_store(tmp_path)
    assert report.checkpoint_problem is not None
    assert report.scan_start == 0
    assert report.dropped == [Dropped(victim.commit_offset, victim.size, 1, "hole")]
    assert assert_serves_all_but(store, appended, report.dropped) == [victim]
    assert_appends_continue(store, tmp_path)


def test_damage_to_the_last_record_of_an_older_segment_closes_it(tmp_path: Path) -> None:
    appended = build(tmp_path)
    victim = pick(appended, 0, SEGMENT, not_last=False)
    flip(segment_path(tmp_path, 0), victim.commit_offset + victim.size - 1)
    (tmp_path / "checkpoint").unlink()
    store, report = open_store(tmp_path)
    assert [(d.offset, d.records, d.action) for d in report.dropped] == \
        [(victim.commit_offset, 1, "segment-closed")]
    assert assert_serves_all_but(store, appended, report.dropped) == [victim]
    assert_appends_continue(store, tmp_path)


def test_damage_to_the_very_last_record_truncates_it(tmp_path: Path) -> None:
    appended = build(tmp_path, clean=False)
    victim = appended[-1]
    flip(segment_path(tmp_path, 3 * SEGMENT), victim.commit_offset - 3 * SEGMENT + 200)
    store, report = open_store(tmp_path)
    assert report.dropped == [Dropped(victim.commit_offset, victim.size, 1, "truncated")]
    assert store.log.write_offset == victim.commit_offset
    assert report.consume_queue_entries_removed == 1
    assert assert_serves_all_but(store, appended, report.dropped) == [victim]
    assert_appends_continue(store, tmp_path)


def test_truncated_last_segment_file(tmp_path: Path) -> None:
    appended = build(tmp_path)
    victim = pick(appended, 3 * SEGMENT, 4 * SEGMENT)
    cut = victim.commit_offset + victim.size // 2
    os.truncate(segment_path(tmp_path, 3 * SEGMENT), cut - 3 * SEGMENT)
    store, report = open_store(tmp_path)
    assert len(report.segments_short) == 1
    assert [(d.offset, d.action) for d in report.dropped] == \
        [(victim.commit_offset, "truncated")]
    assert report.dropped[0].bytes == cut - victim.commit_offset  # what was left of it
    # The records after the cut went with the file's bytes (reported as segments_short).
    gone = Dropped(cut, 4 * SEGMENT - cut, 0, "cut")
    lost = assert_serves_all_but(store, appended, [*report.dropped, gone])
    assert lost == [a for a in appended if a.commit_offset >= victim.commit_offset]
    assert store.log.write_offset == victim.commit_offset
    assert_appends_continue(store, tmp_path)


def test_truncated_older_segment_file(tmp_path: Path) -> None:
    appended = build(tmp_path)
    victim = pick(appended, SEGMENT, 2 * SEGMENT)
    os.truncate(segment_path(tmp_path, SEGMENT), victim.commit_offset + 10 - SEGMENT)
    store, report = open_store(tmp_path)
    assert len(report.segments_short) == 1
    assert [(d.offset, d.bytes, d.action) for d in report.dropped] == \
        [(victim.commit_offset, 2 * SEGMENT - victim.commit_offset, "segment-closed")]
    lost = assert_serves_all_but(store, appended, report.dropped)
    assert lost[0] == victim
    assert all(SEGMENT < a.commit_offset < 2 * SEGMENT for a in lost)
    assert_appends_continue(store, tmp_path)


@pytest.mark.parametrize("full_scan", [False, True], ids=["checkpoint", "full-scan"])
def test_missing_middle_commit_log_segment(tmp_path: Path, full_scan: bool) -> None:
    """Reported as missing; the segments after it are kept and served (a full scan used to
    stop at the gap and destroy every later segment)."""
    appended = build(tmp_path)
    segment_path(tmp_path, SEGMENT).unlink()
    if full_scan:
        (tmp_path / "checkpoint").unlink()
    store, report = open_store(tmp_path)
    assert report.dropped == [Dropped(SEGMENT, SEGMENT, 0, "missing")]
    assert sorted(os.listdir(tmp_path / "commitlog")) == \
        [f"{start:020d}" for start in (0, 2 * SEGMENT, 3 * SEGMENT)]
    lost = assert_serves_all_but(store, appended, report.dropped)
    assert lost
    assert all(SEGMENT <= a.commit_offset < 2 * SEGMENT for a in lost)
    assert_appends_continue(store, tmp_path, still_missing=report.dropped)


def test_missing_last_commit_log_segment(tmp_path: Path) -> None:
    appended = build(tmp_path)
    segment_path(tmp_path, 3 * SEGMENT).unlink()
    store, report = open_store(tmp_path)
    end = appended[-1].commit_offset + appended[-1].size
    assert report.dropped == [Dropped(3 * SEGMENT, end - 3 * SEGMENT, 0, "missing")]
    lost = assert_serves_all_but(store, appended, report.dropped)
    assert lost == [a for a in appended if a.commit_offset >= 3 * SEGMENT]
    assert_appends_continue(store, tmp_path)


@pytest.mark.parametrize("damage", [
    "middle-segment", "first-segment", "last-segment", "short-segment", "queue-dir",
    "topic-dir", "queue-dir-no-checkpoint"])
def test_damaged_consume_queue_is_rebuilt(tmp_path: Path, damage: str) -> None:
    appended = build(tmp_path)
    queue_dir = tmp_path / "consumequeue" / "orders" / "1"
    names = sorted(os.listdir(queue_dir))
    assert len(names) >= 4
    if damage == "middle-segment":
        (queue_dir / names[1]).unlink()
    elif damage == "first-segment":
        (queue_dir / names[0]).unlink()
    elif damage == "last-segment":
        (queue_dir / names[-1]).unlink()
    elif damage == "short-segment":
        os.truncate(queue_dir / names[1], 100)
    elif damage == "queue-dir":
        shutil.rmtree(queue_dir)
    elif damage == "topic-dir":
        shutil.rmtree(queue_dir.parent)
    else:
        shutil.rmtree(queue_dir)
        (tmp_path / "checkpoint").unlink()
    store, report = open_store(tmp_path)
    assert report.dropped == []
    assert report.scan_start == 0
    if damage != "queue-dir-no-checkpoint":  # with no checkpoint, nothing says it existed
        assert any(p.startswith("orders/1:") for p in report.consume_queue_problems), report
    if damage == "topic-dir":
        assert any(p.startswith("orders/0:") for p in report.consume_queue_problems)
    assert assert_serves_all_but(store, appended, []) == []
    assert_appends_continue(store, tmp_path)


@pytest.mark.parametrize("seed", range(10))
def test_random_log_damage_with_a_full_scan(tmp_path: Path, seed: int) -> None:
    """Bytes flipped anywhere in the log, then a full scan: exactly the records that the
    report's dropped ranges cover are lost; everything else is served."""
    rng = random.Random(seed)
    appended = build(tmp_path, clean=bool(seed % 2))
    end = appended[-1].commit_offset + appended[-1].size
    for _ in range(1 + seed % 3):
        position = rng.randrange(end + 64)  # also just past the end of the log
        flip(segment_path(tmp_path, position - position % SEGMENT), position % SEGMENT)
    (tmp_path / "checkpoint").unlink()
    store, report = open_store(tmp_path)
    assert report.scan_start == 0
    assert_serves_all_but(store, appended, report.dropped)
    assert_appends_continue(store, tmp_path)


@pytest.mark.parametrize("seed", range(16))
def test_random_damage_anywhere_never_raises_an_untyped_error(tmp_path: Path,
                                                              seed: int) -> None:
    """Bytes flipped in any file (log, consume queues, index, checkpoint), clean or unclean
    stop: the store opens; reads, key lookups and appends work. Consume queues carry no
    checksum and older log segments are not rescanned after a clean stop, so what is
    served may be damaged, but only ever as a record that fails its crc (ProtocolError
    on the client), never as an exception in the store."""
    rng = random.Random(seed)
    appended = build(tmp_path, clean=bool(seed % 2))
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.name != "lock")
    for _ in range(1 + seed % 4):
        path = rng.choice(files)
        size = path.stat().st_size
        if size:
            flip(path, rng.randrange(size))
    store, _report = open_store(tmp_path)
    try:
        for records in served_raw(store).values():
            for raw in records:
                try:
                    decode_record(raw)
                except ProtocolError:
                    pass
        for item in appended[::7]:
            store.lookup_by_key(item.topic, item.key)
        before = {q: store.max_offset(*q) for q in QUEUES}
        for topic, queue_id in QUEUES:
            store.put_batch(topic, queue_id, [encode_draft(topic, b"after", {"KEYS": "new"})])
            got = store.get_messages(topic, queue_id, before[(topic, queue_id)])
            assert [r.body for r in iter_records(got.data)] == [b"after"]
        assert len(store.lookup_by_key("orders", "new")) == 2
    finally:
        store.close()
    again, _ = open_store(tmp_path)
    again.close()


def served_raw(store: MessageStore) -> dict[tuple[str, int], list[bytes]]:
    """The raw records of every queue, split by their size fields (not decoded)."""
    result: dict[tuple[str, int], list[bytes]] = {}
    for topic, queue_id in QUEUES:
        records: list[bytes] = []
        offset = store.min_offset(topic, queue_id)
        for _ in range(10_000):
            got = store.get_messages(topic, queue_id, offset, max_count=50)
            if got.status not in (GetStatus.FOUND, GetStatus.NO_MATCHED_MESSAGE):
                break
            position = 0
            while position < len(got.data):
                size = int.from_bytes(got.data[position:position + 4], "little")
                assert size > 0
                records.append(got.data[position:position + size])
                position += size
            offset = got.next_offset
        result[(topic, queue_id)] = records
    return result


@pytest.mark.parametrize("damage", ["index-dir", "last-file", "last-file-unclean",
                                    "header-slots", "header-timestamps", "truncated-file"])
def test_damaged_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    """Every key is found again (was: a deleted index silently lost most keys, and a
    garbage header raised struct.error)."""
    appended = build(tmp_path, clean=damage != "last-file-unclean")
    index_dir = tmp_path / "index"
    files = sorted(index_dir.iterdir())
    assert len(files) >= 2
    if damage == "index-dir":
        shutil.rmtree(index_dir)
    elif damage.startswith("last-file"):
        files[-1].unlink()
    elif damage == "header-slots":
        with open(files[0], "r+b") as file:
            file.seek(36)  # slots u32
            file.write((0xFFFFFFFF).to_bytes(4, "little"))
    elif damage == "header-timestamps":
        with open(files[-1], "r+b") as file:
            file.write((2**63).to_bytes(8, "little"))  # begin timestamp after the end
    else:
        os.truncate(files[0], 1000)
    store, report = open_store(tmp_path)
    # After an unclean stop the checkpoint is older than the lost file: nothing tells it
    # existed, but the scan from the index's mark indexes its range again all the same.
    assert bool(report.index_problems) == (damage != "last-file-unclean"), report
    assert report.dropped == []
    assert report.consume_queue_problems == []
    for item in appended:
        assert [r.body for r in store.lookup_by_key(item.topic, item.key)] == [item.body]
    assert_serves_all_but(store, appended, [])
    assert_appends_continue(store, tmp_path)
