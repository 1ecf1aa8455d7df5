"""The commit log: every record of every topic, appended once, in mmap'd segments.

Theory of operation. One writer owns ``write_offset`` (the global byte offset where the next
record goes). ``append_batch`` copies each draft record into the current segment, stamps its
store fields (queue id and offset, commit offset, store time and host) and computes its
CRC32C in place; it returns what the dispatcher needs to index the batch. A record never
spans segments: when a batch does not fit in what is left of a segment (keeping room for
the 8-byte end-of-segment marker), the next segment is created *first* (so a full disk
fails the batch before any byte is written), then the rest of the current one is closed
with the marker and the batch goes to the new segment. A batch is therefore all-or-nothing.

``flushed_offset`` is how far fsync has covered; the flusher moves it (see MessageStore).
Bytes between the two survive a process kill (they are in the page cache) but not a power
cut, which is the promise of ``flush = "async"``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, final

from tidemq.common.crc import crc32c
from tidemq.errors import MessageIllegal, StoreError
from tidemq.protocol.record import (
    CRC,
    CRC_OFFSET,
    CRC_START,
    END_OF_SEGMENT_MAGIC,
    END_OF_SEGMENT_SIZE,
    HEADER_SIZE,
    RECORD_MAGIC,
    SIZE_MAGIC,
    STAMP,
    STAMP_OFFSET,
    STORE_TIMESTAMP,
    STORE_TIMESTAMP_OFFSET,
)
from tidemq.store.mapped_file import MappedFile
from tidemq.store.segments import SegmentQueue

# total_size, magic, crc, flags, (skip 80) tag_hash, body_length, properties_length,
# topic_length: everything append needs from a draft in one unpack.
_DRAFT_FIELDS: Final = struct.Struct("<IIII80xQIIH")
HOLE_MAGIC: Final = 0x484F4C45  # "HOLE": a corrupt range replaced at recovery; readers skip


@dataclass(frozen=True, slots=True)
class AppendedBatch:
    """Where a batch landed. ``entries`` are (commit_offset, size, tag_hash, flags)."""

    first_commit_offset: int
    end_offset: int
    entries: list[tuple[int, int, int, int]]


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

    def validate_batch(self, topic_bytes: bytes, drafts: Sequence[bytes]
                       ) -> tuple[int, list[tuple[int, int]]]:
        """Check every draft of a batch.

        Returns:
            The batch's size in bytes, and each draft's (tag_hash, flags).

        Raises:
            MessageIllegal: a draft is malformed, too large, or names another topic.
        """
        total = 0
        topic_end = HEADER_SIZE + len(topic_bytes)
        topic_length_expected = len(topic_bytes)
        limit = self.max_message_size
        unpack = _DRAFT_FIELDS.unpack_from
        tags_and_flags: list[tuple[int, int]] = []
        add = tags_and_flags.append
        for draft in drafts:
            size = len(draft)
            if size < HEADER_SIZE:
                raise MessageIllegal("record shorter than its header")
            total_size, magic, _crc, flags, tag, body, props, topic_length = unpack(draft)
            if magic != RECORD_MAGIC or total_size != size:
                raise MessageIllegal("record size or magic does not match its bytes")
            if HEADER_SIZE + body + props + topic_length != size:
                raise MessageIllegal("record parts do not add up to its size")
            if size > limit:
                raise MessageIllegal(f"record of {size} bytes exceeds the limit of {limit}")
            if topic_length != topic_length_expected or \
                    draft[HEADER_SIZE:topic_end] != topic_bytes:
                raise MessageIllegal("a record of the batch names another topic")
            total += size
            add((tag, flags))
        return total, tags_and_flags

    def append_batch(self, topic_bytes: bytes, queue_id: int, first_queue_offset: int,
                     drafts: Sequence[bytes], now_ms: int, leader_epoch: int, *,
                     validated: tuple[int, list[tuple[int, int]]] | None = None
                     ) -> AppendedBatch:
        """Append drafts of one (topic, queue) as consecutive records. ``validated`` is
        ``validate_batch``'s answer when the caller already has it.

        Raises:
            MessageIllegal: a draft is malformed, or the batch cannot fit in a segment
                (nothing written).
            DiskFull: no room for a new segment (nothing written).
        """
        if validated is None:
            validated = self.validate_batch(topic_bytes, drafts)
        batch_size, tags_and_flags = validated
        segment = self._segment_for_append(batch_size)
        position = self.write_offset - segment.start
        base = segment.start
        target = segment.map
        view = segment.view
        host = self.store_host
        port = self.store_port
        stamp = STAMP.pack_into
        pack_crc = CRC.pack_into
        checksum = crc32c
        entries: list[tuple[int, int, int, int]] = []
        add = entries.append
        queue_offset = first_queue_offset
        first_commit_offset = self.write_offset
        for draft, (tag, flags) in zip(drafts, tags_and_flags, strict=True):
            size = len(draft)
            end = position + size
            target[position:end] = draft
            stamp(target, position + STAMP_OFFSET, queue_id, leader_epoch, queue_offset,
                  base + position, now_ms, host, port)
            pack_crc(target, position + CRC_OFFSET, checksum(view[position + CRC_START:end]))
            add((base + position, size, tag, flags))
            position = end
            queue_offset += 1
        self.write_offset = base + position
        return AppendedBatch(first_commit_offset, self.write_offset, entries)

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
