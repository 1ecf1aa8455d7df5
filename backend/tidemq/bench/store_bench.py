"""The storage-engine benchmark: ``tidemq bench store [--quick]``.

Workloads, each in a fresh data directory removed afterwards, with 1 KiB records (the whole
record, header included, is 1024 bytes) spread round-robin over the queues of one topic:

* append, batches of 1 / 100 / 1000, ``flush = "async"``: one writer task loops
  ``StoreService.put_batch`` (commit log, consume queue and index dispatch) and yields to
  Trio after each call, as a connection handler would between requests, so the flusher and
  the segment preparer run during the measurement.
* append keyed: the same with a ``KEYS`` property on every record (the key index works).
* sync flush: ``flush = "sync"``, 64 writer tasks each sending 1-record batches; a batch is
  acknowledged after the group-commit fsync that covers it.
* read-back: after the batch-1000 append, ``get_messages`` over every queue from offset 0,
  1000 records per call; once right after the append (the flusher and the segment preparer
  may still be catching up) and once with the store at rest (log fsync'd, next segment
  prepared).
* baselines in the same run: plain ``os.write`` of the same record, the disk's sequential
  write (fio or dd), and fsync / fdatasync latencies.

Timing is wall time from the first timed ``put_batch`` to the last acknowledgement. Before
the clock starts the service is open, its first segment prepared, and each queue holds one
record (its consume-queue file and the index file exist). Store open and close (the final
flush) are outside the timing. Every workload repeats ``repetitions`` times, interleaved
(round-robin over workloads) so slow phases of a noisy machine spread over all of them.
A repetition that fails (a store error) is reported and left out; the run goes on.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import trio

from tidemq.bench import baselines
from tidemq.bench.report import (
    Figure,
    References,
    figure_json,
    machine_description,
    mount_of,
    render_table,
    table_rows,
    write_json,
)
from tidemq.broker.store_service import StoreService
from tidemq.common.units import KIB, MIB
from tidemq.config import FlushMode, StoreConfig
from tidemq.errors import FlushTimeout
from tidemq.protocol.record import PROPERTY_KEYS, encode_draft
from tidemq.store import GetStatus, MessageStore

TOPIC: Final = "BenchTopic"
RECORD_BYTES: Final = KIB
QUEUES: Final = 8
SYNC_WRITERS: Final = 64
READ_BATCH: Final = 1000
KEYED_POOL: Final = 8192  # distinct keyed drafts cycled through (8 MiB of drafts)
APPEND_TARGET_PER_S: Final = 300_000.0
SYNC_TARGET_PER_S: Final = 50_000.0
READ_TARGET_PER_S: Final = 500_000.0
SETTLE_TIMEOUT_S: Final = 300.0
MEMORY_FILESYSTEMS: Final = frozenset({"tmpfs", "ramfs", "devtmpfs"})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Scale:
    """How much each workload does; ``--quick`` is the same figures on fewer records."""

    name: str
    repetitions: int
    warmup_records: int
    batches: tuple[tuple[int, int], ...]  # (batch size, records) of the async appends
    keyed_batch: int
    keyed_records: int
    sync_records: int
    os_write_records: int
    disk_mib: int
    sync_repeats: int


FULL: Final = Scale("full", repetitions=5, warmup_records=300_000,
                    batches=((1, 200_000), (100, 1_000_000), (1000, 1_200_000)),
                    keyed_batch=1000, keyed_records=600_000, sync_records=96_000,
                    os_write_records=1_000_000, disk_mib=2048, sync_repeats=50)
QUICK: Final = Scale("quick", repetitions=1, warmup_records=100_000,
                     batches=((1, 40_000), (100, 200_000), (1000, 400_000)),
                     keyed_batch=1000, keyed_records=100_000, sync_records=25_600,
                     os_write_records=300_000, disk_mib=1024, sync_repeats=20)


# -- records ------------------------------------------------------------------------------
def make_draft(size: int, properties: dict[str, str] | None = None) -> bytes:
    """A draft record of exactly ``size`` bytes (header, topic, properties and body)."""
    overhead = len(encode_draft(TOPIC, b"", properties))
    if overhead > size:
        raise ValueError(f"a {size}-byte record cannot hold its {overhead}-byte header")
    pattern = b"tidemq store bench "
    body = (pattern * (size // len(pattern) + 1))[:size - overhead]
    draft = encode_draft(TOPIC, body, properties)
    assert len(draft) == size
    return draft


def batch_lists(batch: int, *, keyed: bool) -> list[list[bytes]]:
    """The batches a writer cycles through. Keyed drafts carry distinct fixed-width keys."""
    if not keyed:
        return [[make_draft(RECORD_BYTES)] * batch]
    pool_size = batch * max(1, KEYED_POOL // batch)
    pool = [make_draft(RECORD_BYTES, {PROPERTY_KEYS: f"key-{number:08d}"})
            for number in range(pool_size)]
    return [pool[start:start + batch] for start in range(0, pool_size, batch)]


def store_config(data_dir: str, flush: FlushMode) -> StoreConfig:
    """Production defaults (1 GiB segments, 500 ms flush interval), our data dir and flush."""
    return StoreConfig(data_dir=data_dir, flush=flush)


# -- the store under Trio ----------------------------------------------------------------
async def _session(config: StoreConfig, body: Callable[[StoreService], Awaitable[T]]) -> T:
    """Open a StoreService, bring it to steady state, run ``body``, close the store."""
    service = StoreService(MessageStore(config))
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        # Wait for the first segment's preparation (the preparer starts with the service),
        # then create each queue's consume-queue file and the index file.
        await trio.to_thread.run_sync(service.store.prepare_next_segment)
        primer = [make_draft(RECORD_BYTES)]
        for queue_id in range(QUEUES):
            await service.put_batch(TOPIC, queue_id, primer)
        result = await body(service)
        nursery.cancel_scope.cancel()  # StoreService.run closes the store (final flush)
    return result


async def _append(service: StoreService, batches: list[list[bytes]], records: int
                  ) -> tuple[float, float]:
    """One writer: ``records`` records in batches, round-robin over the queues.

    Returns:
        (seconds, the longest single put_batch + checkpoint: an event-loop stall shows here)
    """
    count = records // len(batches[0])
    put = service.put_batch
    checkpoint = trio.lowlevel.checkpoint
    clock = time.perf_counter
    longest = 0.0
    start = last = clock()
    for number in range(count):
        await put(TOPIC, number % QUEUES, batches[number % len(batches)])
        await checkpoint()  # a connection handler would await its socket here
        now = clock()
        if now - last > longest:
            longest = now - last
        last = now
    return last - start, longest


async def _sync_writers(service: StoreService, records: int) -> float:
    """``SYNC_WRITERS`` tasks, each sending 1-record batches, each acknowledged after fsync."""
    per_writer = records // SYNC_WRITERS
    batch = [make_draft(RECORD_BYTES)]

    async def writer(number: int) -> None:
        queue_id = number % QUEUES
        for _ in range(per_writer):
            await service.put_batch(TOPIC, queue_id, batch)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for number in range(SYNC_WRITERS):
            nursery.start_soon(writer, number)
    return time.perf_counter() - start


ReadBack = tuple[int, int, float]  # (records, bytes, seconds)


def read_back(store: MessageStore) -> ReadBack:
    """Read every queue from offset 0. Returns (records, bytes, seconds)."""
    records = 0
    size = 0
    start = time.perf_counter()
    for queue_id in range(QUEUES):
        offset = 0
        while True:
            result = store.get_messages(TOPIC, queue_id, offset, max_count=READ_BATCH,
                                        max_bytes=READ_BATCH * RECORD_BYTES * 2)
            if result.status is not GetStatus.FOUND:
                break
            records += result.count
            size += len(result.data)
            offset = result.next_offset
    return records, size, time.perf_counter() - start


async def _settle(service: StoreService) -> None:
    """Wait until the flusher has fsync'd everything and the next segment is prepared."""
    store = service.store
    target = store.log.write_offset
    with trio.fail_after(SETTLE_TIMEOUT_S):
        while True:
            try:
                await service.wait_flushed(target)
                break
            except FlushTimeout:  # a flush slower than sync_flush_timeout_ms: wait on
                continue
    # Returns at once if the preparer is done, else waits for (or does) the preparation.
    await trio.to_thread.run_sync(store.prepare_next_segment)


@dataclass(frozen=True, slots=True)
class AppendRun:
    seconds: float
    flushes: int
    longest_call_s: float = 0.0
    read_busy: ReadBack | None = None  # right after the append
    read_rest: ReadBack | None = None  # after _settle


def run_append(root: str, batch: int, records: int, *, keyed: bool = False,
               with_read_back: bool = False) -> AppendRun:
    """One repetition of an async-flush append workload (and optionally the read-backs)."""
    batches = batch_lists(batch, keyed=keyed)

    async def body(service: StoreService) -> AppendRun:
        seconds, longest = await _append(service, batches, records)
        flushes = service.flushes
        if not with_read_back:
            return AppendRun(seconds, flushes, longest)
        read_busy = read_back(service.store)
        await _settle(service)
        return AppendRun(seconds, flushes, longest, read_busy, read_back(service.store))

    with baselines.scratch_dir(root, f"append-{batch}") as data_dir:
        return trio.run(_session, store_config(data_dir, "async"), body)


def run_sync(root: str, records: int) -> AppendRun:
    """One repetition of the sync-flush (group commit) workload."""

    async def body(service: StoreService) -> AppendRun:
        flushes = service.flushes
        seconds = await _sync_writers(service, records)
        return AppendRun(seconds, service.flushes - flushes)

    with baselines.scratch_dir(root, "sync") as data_dir:
        return trio.run(_session, store_config(data_dir, "sync"), body)


# -- the run ------------------------------------------------------------------------------
class StoreBench:
    """Every figure of one run, filled repetition by repetition."""

    def __init__(self, scale: Scale, root: str, disk_tool: baselines.DiskTool) -> None:
        self.scale = scale
        self.root = root
        self.disk_tool = disk_tool
        self.figures: dict[str, Figure] = {}
        self.latencies_ms: dict[str, list[float]] = {}
        self.disk_command = ""
        self.group_sizes: list[float] = []
        self.failures: list[str] = []
        self.longest_calls_ms: dict[str, list[float]] = {}
        self._build_figures()

    def _build_figures(self) -> None:
        scale = self.scale
        for batch, records in scale.batches:
            self._add(Figure(f"append_batch_{batch}", f"append, batch {batch}, async flush",
                             records, RECORD_BYTES,
                             APPEND_TARGET_PER_S if batch > 1 else None))
        self._add(Figure("append_keyed", f"append keyed, batch {scale.keyed_batch}, async",
                         scale.keyed_records, RECORD_BYTES, APPEND_TARGET_PER_S))
        self._add(Figure("sync_group_commit", f"sync flush, {SYNC_WRITERS} writers x batch 1",
                         scale.sync_records // SYNC_WRITERS * SYNC_WRITERS, RECORD_BYTES,
                         SYNC_TARGET_PER_S))
        read_records = self._read_back_records() + QUEUES
        self._add(Figure("read_back_busy", "read-back, right after append", read_records,
                         RECORD_BYTES, READ_TARGET_PER_S))
        self._add(Figure("read_back_rest", "read-back, store at rest", read_records,
                         RECORD_BYTES, READ_TARGET_PER_S))
        self._add(Figure("os_write", "baseline: os.write 1 KiB", scale.os_write_records,
                         RECORD_BYTES))
        self._add(Figure("os_write_fsync", "baseline: os.write 1 KiB + 1 fsync",
                         scale.os_write_records, RECORD_BYTES))
        self._add(Figure("disk", "baseline: disk seq. write 1 MiB + fsync", scale.disk_mib,
                         MIB, per_record=False))

    def _add(self, figure: Figure) -> None:
        self.figures[figure.key] = figure

    def _read_back_records(self) -> int:
        """The read-back reads the store of the last (largest-batch) append workload."""
        return self.scale.batches[-1][1]

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        """One repetition of every workload, in the order they run."""
        steps: list[tuple[str, Callable[[], None]]] = [
            ("sync latencies", self.measure_latencies),
            ("os.write", self.measure_os_write),
            ("disk", self.measure_disk),
        ]
        for batch, records in self.scale.batches:
            steps.append((f"append batch {batch}",
                          functools.partial(self.measure_append, batch, records)))
        steps.append(("append keyed", self.measure_keyed))
        steps.append(("sync flush", self.measure_sync))
        return steps

    def measure_append(self, batch: int, records: int) -> None:
        with_read_back = (batch, records) == self.scale.batches[-1]
        run = run_append(self.root, batch, records, with_read_back=with_read_back)
        self._add_append(f"append_batch_{batch}", run)
        for key, read in (("read_back_busy", run.read_busy), ("read_back_rest", run.read_rest)):
            if read is not None:
                self._add_read_back(self.figures[key], read)

    @staticmethod
    def _add_read_back(figure: Figure, read: ReadBack) -> None:
        records, _, seconds = read
        if records != figure.items:
            raise RuntimeError(f"read back {records:,} records, expected {figure.items:,}")
        figure.seconds.append(seconds)

    def measure_keyed(self) -> None:
        run = run_append(self.root, self.scale.keyed_batch, self.scale.keyed_records,
                         keyed=True)
        self._add_append("append_keyed", run)

    def _add_append(self, key: str, run: AppendRun) -> None:
        self.figures[key].seconds.append(run.seconds)
        self.longest_calls_ms.setdefault(key, []).append(run.longest_call_s * 1000)

    def measure_sync(self) -> None:
        figure = self.figures["sync_group_commit"]
        run = run_sync(self.root, figure.items)
        figure.seconds.append(run.seconds)
        if run.flushes:
            self.group_sizes.append(figure.items / run.flushes)

    def measure_os_write(self) -> None:
        written, synced = baselines.os_write(self.root, make_draft(RECORD_BYTES),
                                             self.scale.os_write_records)
        self.figures["os_write"].seconds.append(written)
        self.figures["os_write_fsync"].seconds.append(synced)

    def measure_disk(self) -> None:
        tool = baselines.pick_disk_tool(self.disk_tool)
        run = baselines.disk_sequential_write(self.root, self.scale.disk_mib, tool)
        self.figures["disk"].seconds.append(run.seconds)
        self.disk_command = run.command

    def measure_latencies(self) -> None:
        repeats = self.scale.sync_repeats
        for key, block, datasync in (("fsync_1mib", MIB, False),
                                     ("fdatasync_64kib", 64 * KIB, True),
                                     ("fdatasync_1kib", KIB, True)):
            latencies = baselines.sync_latencies_ms(self.root, block, repeats,
                                                    datasync=datasync)
            self.latencies_ms.setdefault(key, []).extend(latencies)

    def warm_up(self) -> None:
        """Untimed: warms code paths and, on a VM, the guest memory the page cache uses."""
        run_append(self.root, 1000, self.scale.warmup_records)

    def references(self) -> References:
        os_write = self.figures["os_write"]
        disk = self.figures["disk"]
        return References(os_write.median_rate if os_write.measured else 0.0,
                          disk.median_mb_per_s if disk.measured else 0.0)


def run(bench: StoreBench, *, progress: Callable[[str], None]) -> None:
    """Warm up, then every workload ``repetitions`` times, round-robin. A failing step is
    recorded in ``bench.failures`` and the run goes on."""
    started = time.perf_counter()
    progress(f"warm-up: {bench.scale.warmup_records:,} records, untimed")
    _attempt(bench, "warm-up", bench.warm_up, progress)
    for repetition in range(1, bench.scale.repetitions + 1):
        for name, step in bench.steps():
            label = f"[{repetition}/{bench.scale.repetitions}] {name}"
            step_started = time.perf_counter()
            if _attempt(bench, label, step, progress):
                progress(f"{label}: {time.perf_counter() - step_started:.1f} s")
    progress(f"done in {time.perf_counter() - started:.0f} s")


def _attempt(bench: StoreBench, label: str, step: Callable[[], None],
             progress: Callable[[str], None]) -> bool:
    try:
        step()
    except Exception as error:  # a store bug must not lose the rest of the run
        message = f"{label}: FAILED: {_describe(error)}"
        bench.failures.append(message)
        progress(message)
        return False
    return True


def _describe(error: BaseException) -> str:
    """The leaf errors of a (possibly nested) exception group, one line."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"


# -- output -------------------------------------------------------------------------------
def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary_lines(bench: StoreBench) -> list[str]:
    """The lines after the table: latencies, the group-commit ceiling, ratios' meaning."""
    lines = []
    for key, label in (("fsync_1mib", "fsync after writing 1 MiB"),
                       ("fdatasync_64kib", "fdatasync after writing 64 KiB"),
                       ("fdatasync_1kib", "fdatasync after writing 1 KiB")):
        values = bench.latencies_ms.get(key)
        if values:
            lines.append(f"{label}: median {statistics.median(values):.2f} ms, "
                         f"p90 {_percentile(values, 0.9):.2f} ms ({len(values)} samples)")
    group_latency = bench.latencies_ms.get("fdatasync_64kib")
    if group_latency:
        ceiling = SYNC_WRITERS / (statistics.median(group_latency) / 1000)
        lines.append(f"group-commit ceiling from the disk alone: {SYNC_WRITERS} writers / "
                     f"fdatasync(64 KiB) = {ceiling:,.0f} records/s")
    if bench.longest_calls_ms:
        parts = [f"{key.removeprefix('append_').replace('_', ' ')} {max(values):,.0f} ms"
                 for key, values in bench.longest_calls_ms.items()]
        lines.append("longest single put_batch (event-loop stall), worst repetition: "
                     + ", ".join(parts))
    if bench.group_sizes:
        lines.append(f"sync flush: {statistics.median(bench.group_sizes):.1f} records "
                     f"per fsync (median over repetitions)")
    if bench.disk_command:
        lines.append(f"disk baseline: {bench.disk_command}")
    lines += bench.failures
    lines.append("records are 1024 bytes; MB = 10^6 bytes; 'x os.write' = records/s over "
                 "plain os.write's; 'x disk MB/s' = MB/s over the disk's sequential write; "
                 "PASS/MISS judge the median repetition")
    return lines


def json_document(bench: StoreBench) -> dict[str, Any]:
    references = bench.references()
    return {
        "benchmark": "store",
        "scale": bench.scale.name,
        "machine": machine_description(bench.root),
        "record_bytes": RECORD_BYTES, "queues": QUEUES, "sync_writers": SYNC_WRITERS,
        "store_config": {"segment_size_bytes": store_config("", "async").segment_size_bytes,
                         "flush_interval_ms": store_config("", "async").flush_interval_ms},
        "figures": [figure_json(figure) for figure in bench.figures.values()],
        "references": {"os_write_per_s": references.os_write_per_s,
                       "disk_mb_per_s": references.disk_mb_per_s},
        "latencies_ms": bench.latencies_ms,
        "sync_records_per_fsync": bench.group_sizes,
        "disk_command": bench.disk_command,
        "failures": bench.failures,
        "longest_put_batch_ms": bench.longest_calls_ms,
        "table": table_rows(list(bench.figures.values()), references),
    }


# -- entry points -------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer records, one repetition (under 30 s)")
    parser.add_argument("--dir", metavar="DIR", dest="root",
                        help="where data goes: a directory on the disk under test "
                             "(default: a temporary directory under the current one)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table as Markdown (for docs/benchmarks.md)")
    parser.add_argument("--disk-tool", choices=["auto", "fio", "dd"], default="auto",
                        help="disk baseline tool (default: fio if on PATH, else dd)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark as ``args`` (from ``add_arguments``) ask; print; return 0."""
    scale = QUICK if args.quick else FULL
    made_root = args.root is None
    root = tempfile.mkdtemp(prefix="tidemq-bench-", dir=os.getcwd()) if made_root \
        else args.root
    os.makedirs(root, exist_ok=True)
    try:
        bench = StoreBench(scale, root, args.disk_tool)
        _print_header(bench)
        run(bench, progress=lambda line: print(line, file=sys.stderr, flush=True))
        rows = table_rows(list(bench.figures.values()), bench.references())
        print(render_table(rows, markdown=args.markdown))
        print()
        print("\n".join(summary_lines(bench)))
        if args.json:
            write_json(args.json, json_document(bench))
    finally:
        if made_root:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _print_header(bench: StoreBench) -> None:
    mount_point, device, fs_type = mount_of(bench.root)
    defaults = store_config(bench.root, "async")
    print(f"tidemq store benchmark ({bench.scale.name}): {RECORD_BYTES}-byte records, "
          f"{QUEUES} queues of one topic, {bench.scale.repetitions} repetition(s); "
          f"segments {defaults.segment_size_bytes // MIB} MiB, flush interval "
          f"{defaults.flush_interval_ms} ms")
    print(f"data under {os.path.abspath(bench.root)} ({fs_type} on {device}, "
          f"mounted at {mount_point}); cpus {os.cpu_count()}")
    if fs_type in MEMORY_FILESYSTEMS:
        print(f"WARNING: {bench.root} is on {fs_type} (memory): these figures do not "
              f"measure a disk; pass --dir on the disk under test", file=sys.stderr)
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="store_bench",
                                     description="TideMQ storage-engine benchmark")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
