"""Child process of test_store_disk_full.py: RLIMIT_FSIZE as a full disk.

    python store_fsize_limit_child.py DATA_DIR

Appends with no limit, lowers the soft file-size limit below a segment (SIGXFSZ ignored, so
writes past it fail with EFBIG instead of killing the process), checks that appends needing
a new segment fail with DiskFull and change nothing, raises the limit again, checks that
appends resume, then reopens and verifies every acknowledged record. Prints one JSON
summary line; any failed check exits non-zero with a traceback.
"""

from __future__ import annotations

import json
import resource
import signal
import sys

from tidemq.common.clock import ManualClock
from tidemq.config import StoreConfig
from tidemq.errors import DiskFull
from tidemq.protocol.record import encode_draft, iter_records
from tidemq.store import MessageStore
from tidemq.testing.store_checks import check_store


def config_for(directory: str) -> StoreConfig:
    return StoreConfig(data_dir=directory, segment_size_bytes=64 * 1024,
                       max_message_size_bytes=16 * 1024, append_batch_bytes_max=32 * 1024,
                       consume_queue_segment_entries=64, index_slots=64,
                       index_entries_per_file=256)


def main(directory: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    acknowledged: list[bytes] = []
    store = MessageStore(config_for(directory), clock=ManualClock())
    store.open()

    def append(step: int) -> None:
        bodies = [f"{step}/{i}".encode().ljust(2_000, b"=") for i in range(4)]
        store.put_batch("T", step % 3, [encode_draft("T", b, {"KEYS": f"k{step}"})
                                        for b in bodies])
        acknowledged.extend(bodies)

    step = 0
    for step in range(40):  # about 5 segments
        append(step)
    segments_before = store.stats().commit_log_segments
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, hard))
    failures = 0
    for step in range(step + 1, step + 200):  # noqa: B020 (steps go on from the last one)
        write_offset = store.log.write_offset
        try:
            append(step)
        except DiskFull:
            assert store.log.write_offset == write_offset
            failures += 1
            if failures >= 3:
                break
    assert failures >= 3, "appends never hit the file-size limit"
    segments_while_limited = store.stats().commit_log_segments
    store.flush()  # the checkpoint is small: it still fits under the limit
    check_store(store)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))
    for step in range(step + 1, step + 60):  # noqa: B020
        append(step)
    segments_after = store.stats().commit_log_segments
    disk_full_errors = store.stats().disk_full_errors
    store.close()

    reopened = MessageStore(config_for(directory), clock=ManualClock())
    report = reopened.open()
    assert report.clean_shutdown, report
    assert not report.dropped, report
    check_store(reopened)
    served: list[bytes] = []
    for queue_id in range(3):
        got = reopened.get_messages("T", queue_id, 0, max_count=10_000, max_bytes=1 << 30)
        served.extend(r.body for r in iter_records(got.data))
    reopened.close()
    assert sorted(served) == sorted(acknowledged)
    print(json.dumps({
        "disk_full_errors": disk_full_errors,
        "segments_before_limit": segments_before,
        "segments_while_limited": segments_while_limited,
        "segments_after": segments_after,
        "records_acknowledged": len(acknowledged),
        "records_verified": len(served),
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
