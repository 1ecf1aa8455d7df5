"""What the machine does without TideMQ: the physical limits a benchmark is compared with.

* ``os_write``: plain ``os.write`` of one record at a time to a file (page cache), then one
  fsync. The first time is the "plain os.write" baseline; the second is noted.
* ``disk_sequential_write``: the disk's sequential write in 1 MiB blocks with a final fsync,
  by ``fio`` when it is on PATH, else by ``dd``. dd is fed non-zero blocks through a pipe:
  ``dd if=/dev/zero`` measures how fast the storage swallows zeros, which virtual disks
  (this one included) do several times faster than real data.
* ``sync_latencies_ms``: write a block then fsync (or fdatasync), repeated.

Every file lives in a scratch directory under the benchmark's data root, removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

from tidemq.common.units import MIB

DiskTool = Literal["auto", "fio", "dd"]
_DD_SECONDS: Final = re.compile(r"copied, ([0-9.]+) s")


@contextlib.contextmanager
def scratch_dir(root: str, prefix: str) -> Iterator[str]:
    """A fresh directory under ``root``, deleted (with everything in it) on exit."""
    path = tempfile.mkdtemp(prefix=f"{prefix}-", dir=root)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def os_write(root: str, record: bytes, count: int) -> tuple[float, float]:
    """Write ``record`` ``count`` times with one ``os.write`` each, then fsync once.

    Returns:
        (seconds for the writes, seconds for the writes and the fsync).
    """
    with scratch_dir(root, "os-write") as directory:
        fd = os.open(os.path.join(directory, "records"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            write = os.write
            start = time.perf_counter()
            for _ in range(count):
                write(fd, record)
            written = time.perf_counter()
            os.fsync(fd)
            synced = time.perf_counter()
        finally:
            os.close(fd)
    return written - start, synced - start


@dataclass(frozen=True, slots=True)
class DiskRun:
    tool: str
    command: str
    bytes_written: int
    seconds: float


def pick_disk_tool(choice: DiskTool) -> Literal["fio", "dd"]:
    """fio when asked for or (``auto``) when on PATH, else dd."""
    if choice == "fio" and shutil.which("fio") is None:
        raise FileNotFoundError("fio is not on PATH (install it, or use --disk-tool dd)")
    if choice == "dd" or shutil.which("fio") is None:
        return "dd"
    return "fio"


def disk_sequential_write(root: str, size_mib: int, tool: Literal["fio", "dd"]) -> DiskRun:
    """Write ``size_mib`` MiB sequentially in 1 MiB blocks, then fsync; time it."""
    with scratch_dir(root, "disk") as directory:
        path = os.path.join(directory, "sequential")
        if tool == "fio":
            return _fio(path, size_mib)
        return _dd(path, size_mib)


def _fio(path: str, size_mib: int) -> DiskRun:
    command = ["fio", "--name=seq", "--rw=write", "--bs=1M", f"--size={size_mib}M",
               "--end_fsync=1", f"--filename={path}", "--output-format=json"]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    # fio may print notes before the JSON document.
    document = json.loads(completed.stdout[completed.stdout.index("{"):])
    write = document["jobs"][0]["write"]
    bytes_written = int(write["io_bytes"])
    seconds = bytes_written / float(write["bw_bytes"])
    return DiskRun("fio", " ".join(command), bytes_written, seconds)


def _dd(path: str, size_mib: int) -> DiskRun:
    command = ["dd", f"of={path}", "bs=1M", f"count={size_mib}", "iflag=fullblock",
               "conv=fsync"]
    block = bytearray(os.urandom(MIB))
    environment = {**os.environ, "LC_ALL": "C"}  # "copied, 1.5 s": a decimal point
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=environment) as process:
        assert process.stdin is not None
        assert process.stderr is not None
        for number in range(size_mib):
            block[:8] = number.to_bytes(8, "little")  # no two blocks alike (no dedup)
            process.stdin.write(block)
        process.stdin.close()
        report = process.stderr.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"dd failed ({process.returncode}): {report.strip()}")
    match = _DD_SECONDS.search(report)
    if match is None:
        raise RuntimeError(f"cannot read dd's report: {report.strip()!r}")
    return DiskRun("dd", " ".join(command) + " < non-zero 1 MiB blocks",
                   size_mib * MIB, float(match.group(1)))


def sync_latencies_ms(root: str, block_bytes: int, repeats: int, *,
                      datasync: bool) -> list[float]:
    """Latency of fsync (or fdatasync) after writing one more ``block_bytes`` block.

    The file is preallocated (posix_fallocate) like a store segment, so fdatasync has no
    size metadata to commit."""
    block = os.urandom(block_bytes)
    sync = os.fdatasync if datasync else os.fsync
    latencies: list[float] = []
    with scratch_dir(root, "sync") as directory:
        fd = os.open(os.path.join(directory, "blocks"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, block_bytes * repeats)
            for number in range(repeats):
                os.pwrite(fd, block, number * block_bytes)
                start = time.perf_counter()
                sync(fd)
                latencies.append((time.perf_counter() - start) * 1000)
        finally:
            os.close(fd)
    return latencies
