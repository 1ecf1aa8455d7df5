"""The dispatcher: turns appended records into consume-queue entries and index entries.

It runs in two places: live, right after each batch is appended (the appender hands it the
batch's consume-queue entries already packed and its commit offsets; the batch's index keys
were read before the append by ``ensure_room``, through a ``KeyReader``, and are handed over
as key hashes), and at recovery, fed by the scan of the commit log.
Writes are idempotent (an entry goes to ``queue_offset * 20``; the index skips records
before its ``indexed_until``), so replaying a range that was already dispatched is harmless.
"""

from __future__ import annotations

import os
import struct
from typing import Final, final

from tidemq.common.buffers import Buffer
from tidemq.errors import MessageIllegal, ProtocolError
from tidemq.protocol.record import (
    FLAG_INDEXED,
    HEADER_SIZE,
    KEY_SEPARATOR,
    PROPERTY_KEYS,
    PROPERTY_UNIQUE_ID,
    decode_properties,
)
from tidemq.store.commit_log import AppendedBatch, CommitLog, ValidatedBatch
from tidemq.store.consume_queue import ConsumeQueue
from tidemq.store.index import KeyIndex, key_hash_seed
from tidemq.store.record_keys import KeyReader

_LENGTHS: Final = struct.Struct("<IIH")  # body, properties, topic lengths at offset 104
_LENGTHS_OFFSET: Final = 104
TOMBSTONE_COMMIT_OFFSET: Final = 2**64 - 1  # a queue offset whose record was lost


def index_key(topic: str, key: str) -> str:
    """Index keys are scoped by topic, as RocketMQ's are."""
    return f"{topic}#{key}"


@final
class QueueTable:
    """Every consume queue of the store, created on first use."""

    def __init__(self, root: str, entries_per_segment: int) -> None:
        self.root = root
        self.entries_per_segment = entries_per_segment
        self.queues: dict[tuple[str, int], ConsumeQueue] = {}

    def load(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        for topic in sorted(os.listdir(self.root)):
            topic_dir = os.path.join(self.root, topic)
            if not os.path.isdir(topic_dir):
                continue
            for name in sorted(os.listdir(topic_dir)):
                if name.isdigit():
                    self.get_or_create(topic, int(name)).load()

    def get(self, topic: str, queue_id: int) -> ConsumeQueue | None:
        return self.queues.get((topic, queue_id))

    def get_or_create(self, topic: str, queue_id: int) -> ConsumeQueue:
        """The queue's object, made on first use without any I/O. Its directory is made
        with its first segment (``SegmentQueue``), which ``MessageStore.prepare_queue_segment``
        makes ahead of need in a worker thread."""
        queue = self.queues.get((topic, queue_id))
        if queue is None:
            directory = os.path.join(self.root, topic, str(queue_id))
            queue = ConsumeQueue(directory, topic, queue_id, self.entries_per_segment)
            self.queues[(topic, queue_id)] = queue
        return queue

    def snapshot(self) -> dict[str, dict[int, int]]:
        table: dict[str, dict[int, int]] = {}
        for (topic, queue_id), queue in self.queues.items():
            table.setdefault(topic, {})[queue_id] = queue.max_offset
        return table

    def close(self) -> None:
        for queue in self.queues.values():
            queue.close()


@final
class Dispatcher:
    def __init__(self, commit_log: CommitLog, queues: QueueTable, index: KeyIndex) -> None:
        self.commit_log = commit_log
        self.queues = queues
        self.index = index
        self.dispatched_offset = 0  # commit-log offset everything before which is dispatched
        self._key_reader = KeyReader()

    def dispatch_batch(self, queue: ConsumeQueue, first_queue_offset: int,
                       appended: AppendedBatch, timestamp_ms: int,
                       keys: list[tuple[int, int]]) -> None:
        """Index a batch just appended to one queue (live path). ``keys`` are (position in
        the batch, key hash) pairs, as ``ensure_room`` read them."""
        queue.put_packed(first_queue_offset, appended.queue_entries)
        if keys:
            commit_offsets = appended.commit_offsets
            self.index.put_hashes([(hashed, commit_offsets[position])
                                   for position, hashed in keys], timestamp_ms)
        self.index.mark_indexed(appended.end_offset)
        self.dispatched_offset = appended.end_offset

    def dispatch_scanned(self, topic: str, queue_id: int, queue_offset: int,
                         commit_offset: int, size: int, tag_hash: int, flags: int,
                         timestamp_ms: int) -> None:
        """Index one record found by the recovery scan."""
        queue = self.queues.get_or_create(topic, queue_id)
        if queue_offset >= queue.min_offset:
            if queue_offset > queue.max_offset and queue.max_offset > queue.min_offset:
                for lost in range(queue.max_offset, queue_offset):  # a record was lost
                    queue.put(lost, TOMBSTONE_COMMIT_OFFSET, 0xFFFFFFFF, 0)
            queue.put(queue_offset, commit_offset, size, tag_hash)
        if flags & FLAG_INDEXED and commit_offset >= self.index.indexed_until:
            self._index_record(topic, commit_offset, timestamp_ms)
        self.dispatched_offset = commit_offset + size

    def finish_scan(self, end_offset: int) -> None:
        if self.index.indexed_until < end_offset:
            self.index.mark_indexed(end_offset)
        self.dispatched_offset = end_offset

    def record_keys(self, commit_offset: int) -> list[str]:
        """The keys and unique id a stored record is indexed under (without topic).

        Error handling: a record whose properties are not a string map (one stored before
        puts checked them) is served but not indexed, never fatal to recovery.
        """
        segment = self.commit_log.segments.find(commit_offset)
        assert segment is not None
        try:
            return _keys_at(segment.view, commit_offset - segment.start)
        except ProtocolError:
            return []

    def _index_record(self, topic: str, commit_offset: int, timestamp_ms: int) -> None:
        for key in self.record_keys(commit_offset):
            self.index.put(index_key(topic, key), commit_offset, timestamp_ms)

    def ensure_room(self, queue: ConsumeQueue, first_queue_offset: int, topic_bytes: bytes,
                    records: bytes, validated: ValidatedBatch,
                    commit_offset: int) -> list[tuple[int, int]]:
        """Create what a validated batch will need (consume-queue segment, room in one
        index file for all its keys) before the log is written, so a full disk fails the
        batch with nothing written and dispatching it cannot fail afterwards.

        Returns:
            The batch's index keys as (position in the batch, ``key_hash`` of
            ``topic#key``) pairs (read once here and handed to ``dispatch_batch``).

        Raises:
            MessageIllegal: an indexed draft's properties are not a map of strings (the
                index could not read them back), or the batch has more keys than an index
                file holds.
            DiskFull: no room for a new consume-queue segment or index file.
        """
        try:
            keys = self._key_reader.read_batch(records, validated.indexed,
                                               key_hash_seed(topic_bytes + b"#"))
        except ProtocolError as error:
            raise MessageIllegal(f"an indexed record's {error}") from None
        if len(keys) > self.index.entries_per_file:
            raise MessageIllegal(f"a batch of {len(keys)} keys exceeds the "
                                 f"{self.index.entries_per_file} of an index file")
        queue.ensure_room(first_queue_offset, validated.count)
        if keys or not self.index.files:
            self.index.ensure_room(len(keys), commit_offset)  # also starts the first file
        return keys


def _keys_at(buffer: Buffer, position: int) -> list[str]:
    """The keys and unique id of the record at ``position``. Raises ProtocolError."""
    _body_length, properties_length, topic_length = _LENGTHS.unpack_from(
        buffer, position + _LENGTHS_OFFSET)
    start = position + HEADER_SIZE + topic_length
    properties = decode_properties(memoryview(buffer)[start:start + properties_length])
    keys = [key for key in properties.get(PROPERTY_KEYS, "").split(KEY_SEPARATOR) if key]
    unique_id = properties.get(PROPERTY_UNIQUE_ID)
    if unique_id:
        keys.append(unique_id)
    return keys
