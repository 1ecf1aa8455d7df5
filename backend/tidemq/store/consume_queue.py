"""Consume queues: a fixed-width index of one (topic, queue id) into the commit log.

Entry N is queue offset N, at byte N * 20 of the queue's segment sequence, so a read at any
queue offset is O(1)::

    +------------------------+----------------+------------------------+
    | commit offset (u64 LE) | size (u32 LE)  | tag hash (u64 LE)      |   20 bytes
    +------------------------+----------------+------------------------+

An all-zero entry (size 0) was never written. Entries are written by the dispatcher at
``queue_offset * 20`` whatever came before, so re-dispatching a record at recovery is
idempotent. Segments hold ``entries_per_segment`` entries and are named by the byte offset
of their first entry.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Final, final

from tidemq.store.mapped_file import MappedFile
from tidemq.store.segments import SegmentQueue

ENTRY: Final = struct.Struct("<QIQ")
ENTRY_SIZE: Final = ENTRY.size


@final
class ConsumeQueue:
    def __init__(self, directory: str, topic: str, queue_id: int,
                 entries_per_segment: int) -> None:
        self.topic = topic
        self.queue_id = queue_id
        self.directory = directory
        self.segments = SegmentQueue(directory, entries_per_segment * ENTRY_SIZE)
        self.min_offset = 0  # first queue offset still served
        self.max_offset = 0  # next queue offset to write
        self.flushed_offset = 0

    def load(self) -> None:
        """Open segments and find ``max_offset`` (first unwritten entry after the last)."""
        self.segments.load()
        if self.segments.empty:
            return
        self.min_offset = self.segments.min_offset // ENTRY_SIZE
        last = self.segments.last
        # Entries are dense, so binary-search the last segment for its first empty entry.
        # Only a queue's first segment may start with empty entries (a queue rebuilt from
        # a log that retention had cut starts mid-segment): search from its first entry.
        low, high = 0, last.size // ENTRY_SIZE
        if len(self.segments.segments) == 1:
            low = next((number for number, (_, size, _) in
                        enumerate(ENTRY.iter_unpack(last.view)) if size), 0)
        while low < high:
            middle = (low + high) // 2
            if ENTRY.unpack_from(last.map, middle * ENTRY_SIZE)[1] != 0:
                low = middle + 1
            else:
                high = middle
        self.max_offset = (last.start // ENTRY_SIZE) + low
        # Recovery may rewrite entries below max_offset: the first flush syncs them all.
        self.flushed_offset = self.min_offset

    def put(self, queue_offset: int, commit_offset: int, size: int, tag_hash: int) -> None:
        """Write entry ``queue_offset``. Raises DiskFull when a new segment cannot be made."""
        position = queue_offset * ENTRY_SIZE
        segment = self.segments.find(position)
        if segment is None:
            segment = self._segment_for(position)
        ENTRY.pack_into(segment.map, position - segment.start, commit_offset, size, tag_hash)
        if queue_offset >= self.max_offset:
            self.max_offset = queue_offset + 1

    def put_packed(self, first_queue_offset: int, data: bytes) -> None:
        """Write consecutive entries from ``first_queue_offset``, given packed (``ENTRY``
        each, back to back), with one copy per segment touched."""
        count = len(data) // ENTRY_SIZE
        position = first_queue_offset * ENTRY_SIZE
        segments = self.segments.segments
        if segments:  # fast path: the whole batch lands in the last segment
            last = segments[-1]
            begin = position - last.start
            if begin >= 0 and begin + len(data) <= last.size:
                last.map[begin:begin + len(data)] = data
                self.max_offset = max(self.max_offset, first_queue_offset + count)
                return
        written = 0
        while written < len(data):
            segment = self.segments.find(position + written)
            if segment is None:
                segment = self._segment_for(position + written)
            begin = position + written - segment.start
            step = min(len(data) - written, segment.size - begin)
            segment.map[begin:begin + step] = data[written:written + step]
            written += step
        self.max_offset = max(self.max_offset, first_queue_offset + count)

    def ensure_room(self, first_queue_offset: int, count: int) -> None:
        """Create the segments entries [first, first + count) need, before anything is
        written to the commit log (so a full disk fails the batch cleanly)."""
        # The first entry's segment first: on an empty queue, making the last one first
        # would start the queue there, with no segment for the entries before it.
        first_position = first_queue_offset * ENTRY_SIZE
        last_position = (first_queue_offset + count) * ENTRY_SIZE - 1
        segments = self.segments.segments
        if segments and segments[-1].start <= first_position and \
                last_position < segments[-1].end:
            return  # fast path: the last segment has room
        for position in (first_position, last_position):
            if self.segments.find(position) is None:
                self._segment_for(position)

    def _segment_for(self, position: int) -> MappedFile:
        size = self.segments.segment_size
        target_start = position - position % size
        if self.segments.empty:
            return self.segments.create(target_start) if target_start == 0 else \
                self._create_first(target_start)
        while self.segments.last.end <= target_start:
            self.segments.create(self.segments.last.end)
        segment = self.segments.find(position)
        assert segment is not None
        return segment

    def _create_first(self, start: int) -> MappedFile:
        segment = self.segments.create(start)
        self.min_offset = start // ENTRY_SIZE
        self.max_offset = max(self.max_offset, self.min_offset)
        return segment

    def get(self, queue_offset: int) -> tuple[int, int, int] | None:
        """(commit_offset, size, tag_hash) of an entry, or None if outside the queue."""
        if not self.min_offset <= queue_offset < self.max_offset:
            return None
        position = queue_offset * ENTRY_SIZE
        segment = self.segments.find(position)
        if segment is None:
            return None
        entry: tuple[int, int, int] = ENTRY.unpack_from(segment.map, position - segment.start)
        return entry

    def iter_from(self, queue_offset: int, count: int) -> Iterator[tuple[int, int, int]]:
        """Entries from ``queue_offset``, at most ``count``, stopping at ``max_offset`` or
        a segment end (the caller asks again for the rest)."""
        end_offset = min(queue_offset + count, self.max_offset)
        if queue_offset >= end_offset or queue_offset < self.min_offset:
            return iter(())
        position = queue_offset * ENTRY_SIZE
        segment = self.segments.find(position)
        if segment is None:
            return iter(())
        begin = position - segment.start
        end = min(end_offset * ENTRY_SIZE - segment.start, segment.size)
        return ENTRY.iter_unpack(segment.view[begin:end])

    def truncate_from_commit_offset(self, commit_offset: int) -> int:
        """Drop entries at the tail whose record starts at or after ``commit_offset``.
        Returns how many were dropped."""
        dropped = 0
        while self.max_offset > self.min_offset:
            entry = self.get(self.max_offset - 1)
            if entry is None or entry[0] < commit_offset:
                break
            self.max_offset -= 1
            position = self.max_offset * ENTRY_SIZE
            segment = self.segments.find(position)
            assert segment is not None
            ENTRY.pack_into(segment.map, position - segment.start, 0, 0, 0)
            dropped += 1
        self.flushed_offset = min(self.flushed_offset, self.max_offset)
        self.segments.drop_after(self.max_offset * ENTRY_SIZE)
        return dropped

    def sync(self) -> None:
        """fsync the segments written since the last sync (blocking: a worker thread),
        then move ``flushed_offset`` up to the size the queue had when the sync began
        (entries written meanwhile wait for the next sync). Without moving it, every
        flush synced every segment of every queue again."""
        target = self.max_offset
        if target <= self.flushed_offset:
            return
        first, last = self.flushed_offset * ENTRY_SIZE, target * ENTRY_SIZE
        for segment in list(self.segments.segments):
            if segment.end > first and segment.start < last and segment.acquire():
                try:
                    segment.sync()
                finally:
                    segment.release()
        self.flushed_offset = max(self.flushed_offset, target)

    def delete_segments_below(self, commit_offset_min: int) -> int:
        """Retention: drop full segments whose every entry points below the commit log's
        minimum offset. Returns how many segments were deleted.

        The last segment always stays, even full and expired: it is what tells ``load``
        the queue's size after a restart (without it the queue would look damaged, be
        rebuilt from a log that no longer holds its records, and restart at offset 0).
        """
        count = 0
        segments = self.segments.segments
        while count < len(segments) - 1:
            segment = segments[count]
            last_entry = segment.end // ENTRY_SIZE - 1
            if last_entry >= self.max_offset:
                break  # not full: writes continue here
            commit_offset, size, _ = ENTRY.unpack_from(segment.map, segment.size - ENTRY_SIZE)
            if commit_offset + size > commit_offset_min:
                break
            count += 1
        if count:
            self.segments.drop_front(count)
            self.min_offset = self.segments.min_offset // ENTRY_SIZE
        return count

    def close(self) -> None:
        self.segments.close()

    @property
    def path_exists(self) -> bool:
        return os.path.isdir(self.directory)

