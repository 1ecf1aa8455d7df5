"""Opening a store: load every file, check the consume queues against the checkpoint, and
run the recovery scan (recovery.py) from the right place.

Where the scan starts:

* the checkpoint's smallest flushed offset, but never after the start of the last segment
  (the active segment is always re-validated, as RocketMQ re-checks its last files);
* the start of a segment found shorter than a segment (a truncated file);
* the log's first offset when the checkpoint is missing or garbage, or a consume queue is
  damaged (a missing or short file, a gap, fewer entries than the checkpoint recorded):
  damaged queues are deleted and rebuilt from the log by that full scan.

* never after the index's ``indexed_until`` (a deleted or damaged index file moves it
  back, and the scan indexes that range again).

Missing commit-log segment files are reported as ``Dropped(..., "missing")``: a gap in the
names, or flushed offsets (per the checkpoint) past the last file.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from tidemq.store.checkpoint import Checkpoint, read_checkpoint
from tidemq.store.consume_queue import ENTRY_SIZE
from tidemq.store.recovery import Dropped, RecoveryReport, scan_and_dispatch

if TYPE_CHECKING:
    from tidemq.store.message_store import MessageStore


def recover_store(store: MessageStore, *, unclean: bool) -> RecoveryReport:
    report = RecoveryReport(clean_shutdown=not unclean)
    log = store.log
    log.load()
    store.queues.load()
    store.index.load()
    for segment in log.segments.segments:
        if segment.short_by_bytes:
            report.segments_short.append(
                f"{segment.path}: {segment.short_by_bytes} bytes missing at its end")
    for gap_start, found_start in log.segments.gaps:
        report.dropped.append(Dropped(gap_start, found_start - gap_start, 0, "missing"))
    checkpoint = read_checkpoint(store.checkpoint_path)
    has_data = not log.segments.empty
    files_end = log.segments.last.end if has_data else 0
    report.index_problems.extend(store.index.problems)
    if has_data and not store.index.files:
        report.index_problems.append("index files missing: indexed again")
    elif isinstance(checkpoint, Checkpoint) and \
            store.index.indexed_until < min(checkpoint.index_flushed, files_end):
        report.index_problems.append(
            f"index ends at {store.index.indexed_until}, checkpoint recorded "
            f"{checkpoint.index_flushed} (files missing?): indexed again")
    if isinstance(checkpoint, Checkpoint) and checkpoint.commit_log_flushed > files_end:
        # Flushed records lie past every segment file: the last file(s) were lost.
        report.dropped.append(Dropped(files_end, checkpoint.commit_log_flushed - files_end,
                                      0, "missing"))
    if isinstance(checkpoint, str):
        report.checkpoint_problem = checkpoint
    elif checkpoint is None and has_data:
        report.checkpoint_problem = "checkpoint missing"
    damaged = _damaged_queues(store, checkpoint if isinstance(checkpoint, Checkpoint)
                              else None)
    for (topic, queue_id), reason in damaged.items():
        report.consume_queue_problems.append(f"{topic}/{queue_id}: {reason}; rebuilt")
        queue = store.queues.queues.pop((topic, queue_id))
        queue.close()
        shutil.rmtree(queue.directory, ignore_errors=True)
    log_min = log.min_offset
    if not has_data:
        start = 0
    elif isinstance(checkpoint, Checkpoint) and not damaged:
        start = min(checkpoint.recovery_start, log.segments.last.start)
        for segment in log.segments.segments:
            if segment.short_by_bytes:
                start = min(start, segment.start)
        # Records past the index's own mark are indexed by the scan: a lost or damaged
        # index file moves the mark back, and the scan with it.
        start = max(min(start, store.index.indexed_until), log_min)
    else:
        start = log_min
    report.scan_start = start
    end = scan_and_dispatch(log, store.dispatcher, start, report) if has_data else 0
    log.write_offset = end
    log.segments.drop_after(end)
    for queue in store.queues.queues.values():
        report.consume_queue_entries_removed += queue.truncate_from_commit_offset(end)
    store.index.truncate(end)
    store.dispatcher.finish_scan(end)
    log.flushed_offset = start
    return report


def _damaged_queues(store: MessageStore, checkpoint: Checkpoint | None
                    ) -> dict[tuple[str, int], str]:
    damaged: dict[tuple[str, int], str] = {}
    log_never_trimmed = store.log.segments.empty or store.log.min_offset == 0
    for key, queue in store.queues.queues.items():
        short = next((s for s in queue.segments.segments if s.short_by_bytes), None)
        if queue.segments.gaps:
            start, found = queue.segments.gaps[0]
            damaged[key] = f"segment {start // ENTRY_SIZE} missing (next found at entry " \
                           f"{found // ENTRY_SIZE})"
        elif short is not None:  # its missing tail would hide entries from readers
            damaged[key] = f"segment at entry {short.start // ENTRY_SIZE} short by " \
                           f"{short.short_by_bytes} bytes"
        elif log_never_trimmed and not queue.segments.empty and queue.segments.min_offset:
            damaged[key] = "first segment missing"
    if checkpoint is not None:
        for topic, table in checkpoint.queues.items():
            for queue_id, recorded in table.items():
                existing = store.queues.get(topic, queue_id)
                if (topic, queue_id) in damaged:
                    continue
                if existing is None or existing.segments.empty:
                    if recorded > 0:
                        damaged[(topic, queue_id)] = "consume queue files missing"
                        store.queues.get_or_create(topic, queue_id)
                elif existing.max_offset < recorded:
                    damaged[(topic, queue_id)] = (f"{existing.max_offset} entries, checkpoint "
                                                  f"recorded {recorded}")
    return damaged
