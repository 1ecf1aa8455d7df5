"""The read path: gather a queue's records from the commit log into one buffer, and the
lookups (by offset, key, time) that confirm what they find in the record itself.

Consume-queue entries are read in bulk (``struct.iter_unpack``) and records that lie back
to back in one segment are copied with one slice, so a queue written in batches is read in
few copies. Each record's size and magic are checked against its entry before it is
served; entries that point at nothing valid (a tombstone, a repaired hole, a range deleted
by retention) are skipped, never served and never fatal.
"""

from __future__ import annotations

from typing import Final

from tidemq.errors import ProtocolError
from tidemq.protocol.record import (
    RECORD_MAGIC,
    SIZE_MAGIC,
    Record,
    check_record,
    decode_record,
)
from tidemq.store.commit_log import CommitLog
from tidemq.store.consume_queue import ConsumeQueue
from tidemq.store.dispatcher import TOMBSTONE_COMMIT_OFFSET, index_key
from tidemq.store.index import KeyIndex

_EXPECTED_MAGIC: Final = RECORD_MAGIC


def collect_records(log: CommitLog, queue: ConsumeQueue, offset: int, max_count: int,
                    max_bytes: int, tag_hashes: frozenset[int] | None
                    ) -> tuple[bytes, int, int]:
    """Returns (records back to back, record count, next queue offset)."""
    parts: list[bytes] = []
    count = 0
    total_bytes = 0
    next_offset = offset
    examined = 0
    examined_limit = max(max_count * 8, 256)  # bound one call's work when filtering
    log_min = log.min_offset
    write_offset = log.write_offset
    segment = None
    run_start = run_end = -1
    unpack_size_magic = SIZE_MAGIC.unpack_from
    stop = False
    while not stop and next_offset < queue.max_offset and examined < examined_limit:
        progressed = 0
        for commit_offset, size, tag_hash in queue.iter_from(next_offset,
                                                             examined_limit - examined):
            progressed += 1
            if commit_offset == TOMBSTONE_COMMIT_OFFSET or size == 0 or (
                tag_hashes is not None and tag_hash not in tag_hashes
            ) or commit_offset < log_min or commit_offset + size > write_offset:
                next_offset += 1
                continue
            if segment is None or not segment.start <= commit_offset < segment.end:
                if run_start >= 0 and segment is not None:
                    parts.append(segment.map[run_start:run_end])
                # Both ends reset: a run in the new segment must never continue the old
                # one's (a record at the same relative position would otherwise extend a
                # run that starts at -1).
                run_start = run_end = -1
                segment = log.segments.find(commit_offset)
                if segment is None:
                    next_offset += 1
                    continue
            relative = commit_offset - segment.start
            if relative + size > segment.size or \
                    unpack_size_magic(segment.map, relative) != (size, _EXPECTED_MAGIC):
                next_offset += 1
                continue
            if total_bytes + size > max_bytes and count > 0:
                stop = True
                break
            next_offset += 1
            if relative == run_end:
                run_end += size
            else:
                if run_start >= 0:
                    parts.append(segment.map[run_start:run_end])
                run_start, run_end = relative, relative + size
            count += 1
            total_bytes += size
            if count >= max_count:
                stop = True
                break
        examined += progressed
        if progressed == 0:
            break
    if run_start >= 0 and segment is not None:
        parts.append(segment.map[run_start:run_end])
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    return data, count, next_offset


def read_valid_record(log: CommitLog, commit_offset: int) -> bytes | None:
    """The valid record (magic, size, crc) stored at ``commit_offset``, or None."""
    segment = log.segments.find(commit_offset)
    if segment is None or not log.min_offset <= commit_offset < log.write_offset:
        return None
    relative = commit_offset - segment.start
    if segment.size - relative < SIZE_MAGIC.size:
        return None
    size, magic = SIZE_MAGIC.unpack_from(segment.map, relative)
    if magic != RECORD_MAGIC:
        return None
    try:
        check_record(segment.view, relative, segment.size)
    except ProtocolError:
        return None
    return segment.map[relative:relative + size]


def decode_or_none(raw: bytes | None) -> Record | None:
    """Decode a valid record; None for none, or for one whose properties are unreadable
    (stored before puts checked them)."""
    if raw is None:
        return None
    try:
        return decode_record(raw, verify=False)
    except ProtocolError:
        return None


def find_by_key(log: CommitLog, index: KeyIndex, topic: str, key: str, limit: int,
                begin_ms: int, end_ms: int) -> list[Record]:
    """Records of ``topic`` whose keys (or unique id) include ``key``, newest first. Index
    hashes collide and entries may outlive their records: each candidate is confirmed."""
    records: list[Record] = []
    seen: set[int] = set()
    for commit_offset in index.lookup(index_key(topic, key), limit * 4, begin_ms, end_ms):
        if commit_offset in seen:
            continue
        seen.add(commit_offset)
        record = decode_or_none(read_valid_record(log, commit_offset))
        if record is not None and record.topic == topic and \
                (key in record.keys or record.unique_id == key) and \
                begin_ms <= record.store_timestamp_ms <= end_ms:
            records.append(record)
            if len(records) >= limit:
                break
    return records


def first_stored_offset(log: CommitLog, queue: ConsumeQueue) -> int:
    """The queue's first offset whose record is still in the log (retention may have
    deleted the log below entries the queue still has)."""
    low, high = queue.min_offset, queue.max_offset
    log_min = log.min_offset
    while low < high:
        middle = (low + high) // 2
        entry = queue.get(middle)
        if entry is not None and entry[0] < log_min:
            low = middle + 1
        else:
            high = middle
    return low


def first_offset_at(log: CommitLog, queue: ConsumeQueue, timestamp_ms: int) -> int:
    """The first queue offset stored at or after ``timestamp_ms`` (max if none): a binary
    search on store times, which rise with queue offsets."""
    low, high = first_stored_offset(log, queue), queue.max_offset
    while low < high:
        middle = (low + high) // 2
        entry = queue.get(middle)
        stamp = None
        if entry is not None and entry[0] != TOMBSTONE_COMMIT_OFFSET:
            stamp = log.store_timestamp_at(entry[0])
        if stamp is not None and stamp < timestamp_ms:
            low = middle + 1
        else:
            high = middle
    return low
