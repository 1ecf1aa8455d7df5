"""Retention: delete commit-log segments that are too old, or the oldest ones when the disk
is fuller than the configured ratio; consume-queue segments and index files that point only
below the log's new minimum follow.

A segment's age is the store time of the first record of the *next* segment (every record
of a segment is older than that), so the active segment is never deleted. Deletion waits
for readers: ``MappedFile.destroy`` unlinks when the last reference is released.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tidemq.protocol.record import RECORD_MAGIC, SIZE_MAGIC, STORE_TIMESTAMP, STORE_TIMESTAMP_OFFSET
from tidemq.store.results import RetentionReport

if TYPE_CHECKING:
    from tidemq.store.message_store import MessageStore


def apply_retention(store: MessageStore, now_ms: int,
                    disk_usage: Callable[[str], float]) -> RetentionReport:
    report = RetentionReport()
    log = store.log
    config = store.config
    segments = log.segments.segments
    expired = 0
    while expired < len(segments) - 1:
        following = segments[expired + 1]
        _size, magic = SIZE_MAGIC.unpack_from(following.map, 0)
        if magic != RECORD_MAGIC:
            break
        first_timestamp = STORE_TIMESTAMP.unpack_from(following.map,
                                                      STORE_TIMESTAMP_OFFSET)[0]
        if now_ms - first_timestamp <= config.retention_ms:
            break
        expired += 1
    if expired:
        report.reasons.append(f"{expired} segment(s) older than {config.retention_ms} ms")
        log.segments.drop_front(expired)
        report.commit_log_segments_deleted = expired
    # Past the disk-usage ratio, delete the oldest segments one by one (never the active one).
    while len(segments) > 1 and disk_usage(store.directory) > config.disk_usage_ratio_max:
        log.segments.drop_front(1)
        report.commit_log_segments_deleted += 1
        if len(report.reasons) < 2:
            report.reasons.append(f"disk usage above {config.disk_usage_ratio_max:.0%}")
    if not report.commit_log_segments_deleted:
        return report
    log_min = log.min_offset
    for queue in list(store.queues.queues.values()):
        report.consume_queue_segments_deleted += queue.delete_segments_below(log_min)
    report.index_files_deleted = store.index.delete_below(log_min)
    return report
