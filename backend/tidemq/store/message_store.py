"""The MessageStore facade: what a broker asks of its storage, synchronously.

    data_dir/
      lock            present while open; found at open = the last stop was unclean
      checkpoint      flushed offsets + queue sizes (see checkpoint.py)
      commitlog/      segments of every record (commit_log.py)
      consumequeue/<topic>/<queue id>/   20-byte entries per queue (consume_queue.py)
      index/          key and unique-id hash index (index.py)

The store is synchronous and single-writer: the broker's Trio shell calls ``put_packed`` (a
send request's body as it came) or ``put_batch`` (a list of drafts) and ``get_messages`` on
its event loop (they only touch memory-mapped pages) and runs the blocking steps, fsync
above all, in worker threads: ``plan_flush`` (event loop) returns a ``FlushPlan`` whose
``execute`` (worker thread) fsyncs, and ``complete_flush`` (event loop) publishes the new
flushed offset. ``flush()`` does all three for plain synchronous users.

Error handling: every failure is a typed ``TideError``: ``MessageIllegal`` for a bad batch,
``DiskFull`` when space runs out (nothing half-written; appends resume when space returns),
``StoreCorrupt`` never escapes ``open`` (damage is repaired and reported), ``StoreClosed``
after ``close``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, final

from tidemq.common.buffers import Buffer
from tidemq.common.clock import Clock, SystemClock
from tidemq.common.ids import decode_message_id
from tidemq.config import StoreConfig
from tidemq.errors import DiskFull, MessageIllegal, StoreClosed, StoreError
from tidemq.protocol.record import Record, pack_host, unpack_host
from tidemq.store.checkpoint import Checkpoint, write_checkpoint
from tidemq.store.commit_log import CommitLog
from tidemq.store.consume_queue import ENTRY_SIZE, ConsumeQueue
from tidemq.store.dispatcher import Dispatcher, QueueTable
from tidemq.store.files import store_error
from tidemq.store.index import KeyIndex
from tidemq.store.mapped_file import MappedFile
from tidemq.store.opening import recover_store
from tidemq.store.packed_batch import record_sizes
from tidemq.store.reading import (
    collect_records,
    decode_or_none,
    find_by_key,
    first_offset_at,
    first_stored_offset,
    read_valid_record,
)
from tidemq.store.recovery import RecoveryReport
from tidemq.store.results import GetResult, GetStatus, PutResult, RetentionReport, StoreStats
from tidemq.store.retention import apply_retention

TOPIC_PATTERN: Final = re.compile(r"^[A-Za-z0-9_%-]{1,127}$")


def check_topic_name(topic: str) -> None:
    """Raises MessageIllegal unless ``topic`` matches ``[A-Za-z0-9_%-]{1,127}``."""
    if not TOPIC_PATTERN.match(topic):
        raise MessageIllegal(f"illegal topic name {topic!r}: use [A-Za-z0-9_%-], 1-127 chars")


@dataclass(slots=True)
class FlushPlan:
    """What one flush covers; ``execute`` (a worker thread) does the blocking part."""

    target_offset: int
    segments: list[MappedFile]
    queues: list[ConsumeQueue] = field(default_factory=list)
    index: KeyIndex | None = None
    checkpoint: Checkpoint | None = None
    checkpoint_path: str = ""

    def execute(self) -> None:
        try:
            for segment in self.segments:
                segment.sync()
            for queue in self.queues:
                queue.sync()
            if self.index is not None:
                self.index.sync()
            if self.checkpoint is not None:
                write_checkpoint(self.checkpoint_path, self.checkpoint)
        finally:
            for segment in self.segments:
                segment.release()
            self.segments = []


@final
class MessageStore:
    def __init__(self, config: StoreConfig, *, clock: Clock | None = None,
                 host: str = "127.0.0.1", port: int = 10911,
                 disk_usage: Callable[[str], float] | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.host = host
        self.port = port
        self.directory = os.path.abspath(config.data_dir)
        self._disk_usage = disk_usage or _disk_usage_ratio
        self.log = CommitLog(os.path.join(self.directory, "commitlog"),
                             config.segment_size_bytes, config.max_message_size_bytes,
                             pack_host(host), port, zero_fill=config.zero_fills_segments)
        self.queues = QueueTable(os.path.join(self.directory, "consumequeue"),
                                 config.consume_queue_segment_entries)
        self.index = KeyIndex(os.path.join(self.directory, "index"), config.index_slots,
                              config.index_entries_per_file)
        self.dispatcher = Dispatcher(self.log, self.queues, self.index)
        self._lock_fd: int | None = None
        self._open = False
        self._opened_once = False
        self._checked_topics: set[str] = set()
        self._records_appended = 0
        self._bytes_appended = 0
        self._batches_appended = 0
        self._segments_deleted = 0
        self._disk_full_errors = 0
        self.recovery: RecoveryReport | None = None

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.directory, "checkpoint")

    def open(self) -> RecoveryReport:
        """Open (and recover) the store. Blocking: run it in a worker thread from Trio.

        A store object opens once; to reopen a directory, make a new ``MessageStore``.

        Raises:
            StoreError: the directory is in use by another store, or unreadable, or this
                object was opened before.
            DiskFull: recovery needed space that is not there (every file is closed and
                the lock released; a later open recovers again).

        Error handling: a full disk when writing the checkpoint after recovery is not an
        error: the old checkpoint and the lock file stay, so the next open scans again.
        """
        if self._opened_once:
            raise StoreError("a MessageStore opens once: make a new one to reopen")
        self._opened_once = True
        lock_path = os.path.join(self.directory, "lock")
        try:
            os.makedirs(self.directory, exist_ok=True)
            unclean = os.path.exists(lock_path)
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise store_error(error, "opening", lock_path) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreError(f"{self.directory} is in use by another store") from None
        try:
            self.recovery = recover_store(self, unclean=unclean)
        except BaseException:
            self._release_files(write_headers=False)
            raise
        self._open = True
        try:
            self.flush()
        except DiskFull:
            pass
        return self.recovery

    def close(self) -> None:
        """Flush everything, write the checkpoint, and mark the stop clean.

        Error handling: if the final flush fails (a full disk for the checkpoint), every
        file is still closed and the lock released, but the lock file stays so the next
        open recovers as after a crash; then the error is raised.
        """
        if not self._open:
            return
        try:
            self.flush()
        except BaseException:
            self.abandon()
            raise
        self._open = False
        self._release_files(write_headers=True)

    def abandon(self) -> None:
        """Let go of every file as a killed process would (crash tests, the simulator).

        Nothing is flushed, no checkpoint or index header is written, and the lock file
        stays, so the next ``open`` of the directory recovers as after a ``kill -9``. The
        bytes already copied into the maps stay in the page cache, as they would.
        """
        if not self._open:
            return
        self._open = False
        self._release_files(write_headers=False)

    def _release_files(self, *, write_headers: bool) -> None:
        """Close every file and the lock; a clean stop (``write_headers``) also removes
        the lock file."""
        self.log.close()
        self.queues.close()
        self.index.close(write_headers=write_headers)
        if self._lock_fd is not None:
            if write_headers:
                os.unlink(os.path.join(self.directory, "lock"))
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_open(self) -> None:
        if not self._open:
            raise StoreClosed("the store is closed")

    # -- writing ------------------------------------------------------------------------
    def put_batch(self, topic: str, queue_id: int, drafts: Sequence[Buffer]) -> PutResult:
        """Append draft records of one queue, all or nothing: ``put_packed`` for a list of
        drafts, one record each.

        Raises:
            MessageIllegal: a bad topic name, queue id, or record (nothing written).
            DiskFull: no space (nothing written).
        """
        self._check_open()
        if not drafts:
            raise MessageIllegal("an empty batch")
        return self.put_packed(topic, queue_id, b"".join(drafts),
                               sizes=[len(draft) for draft in drafts])

    def put_packed(self, topic: str, queue_id: int, records: Buffer, *,
                   sizes: list[int] | None = None) -> PutResult:
        """Append draft records of one queue, packed back to back (a send request's body:
        each draft's first u32 is its size), all or nothing. ``sizes``, when given, are the
        sizes the batch's records must have, in order (each draft of a list one record).

        Raises:
            MessageIllegal: a bad topic name, queue id, or record, or records of other
                sizes than ``sizes`` (nothing written).
            DiskFull: no space (nothing written).
        """
        self._check_open()
        if topic not in self._checked_topics:
            check_topic_name(topic)
            self._checked_topics.add(topic)
        if not 0 <= queue_id < 65536:
            raise MessageIllegal(f"queue id {queue_id} out of range")
        topic_bytes = topic.encode()
        if type(records) is not bytes:  # one copy; then per-record checks need no views
            records = bytes(records)
        validated = self.log.validate_packed(topic_bytes, records)
        if sizes is not None and record_sizes(records, validated.count) != sizes:
            raise MessageIllegal("a draft of the batch is not exactly one record")
        if validated.size > self.config.append_batch_bytes_max:
            raise MessageIllegal(f"a batch of {validated.size} bytes exceeds the limit of "
                                 f"{self.config.append_batch_bytes_max}")
        now_ms = self.clock.now_ms()
        try:
            queue = self.queues.get_or_create(topic, queue_id)
            first_queue_offset = queue.max_offset
            keys = self.dispatcher.ensure_room(queue, first_queue_offset, topic_bytes, records,
                                               validated, self.log.write_offset)
            appended = self.log.append_packed(queue_id, first_queue_offset, records,
                                              validated, now_ms, 0)
        except DiskFull:
            self._disk_full_errors += 1
            raise
        self.dispatcher.dispatch_batch(queue, first_queue_offset, appended, now_ms, keys)
        self._records_appended += validated.count
        self._bytes_appended += validated.size
        self._batches_appended += 1
        return PutResult(topic, queue_id, first_queue_offset, appended.commit_offsets,
                         appended.end_offset, now_ms)

    # -- consume-queue segments ahead of need -----------------------------------------
    def queue_segment_wanted(self, topic: str, queue_id: int) -> bool | None:
        """Whether the queue should have a segment made ahead of its puts (event loop; no
        I/O): None when none is wanted; False when only the next one is (the last is half
        full: the put can go on); True when the queue has no segment for its next entry,
        so the put would make one on the event loop (a new queue: a directory, a file and
        its preallocation, up to a few ms on ext4). Illegal names want nothing (the put
        refuses them)."""
        if not 0 <= queue_id < 65536 or (topic not in self._checked_topics and
                                         not TOPIC_PATTERN.match(topic)):
            return None
        queue = self.queues.get_or_create(topic, queue_id)
        segments = queue.segments
        if segments.next_prepared:
            return None
        position = queue.max_offset * ENTRY_SIZE
        if segments.empty or position >= segments.last.end:
            return True
        if position - segments.last.start >= segments.segment_size // 2:
            return False
        return None

    def prepare_queue_segment(self, topic: str, queue_id: int) -> None:
        """Make the queue's next segment (blocking: a worker thread). A full disk is not an
        error here: the put that needs the segment reports it."""
        queue = self.queues.get(topic, queue_id)
        if queue is None or not self._open:
            return
        try:
            queue.segments.prepare_next()
        except DiskFull:
            pass

    # -- flushing -----------------------------------------------------------------------
    def plan_flush(self, *, with_indexes: bool = True) -> FlushPlan:
        """What to fsync now (event-loop side). ``with_indexes`` adds the consume queues,
        the index and a checkpoint; without it only the commit log is synced."""
        target = self.log.write_offset
        segments = [s for s in self.log.iter_segments_from(self.log.flushed_offset)
                    if s.start < max(target, self.log.flushed_offset + 1) and s.acquire()]
        plan = FlushPlan(target, segments)
        if with_indexes:
            plan.queues = list(self.queues.queues.values())
            plan.index = self.index
            plan.checkpoint = Checkpoint(target, target, target, self.queues.snapshot())
            plan.checkpoint_path = self.checkpoint_path
        return plan

    def complete_flush(self, plan: FlushPlan) -> None:
        """Publish a finished flush (event-loop side)."""
        self.log.flushed_offset = max(self.log.flushed_offset, plan.target_offset)

    def flush(self) -> int:
        """Flush everything now (blocking). Returns the flushed commit-log offset."""
        plan = self.plan_flush(with_indexes=True)
        plan.execute()
        self.complete_flush(plan)
        return self.log.flushed_offset

    def prepare_next_segment(self) -> None:
        """Preallocate the next commit-log segment ahead of need (blocking). A full disk is
        not an error here: the append that needs the segment reports it."""
        try:
            self.log.segments.prepare_next()
        except DiskFull:
            pass

    def populate_wanted(self, ahead: int) -> bool:
        """Whether less than half of the next ``ahead`` bytes of the log (those made so
        far: the active segment and a prepared one) have their pages populated."""
        segments = self.log.segments
        return segments.populated_until < min(self.log.write_offset + ahead // 2,
                                              segments.populatable_until)

    def populate_ahead(self, ahead: int, *, at_idle_priority: bool = True) -> None:
        """Populate the pages of the next ``ahead`` bytes of the log, as far as segments
        are made (blocking: a worker thread; see ``SegmentQueue.populate_ahead``)."""
        begin = self.log.write_offset
        self.log.segments.populate_ahead(begin, begin + ahead,
                                         at_idle_priority=at_idle_priority)

    def apply_retention(self) -> RetentionReport:
        """Delete expired segments (by age, or oldest first past the disk-usage ratio)."""
        self._check_open()
        report = apply_retention(self, self.clock.now_ms(), self._disk_usage)
        self._segments_deleted += report.commit_log_segments_deleted
        return report

    # -- reading ------------------------------------------------------------------------
    def min_offset(self, topic: str, queue_id: int) -> int:
        """The first queue offset whose record is still stored. Raises StoreClosed."""
        self._check_open()
        queue = self.queues.get(topic, queue_id)
        return 0 if queue is None else first_stored_offset(self.log, queue)

    def max_offset(self, topic: str, queue_id: int) -> int:
        """The queue offset the next record of the queue gets. Raises StoreClosed."""
        self._check_open()
        queue = self.queues.get(topic, queue_id)
        return 0 if queue is None else queue.max_offset

    def get_messages(self, topic: str, queue_id: int, offset: int, *, max_count: int = 32,
                     max_bytes: int = 4 << 20,
                     tag_hashes: frozenset[int] | None = None) -> GetResult:
        """Up to ``max_count`` records / ``max_bytes`` of a queue from ``offset``."""
        self._check_open()
        queue = self.queues.get(topic, queue_id)
        min_offset = self.min_offset(topic, queue_id)
        max_offset = 0 if queue is None else queue.max_offset
        if queue is None or offset == max_offset:
            status = GetStatus.NO_NEW_MESSAGE if offset == max_offset else \
                GetStatus.OFFSET_OVERFLOW
            return GetResult(status, b"", 0, max_offset, min_offset, max_offset)
        if offset < min_offset:
            return GetResult(GetStatus.OFFSET_TOO_SMALL, b"", 0, min_offset, min_offset,
                             max_offset)
        if offset > max_offset:
            return GetResult(GetStatus.OFFSET_OVERFLOW, b"", 0, max_offset, min_offset,
                             max_offset)
        data, count, next_offset = collect_records(self.log, queue, offset, max_count,
                                                   max_bytes, tag_hashes)
        status = GetStatus.FOUND if count else GetStatus.NO_MATCHED_MESSAGE
        return GetResult(status, data, count, next_offset, min_offset, max_offset)

    def read_record(self, commit_offset: int) -> bytes | None:
        """The valid record stored at ``commit_offset``, or None. Raises StoreClosed."""
        self._check_open()
        return read_valid_record(self.log, commit_offset)

    def lookup_by_message_id(self, message_id: str) -> Record | None:
        """The record an offset-based message id names, if this store holds it: a valid
        record at that offset, stamped with the id's host and port (the same offset on
        another broker is another message)."""
        try:
            decoded = decode_message_id(message_id)
        except ValueError:
            return None
        self._check_open()
        record = decode_or_none(read_valid_record(self.log, decoded.commit_offset))
        if record is None or (unpack_host(record.store_host), record.store_port) != \
                (decoded.host, decoded.port):
            return None
        return record

    def lookup_by_key(self, topic: str, key: str, *, limit: int = 64, begin_ms: int = 0,
                      end_ms: int = 2**63 - 1) -> list[Record]:
        """Records of ``topic`` whose keys (or unique id) include ``key``, newest first."""
        self._check_open()
        return find_by_key(self.log, self.index, topic, key, limit, begin_ms, end_ms)

    def lookup_by_unique_id(self, topic: str, unique_id: str) -> Record | None:
        for record in self.lookup_by_key(topic, unique_id, limit=8):
            if record.unique_id == unique_id:
                return record
        return None

    def offset_for_timestamp(self, topic: str, queue_id: int, timestamp_ms: int) -> int:
        """The first queue offset stored at or after ``timestamp_ms`` (max if none)."""
        self._check_open()
        queue = self.queues.get(topic, queue_id)
        return 0 if queue is None else first_offset_at(self.log, queue, timestamp_ms)

    def topics(self) -> dict[str, dict[int, int]]:
        """Every queue the store holds: ``{topic: {queue_id: max offset}}``."""
        return self.queues.snapshot()

    def stats(self) -> StoreStats:
        return StoreStats(
            commit_log_min_offset=self.log.min_offset,
            commit_log_write_offset=self.log.write_offset,
            commit_log_flushed_offset=self.log.flushed_offset,
            commit_log_segments=len(self.log.segments.segments),
            queues=len(self.queues.queues),
            index_files=len(self.index.files),
            records_appended=self._records_appended,
            bytes_appended=self._bytes_appended,
            batches_appended=self._batches_appended,
            segments_deleted=self._segments_deleted,
            disk_full_errors=self._disk_full_errors,
        )


def _disk_usage_ratio(path: str) -> float:
    usage = shutil.disk_usage(path)
    return usage.used / usage.total if usage.total else 0.0
