"""Checkers for a ``MessageStore``: the commit log, consume queues and key index must agree.

``check_store`` walks the commit log from its minimum offset to its write offset the way
recovery does and asserts, for any store at rest (after appends, recovery or retention):

* the log is a sequence of valid records (magic, size, CRC, stamped commit offset equal to
  the position), end-of-segment markers and, when ``holes_allowed``, recovery's HOLEs and
  missing segment files, and it ends exactly at ``write_offset``;
* every record is served by its consume queue at its queue offset, and queue offsets of
  one queue rise by one from record to record (more than one only across a reported loss);
* every entry of every queue in ``[min_offset, max_offset)`` names a valid record of that
  topic, queue and queue offset (or a tombstone; or damage, when ``holes_allowed``);
* every key and unique id of an indexed record finds it through ``lookup_by_key``.

Failures raise ``AssertionError`` listing every problem found (at most 20).
"""

from __future__ import annotations

from dataclasses import dataclass

from tidemq.errors import ProtocolError
from tidemq.protocol.record import (
    END_OF_SEGMENT_MAGIC,
    FLAG_INDEXED,
    RECORD_MAGIC,
    SIZE_MAGIC,
    Record,
    check_record,
    decode_record,
)
from tidemq.store.commit_log import HOLE_MAGIC
from tidemq.store.dispatcher import TOMBSTONE_COMMIT_OFFSET
from tidemq.store.message_store import MessageStore

_PROBLEMS_MAX = 20


@dataclass(frozen=True, slots=True)
class LogItem:
    """One thing found walking the log: a record, or a marker (``record`` None)."""

    offset: int
    size: int
    kind: str  # "record", "end-of-segment", "hole" or "missing" (a segment file)
    record: Record | None


def walk_log(store: MessageStore, *, holes_allowed: bool = False) -> list[LogItem]:
    """Every item of the log in ``[min_offset, write_offset)``, validated."""
    log = store.log
    items: list[LogItem] = []
    position = log.min_offset
    while position < log.write_offset:
        segment = log.segments.find(position)
        if segment is None:  # a missing segment file, which recovery reported
            following = next((s for s in log.segments.segments if s.start > position), None)
            assert holes_allowed, f"no segment holds {position}"
            assert following is not None, f"no segment holds {position} or later"
            items.append(LogItem(position, following.start - position, "missing", None))
            position = following.start
            continue
        relative = position - segment.start
        size, magic = SIZE_MAGIC.unpack_from(segment.map, relative)
        if magic == END_OF_SEGMENT_MAGIC:
            assert size == segment.size - relative, f"bad end-of-segment marker at {position}"
            items.append(LogItem(position, size, "end-of-segment", None))
        elif magic == HOLE_MAGIC:
            assert holes_allowed, f"unexpected hole at {position}"
            assert 0 < size <= segment.size - relative, f"bad hole size at {position}"
            items.append(LogItem(position, size, "hole", None))
        else:
            assert magic == RECORD_MAGIC, f"bad magic {magic:#x} at {position}"
            # The problem is raised outside the handler: a live traceback would keep a
            # view of the segment exported, and the store could not close its map.
            problem = None
            try:
                check_record(segment.view, relative, segment.size)
            except ProtocolError as error:
                problem = f"invalid record at {position}: {error}"
            assert problem is None, problem
            record = decode_record(segment.view, relative)
            assert record.commit_offset == position, f"record at {position} stamped " \
                f"{record.commit_offset}"
            items.append(LogItem(position, size, "record", record))
        position += size
    assert position == log.write_offset, f"log walk ended at {position}, write offset " \
        f"{log.write_offset}"
    return items


def check_store(store: MessageStore, *, holes_allowed: bool = False) -> list[Record]:
    """Assert the invariants above; returns the log's records in log order."""
    items = walk_log(store, holes_allowed=holes_allowed)
    records = [item.record for item in items if item.record is not None]
    problems: list[str] = []
    _check_records_indexed(store, records, problems, holes_allowed)
    _check_queue_entries(store, problems, holes_allowed)
    if problems:
        shown = "\n  ".join(problems[:_PROBLEMS_MAX])
        raise AssertionError(f"{len(problems)} store inconsistencies:\n  {shown}")
    return records


def _check_records_indexed(store: MessageStore, records: list[Record], problems: list[str],
                           holes_allowed: bool) -> None:
    last_queue_offset: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.queue_id)
        previous = last_queue_offset.get(key)
        if previous is not None and (record.queue_offset <= previous or (
                record.queue_offset != previous + 1 and not holes_allowed)):
            problems.append(f"{key}: queue offset {record.queue_offset} follows {previous}")
        last_queue_offset[key] = record.queue_offset
        queue = store.queues.get(record.topic, record.queue_id)
        if queue is None:
            problems.append(f"{key}: no consume queue for the record at "
                            f"{record.commit_offset}")
            continue
        if record.queue_offset >= queue.min_offset:
            entry = queue.get(record.queue_offset)
            expected = (record.commit_offset, record.total_size, record.tag_hash)
            if entry != expected:
                problems.append(f"{key}@{record.queue_offset}: entry {entry}, record "
                                f"{expected}")
        if record.flags & FLAG_INDEXED:
            names = list(record.keys) + ([record.unique_id] if record.unique_id else [])
            for name in names:
                found = store.lookup_by_key(record.topic, name, limit=10_000)
                if record.commit_offset not in {r.commit_offset for r in found}:
                    problems.append(f"key {record.topic}#{name} does not find the record "
                                    f"at {record.commit_offset}")


def _check_queue_entries(store: MessageStore, problems: list[str],
                         holes_allowed: bool) -> None:
    for (topic, queue_id), queue in sorted(store.queues.queues.items()):
        for queue_offset in range(store.min_offset(topic, queue_id), queue.max_offset):
            entry = queue.get(queue_offset)
            where = f"{topic}/{queue_id}@{queue_offset}"
            if entry is None:
                problems.append(f"{where}: no entry below max offset {queue.max_offset}")
                continue
            commit_offset, size, tag_hash = entry
            if commit_offset == TOMBSTONE_COMMIT_OFFSET:
                if not holes_allowed:
                    problems.append(f"{where}: tombstone without damage")
                continue
            raw = store.read_record(commit_offset)
            if raw is None:
                if not holes_allowed:
                    problems.append(f"{where}: entry {entry} names no valid record")
                continue
            record = decode_record(raw)
            if (record.topic, record.queue_id, record.queue_offset, record.total_size,
                    record.tag_hash) != (topic, queue_id, queue_offset, size, tag_hash):
                problems.append(f"{where}: entry {entry} names {record.topic}/"
                                f"{record.queue_id}@{record.queue_offset}")
