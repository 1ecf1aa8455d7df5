"""The store's Trio shell: appends on the event loop, fsync and housekeeping in threads.

    put_packed / put_batch (event loop) --> MessageStore (one copy into the mmap, dispatch)
         |  flush = "sync": wait until the flusher has fsync'd past the batch's end
         v
    flusher task:   plan_flush (loop) -> FlushPlan.execute (worker thread) -> complete_flush,
                    then at once the next flush while writers wait (flush_chain.py);
                    the commit log only
    checkpointer:   every checkpoint_interval_ms, in a thread of its own beside the
                    flusher: commit log + consume queues + index, then the checkpoint
    preparer task:  make (and, with flush = "sync", zero-fill) the next segment (worker
                    thread) once the active one is half full, so a roll never waits for
                    it; keep the pages ``POPULATE_AHEAD_BYTES`` ahead of the writer
                    populated (a thread of idle priority); make each consume queue's
                    next segment. A put to a queue with no segment yet
                    (a new queue) waits for its first one, made in a worker thread, so
                    the event loop never creates files on the send path
    retention task: apply_retention every retention_check_interval_ms

Group commit: while one fsync runs in its thread, more writers append; the next flush
covers all of them with one fsync, and starts as soon as the previous one is done (from its
completion callback, not after the flusher task is scheduled again). ``flush = "async"``
acknowledges at once and fsyncs every ``flush_interval_ms``; ``flush = "sync"``
acknowledges after the batch's fsync, or raises ``FlushTimeout`` after
``sync_flush_timeout_ms`` (the record is stored, not yet durable). A caller on the event
loop may also register a callback for when its batch is on disk (``when_flushed``): it runs
right as the flush is published, before any waiting task is scheduled (the send handler
acknowledges from there).

Shutdown is cancellation: ``run`` closes the store (final flush + checkpoint) in a shielded
scope, so everything acknowledged is flushed on SIGINT/SIGTERM.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final, final

import trio

from tidemq.broker.flush_chain import FlushChain
from tidemq.common.buffers import Buffer
from tidemq.config import StoreConfig
from tidemq.errors import FlushTimeout, StoreClosed, TideError
from tidemq.store import MessageStore, PutResult, RecoveryReport

logger = logging.getLogger("tidemq.broker.store_service")


@final
class FlushListener:
    """A callback for when the commit log is on disk up to ``offset`` (``when_flushed``)."""

    __slots__ = ("callback", "cancelled", "offset")

    def __init__(self, offset: int, callback: Callable[[], None]) -> None:
        self.offset = offset
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not call it (harmless after it was called)."""
        self.cancelled = True

POPULATE_AHEAD_BYTES: Final = 128 * 1024 * 1024
"""How far ahead of the writer the commit log's pages are kept populated: a quarter of a
second of writing at this disk's ~500 MB/s, and a cold VM populates ~550 MB/s."""


@final
class StoreService:
    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.config: StoreConfig = store.config
        self._flush_waiters = 0
        self._flush_done = trio.Event()  # replaced after each flush (and each timeout tick)
        self._flush_listeners: list[tuple[int, int, FlushListener]] = []  # a heap
        self._listener_order = itertools.count()
        self._flush_wanted = trio.Event()
        self._prepare_wanted = trio.Event()
        self._queues_to_prepare: dict[tuple[str, int], None] = {}  # in order, no repeats
        self._queue_locks: dict[tuple[str, int], trio.Lock] = {}
        self._running = False
        self.flushes = 0  # commit-log flushes (each may acknowledge sync writers)
        self.checkpoints = 0

    async def run(self, *, task_status: trio.TaskStatus[RecoveryReport] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Open the store, serve until cancelled, then close it cleanly."""
        report = await trio.to_thread.run_sync(self.store.open)
        self._log_recovery(report)
        if self.store.log.segments.empty and self.config.preallocate_next_segment:
            # A fresh store: make its first segment before serving, the way later ones are
            # made (zero-filled with flush = "sync"), and populate all of it, so early
            # traffic meets no first-write stalls.
            await trio.to_thread.run_sync(self.store.prepare_next_segment)
            # Before serving: at normal priority (busy cores elsewhere must not hold the
            # start for seconds).
            await trio.to_thread.run_sync(partial(self.store.populate_ahead,
                                                  self.store.log.segment_size,
                                                  at_idle_priority=False))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_loop)
                nursery.start_soon(self._checkpoint_loop)
                nursery.start_soon(self._prepare_loop)
                nursery.start_soon(self._retention_loop)
                nursery.start_soon(self._timeout_ticker)
                self._running = True
                if self._preparation_wanted():
                    self._prepare_wanted.set()
                task_status.started(report)
        finally:
            self._running = False
            self._flush_listeners.clear()
            self._flush_done.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.store.close)

    async def put_batch(self, topic: str, queue_id: int, drafts: Sequence[Buffer]) -> PutResult:
        """Store a list of drafts (one record each); see ``put_packed``."""
        if not self._running:
            raise StoreClosed("the store service is not running")
        await self._prepare_queue(topic, queue_id)
        return await self._acknowledge(self.store.put_batch(topic, queue_id, drafts))

    async def put_packed(self, topic: str, queue_id: int, records: Buffer, *,
                         yield_after: bool = True) -> PutResult:
        """Store drafts packed back to back (a send request's body) and return once they
        are acknowledged under the flush mode.

        With ``flush = "async"`` it returns at once; ``yield_after=False`` then skips the
        schedule point after the append, for a caller that makes its own (the send
        handler wakes parked pulls first, then yields).

        Raises:
            MessageIllegal, DiskFull: from the store (nothing written).
            FlushTimeout: sync flush did not finish in time (the batch *is* stored).
            StoreClosed: the service is not running.
        """
        if not self._running:
            raise StoreClosed("the store service is not running")
        await self._prepare_queue(topic, queue_id)
        return await self._acknowledge(self.store.put_packed(topic, queue_id, records),
                                       yield_after=yield_after)

    def put_packed_now(self, topic: str, queue_id: int, records: Buffer) -> PutResult | None:
        """``put_packed`` without waiting, for a caller that answers on the spot (the send
        handler on a connection's reader task): the records are stored, or None, nothing
        stored, when the put has to wait for the queue's segment (use ``put_packed``).
        With ``flush = "sync"`` the flush is asked for at once; await ``acknowledged``.

        Raises:
            MessageIllegal, DiskFull: from the store (nothing written).
            StoreClosed: the service is not running.
        """
        if not self._running:
            raise StoreClosed("the store service is not running")
        if not self._queue_ready(topic, queue_id):
            return None
        result = self.store.put_packed(topic, queue_id, records)
        if self._preparation_wanted():
            self._prepare_wanted.set()
        if self.config.flush == "sync":
            self._flush_wanted.set()
        return result

    async def acknowledged(self, result: PutResult) -> None:
        """Return once a ``put_packed_now`` is acknowledged under the flush mode (with
        ``flush = "sync"``, on disk). Raises FlushTimeout, StoreClosed."""
        if self.config.flush == "sync":
            await self.wait_flushed(result.end_offset)

    def _queue_ready(self, topic: str, queue_id: int) -> bool:
        """Whether a put to the queue may go now: its segment is made and no put to it
        waits for one (see ``_prepare_queue``). Asks for its next segment in the background
        once the last is half full."""
        key = (topic, queue_id)
        if key in self._queue_locks:
            return False
        wanted = self.store.queue_segment_wanted(topic, queue_id)
        if wanted is None:
            return True
        if not wanted:
            if key not in self._queues_to_prepare:
                self._queues_to_prepare[key] = None
                self._prepare_wanted.set()
            return True
        return False

    async def _prepare_queue(self, topic: str, queue_id: int) -> None:
        """Have the queue's segments made ahead of the put, in a worker thread: its first
        one now (the put waits), its next one in the background once the last is half
        full (the put goes on). While a queue's segment is being made, every later put to
        it waits too, in arrival order, so puts to one queue stay in order."""
        if self._queue_ready(topic, queue_id):
            return
        key = (topic, queue_id)
        lock = self._queue_locks.get(key)
        if lock is None:
            lock = self._queue_locks[key] = trio.Lock()
        try:
            async with lock:
                if self.store.queue_segment_wanted(topic, queue_id):
                    await trio.to_thread.run_sync(self.store.prepare_queue_segment, topic,
                                                  queue_id)
        finally:
            # A lock released to a waiter stays locked: it goes once nobody holds or wants it
            if not lock.locked() and self._queue_locks.get(key) is lock:
                del self._queue_locks[key]

    async def _acknowledge(self, result: PutResult, *, yield_after: bool = True) -> PutResult:
        if self._preparation_wanted():
            self._prepare_wanted.set()
        if self.config.flush == "sync":
            await self.wait_flushed(result.end_offset)
        elif yield_after:
            await trio.lowlevel.checkpoint()  # a burst of puts must not starve the flusher
        return result

    def _preparation_wanted(self) -> bool:
        return self._next_segment_wanted() or self._populate_wanted()

    def _populate_wanted(self) -> bool:
        """Whether to populate pages ahead of the writer now (``SegmentQueue.
        populate_ahead``): it keeps ``POPULATE_AHEAD_BYTES`` ahead of the writer, as far
        as segments are made, and starts again once half of that is written.

        Populating a whole segment at once, when it was prepared, cost up to ~2 s of CPU
        per GiB on a cold VM in one burst, under whatever traffic ran then: W5 (100-byte
        messages, client-bound) fell from 287k to 241k msg/s while it ran, even with the
        populate at idle priority. Following the writer, the populate costs what is
        written, when it is written."""
        return self.config.preallocate_next_segment and \
            self.store.populate_wanted(POPULATE_AHEAD_BYTES)

    def _next_segment_wanted(self) -> bool:
        """Whether to make the next segment now: once the active one is half full.

        Making it is a fallocate and a map (with zero-fill, also writing a gigabyte of
        zeros: seconds); its pages are populated later, ahead of the writer
        (``_populate_wanted``). At half full there is still half a segment of time left
        for it. A roll that finds no prepared segment creates one itself (pages fault in
        as they are written), so it never stalls the loop either way.
        """
        log = self.store.log
        segments = log.segments
        if not self.config.preallocate_next_segment or segments.empty or \
                segments.next_prepared:
            return False
        return log.write_offset - segments.last.start >= log.segment_size // 2

    async def wait_flushed(self, offset: int) -> None:
        """Wait until the commit log is fsync'd up to ``offset``.

        Every waiter parks on one shared event that the flusher sets after each fsync (and
        the timeout ticker at least every 50 ms), so a waiter costs no timer of its own:
        the group-commit path stays cheap with hundreds of concurrent writers.
        """
        log = self.store.log
        if log.flushed_offset >= offset:
            return
        deadline = trio.current_time() + self.config.sync_flush_timeout_ms / 1000
        self._flush_waiters += 1
        try:
            while log.flushed_offset < offset:
                if not self._running:
                    raise StoreClosed("the store closed before the batch was flushed")
                if trio.current_time() >= deadline:
                    raise FlushTimeout(f"fsync did not reach offset {offset} within "
                                       f"{self.config.sync_flush_timeout_ms} ms")
                self._flush_wanted.set()
                await self._flush_done.wait()
        finally:
            self._flush_waiters -= 1

    def when_flushed(self, offset: int, callback: Callable[[], None]) -> FlushListener:
        """Call ``callback()`` once the commit log is fsync'd up to ``offset``: on the
        event loop, from no task, as the flush is published (before the tasks waiting in
        ``wait_flushed`` are even scheduled). Never when the service stops first, or after
        ``cancel()``. It must not block or raise (an exception is logged); timeouts and
        failures are still for ``wait_flushed`` to report."""
        listener = FlushListener(offset, callback)
        heapq.heappush(self._flush_listeners, (offset, next(self._listener_order), listener))
        return listener

    def _publish_flush(self) -> None:
        flushed = self.store.log.flushed_offset
        listeners = self._flush_listeners
        while listeners and listeners[0][0] <= flushed:
            listener = heapq.heappop(listeners)[2]
            if listener.cancelled:
                continue
            try:
                listener.callback()
            except Exception:
                logger.exception("flush_listener_failed")
        done, self._flush_done = self._flush_done, trio.Event()
        done.set()

    async def _flush_loop(self) -> None:
        """Flush the commit log every ``flush_interval_ms``, or at once when a writer waits;
        then keep flushing back to back while writers wait on what was appended meanwhile
        (see ``flush_chain``)."""
        interval_s = self.config.flush_interval_ms / 1000
        log = self.store.log
        chain = FlushChain(self.store, on_flushed=self._publish_flush,
                           wants_more=self._more_to_flush)
        while True:
            if not self._flush_waiters:
                with trio.move_on_after(interval_s):
                    await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            # Group commit: let every writer already runnable append before this fsync
            # starts, so one fsync covers all of them rather than the first few.
            await trio.lowlevel.checkpoint()
            if log.flushed_offset >= log.write_offset:
                if self._flush_waiters:
                    await self._flush_wanted.wait()
                continue
            self.flushes += await chain.run(self.store.plan_flush(with_indexes=False))

    async def _checkpoint_loop(self) -> None:
        """Every ``checkpoint_interval_ms``: fsync the commit log, the consume queues and
        the index, then write the checkpoint, in a worker thread of its own.

        This runs beside the commit-log flushes, not in their line (as RocketMQ's consume
        queues have a flush service of their own): made one of them, it took 1.5-9 ms
        once a second, and every sync writer that arrived meanwhile waited for all of it
        (W3 flush=sync: the slowest 1% of messages, in clusters a second apart). A sync
        acknowledgement needs only the commit log on disk; recovery rebuilds queue and
        index entries past the checkpoint from it. Nothing appended since the last
        checkpoint: none is written (it would say the same).
        """
        interval_s = self.config.checkpoint_interval_ms / 1000
        checkpointed: int | None = None
        while True:
            await trio.sleep(interval_s)
            if self.store.log.write_offset == checkpointed:
                continue
            plan = self.store.plan_flush(with_indexes=True)
            await trio.to_thread.run_sync(plan.execute)  # waits for it when cancelled
            self.store.complete_flush(plan)
            checkpointed = plan.target_offset
            self.checkpoints += 1
            self._publish_flush()

    def _more_to_flush(self) -> bool:
        """Whether a flush just published should be followed at once by another: writers
        wait on bytes appended since it was planned."""
        log = self.store.log
        return self._running and (self._flush_waiters > 0 or bool(self._flush_listeners)) \
            and log.flushed_offset < log.write_offset

    async def _timeout_ticker(self) -> None:
        """Wake flush waiters now and then, so they notice their deadline even while an
        fsync hangs (a failing disk)."""
        while True:
            await trio.sleep(0.05)
            if self._flush_waiters:
                self._publish_flush()

    async def _prepare_loop(self) -> None:
        while True:
            await self._prepare_wanted.wait()
            self._prepare_wanted = trio.Event()
            if self._next_segment_wanted():
                await trio.to_thread.run_sync(self.store.prepare_next_segment)
                if not self.store.log.segments.next_prepared:
                    await trio.sleep(1.0)  # no room (disk full): try again later, not per put
            if self._populate_wanted():
                # Abandoned when cancelled: at idle priority on busy cores it could hold a
                # shutdown up; the store's close stops it after its current chunk.
                await trio.to_thread.run_sync(self.store.populate_ahead, POPULATE_AHEAD_BYTES,
                                              abandon_on_cancel=True)
            while self._queues_to_prepare:
                topic, queue_id = next(iter(self._queues_to_prepare))
                try:
                    await trio.to_thread.run_sync(self.store.prepare_queue_segment, topic,
                                                  queue_id)
                except TideError as error:  # the put that needs it makes it, or reports
                    logger.error("preparing a consume-queue segment failed",
                                 extra={"topic": topic, "queue_id": queue_id,
                                        "error": str(error)})
                del self._queues_to_prepare[(topic, queue_id)]

    async def _retention_loop(self) -> None:
        while True:
            await trio.sleep(self.config.retention_check_interval_ms / 1000)
            try:
                report = self.store.apply_retention()
            except (TideError, OSError) as error:  # e.g. statvfs failed: try again later
                logger.error("retention failed", extra={"error": str(error)})
                continue
            if report.commit_log_segments_deleted:
                logger.info("retention", extra={"deleted": report.commit_log_segments_deleted,
                                                "reasons": report.reasons})

    @staticmethod
    def _log_recovery(report: RecoveryReport) -> None:
        if report.dropped or report.checkpoint_problem or report.consume_queue_problems:
            logger.warning("store recovered with damage", extra={
                "dropped": [(d.offset, d.bytes, d.records, d.action) for d in report.dropped],
                "checkpoint_problem": report.checkpoint_problem,
                "consume_queue_problems": report.consume_queue_problems,
            })
