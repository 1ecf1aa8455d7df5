"""A full disk: appends fail with the typed DiskFull and write nothing, nothing already
stored is damaged (across a reopen too), and appends resume once space returns.

Two ways to run out of space:

* a 2 MiB tmpfs mounted for the test (needs root; skipped, saying why, without it), filled
  first by the store, then to the last byte by a filler file, so even the checkpoint and
  a clean close cannot be written;
* RLIMIT_FSIZE in a child process (no root needed): new 64 KiB segments fail with EFBIG
  while the limit is low, and succeed once the soft limit is raised again.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemq.common.clock import ManualClock
from tidemq.config import StoreConfig
from tidemq.errors import DiskFull
from tidemq.protocol.record import encode_draft, iter_records
from tidemq.store import MessageStore
from tidemq.testing.store_checks import check_store

QUEUES = [("orders", 0), ("orders", 1), ("audit", 0)]
CHILD = Path(__file__).with_name("store_fsize_limit_child.py")


def config_for(directory: Path) -> StoreConfig:
    return StoreConfig(data_dir=str(directory), segment_size_bytes=64 * 1024,
                       max_message_size_bytes=16 * 1024, append_batch_bytes_max=32 * 1024,
                       consume_queue_segment_entries=64, index_slots=64,
                       index_entries_per_file=256)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                             str(mount_point)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if os.geteuid() != 0 or "permission denied" in result.stderr.lower() or \
                "not permitted" in result.stderr.lower():
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): "
                        f"{result.stderr.strip()}")
        pytest.fail(f"mount failed: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode:
            # Busy: a failed test left files mapped. Detach now; the kernel frees it later.
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


Model = dict[tuple[str, int], list[bytes]]


def append_round(store: MessageStore, model: Model, step: int) -> None:
    """One batch to one queue; on success it is acknowledged, so it joins the model."""
    topic, queue_id = QUEUES[step % len(QUEUES)]
    bodies = [f"{topic}/{queue_id}/{step}/{i}".encode().ljust(1_500, b"#") for i in range(3)]
    drafts = [encode_draft(topic, body, {"KEYS": f"k{step}"}) for body in bodies]
    result = store.put_batch(topic, queue_id, drafts)
    queue = model.setdefault((topic, queue_id), [])
    assert result.first_queue_offset == len(queue)
    queue.extend(bodies)


def assert_holds(store: MessageStore, model: Model) -> None:
    check_store(store)
    for (topic, queue_id), bodies in model.items():
        assert store.max_offset(topic, queue_id) == len(bodies)
        got = store.get_messages(topic, queue_id, 0, max_count=10_000, max_bytes=1 << 30)
        assert [r.body for r in iter_records(got.data)] == bodies


def fill_until_disk_full(store: MessageStore, model: Model, first_step: int) -> int:
    """Append until DiskFull; check it changed nothing. Returns the next step."""
    for step in range(first_step, first_step + 5_000):
        write_offset = store.log.write_offset
        maxima = {q: store.max_offset(*q) for q in QUEUES}
        try:
            append_round(store, model, step)
        except DiskFull:
            assert store.log.write_offset == write_offset
            assert {q: store.max_offset(*q) for q in QUEUES} == maxima
            assert_holds(store, model)
            return step + 1
    pytest.fail("the disk never filled up")


def fill_to_the_last_byte(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in (1 << 16, 4096, 1):
            for _ in range(10_000):
                try:
                    os.write(fd, b"\xff" * chunk)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def test_tmpfs_full_then_freed(small_tmpfs: Path) -> None:
    data = small_tmpfs / "data"
    reserve = small_tmpfs / "reserve"
    reserve.write_bytes(b"\0" * (512 * 1024))  # freed at the end to let appends resume
    model: Model = {}
    store = MessageStore(config_for(data), clock=ManualClock())
    store.open()
    step = fill_until_disk_full(store, model, 0)
    assert store.stats().disk_full_errors == 1

    # Now take the last byte: even the checkpoint cannot be written.
    fill_to_the_last_byte(small_tmpfs / "filler")
    with pytest.raises(DiskFull):
        store.flush()
    with pytest.raises(DiskFull):
        store.close()  # still releases every file; the lock file says "unclean"
    assert (data / "lock").exists()

    store = MessageStore(config_for(data), clock=ManualClock())
    report = store.open()  # a full disk does not keep a store from opening
    assert not report.clean_shutdown
    assert report.dropped == []
    assert report.consume_queue_problems == []
    assert_holds(store, model)
    step = fill_until_disk_full(store, model, step)

    (small_tmpfs / "filler").unlink()
    reserve.unlink()
    segments_before = store.stats().commit_log_segments
    for _ in range(60):  # appends resume, rolling new segments
        append_round(store, model, step)
        step += 1
    assert store.stats().commit_log_segments > segments_before
    assert_holds(store, model)
    store.close()

    store = MessageStore(config_for(data), clock=ManualClock())
    report = store.open()
    try:
        assert report.clean_shutdown
        assert report.dropped == []
        assert_holds(store, model)
    finally:
        store.close()


def test_file_size_limit_in_a_child_process(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(CHILD), str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["disk_full_errors"] >= 3
    assert summary["segments_while_limited"] == summary["segments_before_limit"]
    assert summary["segments_after"] > summary["segments_while_limited"]
    assert summary["records_verified"] == summary["records_acknowledged"] > 0
