"""Plain result types of the store facade."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class GetStatus(enum.Enum):
    FOUND = "found"
    NO_NEW_MESSAGE = "no_new_message"  # offset == max: wait (long polling) and ask again
    NO_MATCHED_MESSAGE = "no_matched_message"  # entries existed but the filter took none
    OFFSET_TOO_SMALL = "offset_too_small"  # below the queue's minimum (deleted)
    OFFSET_OVERFLOW = "offset_overflow"  # past the queue's maximum


@dataclass(frozen=True, slots=True)
class PutResult:
    """Where a batch was stored. ``commit_offsets[i]`` is record i's commit-log offset."""

    topic: str
    queue_id: int
    first_queue_offset: int
    commit_offsets: list[int]
    end_offset: int  # commit-log offset after the batch: acknowledged once flushed past it
    store_timestamp_ms: int

    @property
    def count(self) -> int:
        return len(self.commit_offsets)


@dataclass(frozen=True, slots=True)
class GetResult:
    """Records of one queue: ``data`` is ``count`` raw records back to back."""

    status: GetStatus
    data: bytes
    count: int
    next_offset: int
    min_offset: int
    max_offset: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    commit_log_min_offset: int
    commit_log_write_offset: int
    commit_log_flushed_offset: int
    commit_log_segments: int
    queues: int
    index_files: int
    records_appended: int
    bytes_appended: int
    batches_appended: int
    segments_deleted: int
    disk_full_errors: int


@dataclass(slots=True)
class RetentionReport:
    commit_log_segments_deleted: int = 0
    consume_queue_segments_deleted: int = 0
    index_files_deleted: int = 0
    reasons: list[str] = field(default_factory=list)
