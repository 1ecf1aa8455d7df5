"""atomic_write replaces a file whole or not at all; the checkpoint round-trips and any
damage to it is a reason string (recovery then scans everything), never an exception."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq.errors import StoreError
from tidemq.store import files as files_module
from tidemq.store.checkpoint import (
    Checkpoint,
    decode_checkpoint,
    encode_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from tidemq.store.files import atomic_write, read_file, zero_fill


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "meta"
    atomic_write(str(path), b"one")
    atomic_write(str(path), memoryview(b"two!"))
    assert path.read_bytes() == b"two!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta"]
    assert read_file(str(path)) == b"two!"
    assert read_file(str(tmp_path / "absent")) is None


def test_atomic_write_failure_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        atomic_write(str(tmp_path / "no-such-dir" / "meta"), b"x")
    target = tmp_path / "a-directory"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")
    with pytest.raises(StoreError):
        atomic_write(str(target), b"x")  # rename over a directory fails
    assert (target / "inside").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory"]


def test_atomic_write_past_the_file_size_limit_is_disk_full(tmp_path: Path) -> None:
    """EFBIG (RLIMIT_FSIZE) is DiskFull, the old content stays (in a child process: the
    limit must not touch the test runner)."""
    path = tmp_path / "meta"
    path.write_bytes(b"old")
    code = f"""
import resource, signal
from tidemq.errors import DiskFull
from tidemq.store.files import atomic_write
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
try:
    atomic_write({str(path)!r}, b"n" * 4096)
except DiskFull as error:
    print("DiskFull", error)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=False,
                            env={"PYTHONPATH": ":".join(sys.path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DiskFull"), result.stdout
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta"]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    checkpoint = Checkpoint(300, 200, 100, {"orders": {0: 5, 3: 7}, "%RETRY%g": {1: 1}})
    path = str(tmp_path / "checkpoint")
    assert read_checkpoint(path) is None
    write_checkpoint(path, checkpoint)
    assert read_checkpoint(path) == checkpoint
    assert checkpoint.recovery_start == 100


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 400), st.integers(1, 255))
def test_damaged_checkpoints_are_reasons(garbage: bytes, position: int, xor: int) -> None:
    assert isinstance(decode_checkpoint(garbage), str)
    valid = bytearray(encode_checkpoint(Checkpoint(1, 2, 3, {"t": {0: 1}})))
    if position < len(valid):
        valid[position] ^= xor
        assert isinstance(decode_checkpoint(bytes(valid)), str)
    assert isinstance(decode_checkpoint(bytes(valid[:position])), str | Checkpoint)


def test_segments_are_preallocated_not_sparse(tmp_path: Path) -> None:
    """posix_fallocate reserves real blocks for a new segment before any byte is written,
    so a full disk shows up when a segment is made, never in the middle of an append."""
    from tidemq.config import StoreConfig
    from tidemq.protocol.record import encode_draft
    from tidemq.store import MessageStore

    segment_size = 1 << 20
    store = MessageStore(StoreConfig(data_dir=str(tmp_path), segment_size_bytes=segment_size,
                                     max_message_size_bytes=64 << 10,
                                     append_batch_bytes_max=64 << 10,
                                     consume_queue_segment_entries=1024, index_slots=64,
                                     index_entries_per_file=256))
    store.open()
    try:
        store.put_batch("T", 0, [encode_draft("T", b"tiny")])
        segment = tmp_path / "commitlog" / f"{0:020d}"
        allocated_bytes = segment.stat().st_blocks * 512
        assert segment.stat().st_size == segment_size
        assert allocated_bytes >= segment_size  # every block reserved, not a sparse file
    finally:
        store.close()


def test_zero_fill_writes_zeros_in_small_writes(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write's pages become one page-cache folio, written back whole once dirtied
    through the mapping: zero-filling must not make folios larger than 64 KiB (see
    ``zero_fill``)."""
    sizes: list[int] = []
    real_pwrite = os.pwrite

    def recording_pwrite(fd: int, data: memoryview, offset: int) -> int:
        sizes.append(len(data))
        return real_pwrite(fd, data, offset)

    path = tmp_path / "segment"
    path.write_bytes(b"x" * 100)
    size = 1024 * 1024 + 4096
    monkeypatch.setattr(files_module.os, "pwrite", recording_pwrite)
    fd = os.open(path, os.O_RDWR)
    try:
        zero_fill(fd, size, str(path))
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(size)
    assert max(sizes) <= 64 * 1024
    assert sum(sizes) == size
