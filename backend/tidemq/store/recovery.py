"""Recovery: make the commit log, consume queues and index agree after any stop.

Theory of operation. The scan starts at the checkpoint's smallest flushed offset (a record
boundary; the whole log when the checkpoint is missing or garbage, or when a consume queue
is damaged) and walks records, validating magic, size, CRC and that each record's stamped
commit offset is its position. Every valid record is re-dispatched (idempotently). On a bad
record at offset P:

* if a valid record follows later in the same segment (at Q), the range [P, Q) is covered
  by a HOLE marker and the scan goes on: one damaged record costs that record, not the
  acknowledged records after it;
* if none follows in the segment but a later segment holds data, the segment is closed at P
  with an end-of-segment marker;
* otherwise P is a torn tail: the log is cut at P and the bytes after it are zeroed.

A missing segment file (a gap in the names) is stepped over, never a reason to cut the log:
the segments after it hold records as valid as any.

Each case is reported as a ``Dropped`` (offset, bytes, record headers seen). Consume-queue
entries that point past the new end are removed; the index re-indexes from the cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from tidemq.errors import ProtocolError
from tidemq.protocol.record import (
    END_OF_SEGMENT_MAGIC,
    END_OF_SEGMENT_SIZE,
    HEADER,
    HEADER_SIZE,
    RECORD_MAGIC,
    SIZE_MAGIC,
    check_record,
)
from tidemq.store.commit_log import HOLE_MAGIC, CommitLog
from tidemq.store.dispatcher import Dispatcher
from tidemq.store.mapped_file import MappedFile

_MAGIC_BYTES: Final = RECORD_MAGIC.to_bytes(4, "little")
_ZERO_PAGE: Final = bytes(1 << 16)


@dataclass(frozen=True, slots=True)
class Dropped:
    """A damaged range recovery removed from service."""

    offset: int
    bytes: int
    records: int  # record headers seen in the range (at least 1; 0 when "missing")
    action: str  # "hole", "segment-closed", "truncated" or "missing" (a segment file)


@dataclass(slots=True)
class RecoveryReport:
    clean_shutdown: bool = True
    checkpoint_problem: str | None = None
    scan_start: int = 0
    scan_end: int = 0
    records_scanned: int = 0
    dropped: list[Dropped] = field(default_factory=list)
    consume_queue_problems: list[str] = field(default_factory=list)
    consume_queue_entries_removed: int = 0
    index_problems: list[str] = field(default_factory=list)
    segments_short: list[str] = field(default_factory=list)

    @property
    def lost_anything(self) -> bool:
        return bool(self.dropped)


def scan_and_dispatch(log: CommitLog, dispatcher: Dispatcher, start: int,
                      report: RecoveryReport) -> int:
    """Walk records from ``start``, dispatch each valid one, repair damage. Returns the end."""
    position = start
    while True:
        segment = log.segments.find(position)
        if segment is None:
            following = next((s for s in log.segments.segments if s.start > position), None)
            if following is None:
                break
            position = following.start  # a missing segment (recover_store reports it)
            continue
        relative = position - segment.start
        if segment.size - relative < END_OF_SEGMENT_SIZE:
            position = segment.end
            continue
        size, magic = SIZE_MAGIC.unpack_from(segment.map, relative)
        if magic == END_OF_SEGMENT_MAGIC and size == segment.size - relative:
            position = segment.end
            continue
        if magic == HOLE_MAGIC and HEADER_SIZE <= size <= segment.size - relative:
            position += size
            continue
        if size == 0 and magic == 0 and not _has_data_after(log, segment):
            break
        if _valid_record_at(segment, relative):
            _dispatch(segment, relative, dispatcher)
            report.records_scanned += 1
            position += size
            continue
        resume = _repair(log, segment, relative, report)
        if resume is None:
            break
        position = resume
    report.scan_end = position
    return position


def _valid_record_at(segment: MappedFile, relative: int) -> bool:
    try:
        check_record(segment.view, relative, segment.size)
    except ProtocolError:
        return False
    stamped_commit_offset = HEADER.unpack_from(segment.map, relative)[7]
    return bool(stamped_commit_offset == segment.start + relative)


def _dispatch(segment: MappedFile, relative: int, dispatcher: Dispatcher) -> None:
    header = HEADER.unpack_from(segment.map, relative)
    total_size, flags, queue_id, queue_offset, commit_offset = (
        header[0], header[3], header[4], header[6], header[7])
    store_timestamp_ms, tag_hash, topic_length = header[8], header[15], header[18]
    start = relative + HEADER_SIZE
    topic = bytes(segment.view[start:start + topic_length]).decode()
    dispatcher.dispatch_scanned(topic, queue_id, queue_offset, commit_offset, total_size,
                                tag_hash, flags, store_timestamp_ms)


def _repair(log: CommitLog, segment: MappedFile, relative: int,
            report: RecoveryReport) -> int | None:
    """Handle a bad record at ``relative``; returns where to resume, None at a torn tail."""
    following = _next_valid_record(segment, relative + 1)
    if following is not None:
        headers = _count_headers(segment, relative, following)
        SIZE_MAGIC.pack_into(segment.map, relative, following - relative, HOLE_MAGIC)
        report.dropped.append(Dropped(segment.start + relative, following - relative,
                                      headers, "hole"))
        return segment.start + following
    if _has_data_after(log, segment):
        headers = _count_headers(segment, relative, segment.size)
        SIZE_MAGIC.pack_into(segment.map, relative, segment.size - relative,
                             END_OF_SEGMENT_MAGIC)
        report.dropped.append(Dropped(segment.start + relative, segment.size - relative,
                                      headers, "segment-closed"))
        return segment.end
    dirty_end = _last_nonzero(segment, relative)
    headers = _count_headers(segment, relative, dirty_end)
    segment.zero(relative, dirty_end)
    report.dropped.append(Dropped(segment.start + relative, dirty_end - relative,
                                  max(headers, 1), "truncated"))
    return None


def _next_valid_record(segment: MappedFile, relative: int) -> int | None:
    search_from = relative
    while True:
        found = segment.map.find(_MAGIC_BYTES, search_from + 4)
        if found < 0:
            return None
        candidate = found - 4
        if candidate >= relative and _valid_record_at(segment, candidate):
            return candidate
        search_from = found - 3


def _count_headers(segment: MappedFile, begin: int, end: int) -> int:
    count = 0
    position = segment.map.find(_MAGIC_BYTES, begin)
    while 0 <= position < end:
        count += 1
        position = segment.map.find(_MAGIC_BYTES, position + 1)
    return max(count, 1)


def _last_nonzero(segment: MappedFile, relative: int) -> int:
    """End of the last non-zero byte from ``relative`` (compared in 64 KiB chunks), so a
    truncation reports the bytes it dropped, not a whole chunk."""
    position = relative
    last = relative
    chunk = len(_ZERO_PAGE)
    while position < segment.size:
        end = min(position + chunk, segment.size)
        data = segment.map[position:end]
        if data != _ZERO_PAGE[:end - position]:
            last = position + len(data.rstrip(b"\x00"))
        position = end
    return last


def _has_data_after(log: CommitLog, segment: MappedFile) -> bool:
    """Whether a later segment starts with something other than zeros."""
    for later in log.segments.segments:
        if later.start > segment.start:
            size, magic = SIZE_MAGIC.unpack_from(later.map, 0)
            if size or magic:
                return True
    return False
