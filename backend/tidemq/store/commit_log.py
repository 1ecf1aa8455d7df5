"""The commit log: every record of every topic, appended once, in mmap'd segments.

Theory of operation. One writer owns ``write_offset`` (the global byte offset where the next
record goes). ``append_packed`` copies a batch of draft records (packed back to back, as a
send request carries them) into the current segment with one copy, then stamps each
record's store fields (queue id and offset, commit offset, store time and host) and computes
its CRC32C in place (``packed_batch``: in C when the extension is built); it returns what
the dispatcher needs to index the batch (the commit offsets, and the consume-queue entries
already packed). A record never
spans segments: when a batch does not fit in what is left of a segment (keeping room for
the 8-byte end-of-segment marker), the next segment is created *first* (so a full disk
fails the batch before any byte is written), then the rest of the current one is closed
with the marker and the batch goes to the new segment. A batch is therefore all-or-nothing.

``flushed_offset`` is how far fsync has covered; the flusher moves it (see MessageStore).
Bytes between the two survive a process kill (they are in the page cache) but not a power
cut, which is the promise of ``flush = "async"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, final

from tidemq.common.buffers import Buffer
from tidemq.errors import MessageIllegal, StoreError
from tidemq.protocol.record import (
    END_OF_SEGMENT_MAGIC,
    END_OF_SEGMENT_SIZE,
    HEADER_SIZE,
    SIZE_MAGIC,
    STORE_TIMESTAMP,
    STORE_TIMESTAMP_OFFSET,
)
from tidemq.store.mapped_file import MappedFile
from tidemq.store.native import NATIVE
from tidemq.store.packed_batch import (
    record_sizes,
    stamp_packed_python,
    validate_packed_python,
)
from tidemq.store.segments import SegmentQueue

HOLE_MAGIC: Final = 0x484F4C45  # "HOLE": a corrupt range replaced at recovery; readers skip


@dataclass(frozen=True, slots=True)
class ValidatedBatch:
    """A checked batch: its size in bytes, its number of drafts, and for each draft with
    ``FLAG_INDEXED`` (its number in the batch, where its properties start, their length)."""

    size: int
    count: int
    indexed: list[tuple[int, int, int]]


@dataclass(frozen=True, slots=True)
class AppendedBatch:
    """Where a batch landed: each record's commit offset, and the batch's consume-queue
    entries already packed (``consume_queue.ENTRY``, one per record, in order)."""

    first_commit_offset: int
    end_offset: int
    commit_offsets: list[int]
    queue_entries: bytes


@final
class CommitLog:
    def __init__(self, directory: str, segment_size: int, max_message_size: int,
                 store_host: bytes, store_port: int, *, zero_fill: bool = False) -> None:
        self.segments = SegmentQueue(directory, segment_size, zero_fill_prepared=zero_fill)
        self.segment_size = segment_size
        self.max_message_size = max_message_size
        self.store_host = store_host
        self.store_port = store_port
        self.write_offset = 0
        self.flushed_offset = 0

    def load(self) -> None:
        self.segments.load()

    @property
    def min_offset(self) -> int:
        return self.segments.min_offset

    def validate_packed(self, topic_bytes: bytes, records: bytes) -> ValidatedBatch:
        """Check a batch of draft records packed back to back (each draft's first u32 is
        its total size: a send request's body), in one pass over their headers.

        Returns:
            The batch's size, its number of drafts, and where the properties of its
            indexed drafts are (see ``ValidatedBatch``).

        Raises:
            MessageIllegal: empty, a draft is cut short, malformed, too large, or names
                another topic.
        """
        if NATIVE is not None:
            checked = NATIVE.validate_packed(records, topic_bytes, self.max_message_size)
            if checked is not None:
                return ValidatedBatch(len(records), checked[0], checked[1])
        # the reference loop; for a bad batch (native or not) it says what is wrong
        count, indexed = validate_packed_python(topic_bytes, records, self.max_message_size)
        return ValidatedBatch(len(records), count, indexed)

    def append_batch(self, topic_bytes: bytes, queue_id: int, first_queue_offset: int,
                     drafts: Sequence[Buffer], now_ms: int, leader_epoch: int
                     ) -> AppendedBatch:
        """``append_packed`` for a list of drafts (one record each)."""
        records = b"".join(drafts)
        validated = self.validate_packed(topic_bytes, records)
        if record_sizes(records, validated.count) != [len(draft) for draft in drafts]:
            raise MessageIllegal("a draft of the list is not exactly one record")
        return self.append_packed(queue_id, first_queue_offset, records, validated, now_ms,
                                  leader_epoch)

    def append_packed(self, queue_id: int, first_queue_offset: int, records: Buffer,
                      validated: ValidatedBatch, now_ms: int, leader_epoch: int
                      ) -> AppendedBatch:
        """Append a batch of one (topic, queue) that ``validate_packed`` checked: one copy
        of the whole batch into the segment, then each record stamped and sealed in place.

        Raises:
            MessageIllegal: the batch cannot fit in a segment (nothing written).
            DiskFull: no room for a new segment (nothing written).
        """
        segment = self._segment_for_append(validated.size)
        position = self.write_offset - segment.start
        first_commit_offset = self.write_offset
        segment.map[position:position + validated.size] = records
        stamp = NATIVE.stamp_packed if NATIVE is not None else stamp_packed_python
        commit_offsets, queue_entries = stamp(
            segment.map, position, validated.size, validated.count, queue_id, leader_epoch,
            first_queue_offset, segment.start, now_ms, self.store_host, self.store_port)
        self.write_offset = segment.start + position + validated.size
        return AppendedBatch(first_commit_offset, self.write_offset, commit_offsets,
                             queue_entries)

    def _segment_for_append(self, size: int) -> MappedFile:
        """The segment the next ``size`` bytes go to, rolling (and creating) as needed."""
        if size + END_OF_SEGMENT_SIZE > self.segment_size:
            raise MessageIllegal(f"a batch of {size} bytes cannot fit in a segment")
        if self.segments.empty:
            return self.segments.create(self.write_offset - self.write_offset %
                                        self.segment_size)
        segment = self.segments.last
        if self.write_offset < segment.start or self.write_offset > segment.end:
            raise StoreError(f"write offset {self.write_offset} outside the last segment")
        if segment.end - self.write_offset >= size + END_OF_SEGMENT_SIZE:
            return segment
        following = self.segments.create(segment.end)  # DiskFull here changes nothing
        position = self.write_offset - segment.start
        if position < segment.size:  # at exactly the end, the segment is already closed
            SIZE_MAGIC.pack_into(segment.map, position, segment.size - position,
                                 END_OF_SEGMENT_MAGIC)
        self.write_offset = following.start
        return following

    # -- reading ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes at ``offset`` (within one segment).

        Raises:
            StoreError: the range is not stored (deleted by retention or never written).
        """
        segment = self.segments.find(offset)
        if segment is None or offset + size > min(segment.end, self.write_offset):
            raise StoreError(f"commit log range [{offset}, {offset + size}) is not stored")
        position = offset - segment.start
        return segment.map[position:position + size]

    def store_timestamp_at(self, offset: int) -> int | None:
        segment = self.segments.find(offset)
        if segment is None or offset + HEADER_SIZE > self.write_offset:
            return None
        value: int = STORE_TIMESTAMP.unpack_from(segment.map, offset - segment.start
                                                 + STORE_TIMESTAMP_OFFSET)[0]
        return value

    def iter_segments_from(self, offset: int) -> Iterator[MappedFile]:
        for segment in list(self.segments.segments):
            if segment.end > offset:
                yield segment

    def close(self) -> None:
        self.segments.close()
