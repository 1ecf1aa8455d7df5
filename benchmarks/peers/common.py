"""What every adapter shares: the workload parameters, percentiles, and server processes
(started on 127.0.0.1, optionally under strace, always stopped with bounded waits)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

STAMP_BYTES = 8  # a little-endian double (time.perf_counter) at the start of W3 bodies
STAMP_FORMAT = struct.Struct("<d")
SYNC_TRACE = "fsync,fdatasync,msync,sync_file_range,syncfs,sync"


@dataclass(slots=True)
class Params:
    """How much each workload does. Every throughput loop stops at ``messages`` or
    ``max_seconds``, whichever comes first."""

    messages: int = 200_000
    small_messages: int = 500_000  # W5 (100-byte bodies)
    max_seconds: float = 20.0
    in_flight: int = 1000
    batch: int = 100  # TideMQ send_batch size (in_flight / batch batches in flight)
    body_bytes: int = 1024
    small_body_bytes: int = 100
    topics: int = 16  # W6
    queues_per_topic: int = 8  # W6 (TideMQ queues; peers: one stream/queue per topic)
    producers: int = 16  # W6
    latency_rate: int = 1000  # W3 msg/s
    latency_seconds: float = 10.0  # per round
    latency_rounds: int = 3  # W3's figures: the median round's (see combine_latency_rounds)
    warmup: int = 2000

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


QUICK = Params(messages=10_000, small_messages=20_000, max_seconds=1.5, latency_seconds=2.0,
               latency_rounds=1, warmup=500)
TRACE = Params(messages=20_000, max_seconds=10.0, warmup=500)
QUICK_TRACE = Params(messages=20_000, max_seconds=3.0, warmup=200)


def percentiles(samples_ms: list[float]) -> dict[str, float | None]:
    """p50 / p99 / p99.9 (nearest rank below) of latency samples."""
    if not samples_ms:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    ordered = sorted(samples_ms)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999)}


def result(system: str, workload: str, messages: int, seconds: float, body_bytes: int,
           **extra: Any) -> dict[str, Any]:
    """One result line (the fields of tidemq.bench.peers_report.Result)."""
    known = {"p50_ms", "p99_ms", "p999_ms", "rate_per_s", "error"}
    line: dict[str, Any] = {"system": system, "workload": workload, "messages": messages,
                            "seconds": seconds, "body_bytes": body_bytes}
    line.update({key: value for key, value in extra.items() if key in known})
    line["extra"] = {key: value for key, value in extra.items() if key not in known}
    return line


# -- CPU use of the server processes and of this client, per workload -------------------

#: Pids of the server processes started by ``server_process`` and still running (the
#: suite hands them to the client process in ``SERVER_PIDS_ENV``).
started_pids: list[int] = []
SERVER_PIDS_ENV = "TIDEMQ_BENCH_SERVER_PIDS"
_TICKS = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            stack.extend(_children_of_task(current, int(task)))
    return found


def _children_of_task(pid: int, task: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as file:
            return [int(child) for child in file.read().split()]
    except OSError:
        return []


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime, all threads


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall, server CPU seconds, client CPU seconds) now."""
    pids = [int(p) for p in os.environ.get(SERVER_PIDS_ENV, "").split(",") if p]
    server = sum(_cpu_of(pid) for root in pids for pid in _tree(root))
    return time.perf_counter(), server, time.process_time()


def cpu_since(start: tuple[float, float, float]) -> dict[str, float]:
    """Busy share of one core since ``start``: servers' process trees, and this client."""
    wall, server, client = cpu_snapshot()
    elapsed = max(wall - start[0], 1e-9)
    return {"server_cpu": round((server - start[1]) / elapsed, 2),
            "client_cpu": round((client - start[2]) / elapsed, 2)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout_s: float) -> None:
    """Until 127.0.0.1:port accepts a connection; fails if the process ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s:.0f} s")


def traced(command: Sequence[str], trace_file: str | None) -> list[str]:
    """``command`` run under strace (sync calls only, timestamps, every thread) when
    ``trace_file`` is given. ``--seccomp-bpf`` stops the server only on those calls."""
    if trace_file is None:
        return list(command)
    return ["strace", "-f", "--seccomp-bpf", "-ttt", "-e", f"trace={SYNC_TRACE}",
            "-o", trace_file, "--", *command]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as file:
            return [int(child) for child in file.read().split()]
    except OSError:
        return []


@contextlib.contextmanager
def server_process(command: Sequence[str], *, log_path: str, trace_file: str | None = None,
                   env: dict[str, str] | None = None, stop_signal: int = signal.SIGTERM,
                   stop_timeout_s: float = 30.0, stdout: int | None = None,
                   ) -> Iterator[subprocess.Popen[Any]]:
    """Run a server; on exit stop it (``stop_signal``, then SIGKILL after the timeout).

    Under strace the signal goes to the traced server (strace's child), so strace sees it
    end and writes its log; strace itself is killed only if it outlives the server."""
    log = open(log_path, "ab")  # noqa: SIM115 (closed below, after the process)
    process = subprocess.Popen(traced(command, trace_file), stdout=stdout or log, stderr=log,
                               env=env, start_new_session=True)
    started_pids.append(process.pid)
    try:
        yield process
    finally:
        started_pids.remove(process.pid)
        target = process.pid
        if trace_file is not None:
            children = _children(process.pid)
            target = children[0] if children else process.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, stop_signal)
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            # Whatever the server left in its session (helpers, forks): gone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            log.close()


def mb(messages: int, body_bytes: int, seconds: float) -> float:
    return messages * body_bytes / 1e6 / seconds if seconds else math.nan


Workload = Callable[..., Awaitable[dict[str, Any]]]


def combine_latency_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One W3 result from several rounds: each percentile is the median of the rounds'
    (p99 of one 20 s run moved 10-20% between identical runs on this VM, enough to flip a
    verdict; the median of three rounds moves less). Samples and seconds add up; each
    round's percentiles stay in ``extra["rounds"]``. A round's error is the result's."""
    if len(rounds) == 1:
        return rounds[0]
    combined = dict(rounds[0])
    combined["messages"] = sum(r["messages"] for r in rounds)
    combined["seconds"] = sum(r["seconds"] for r in rounds)
    for key in ("p50_ms", "p99_ms", "p999_ms"):
        values = sorted(r[key] for r in rounds if r.get(key) is not None)
        combined[key] = values[(len(values) - 1) // 2] if values else None
    errors = [r["error"] for r in rounds if r.get("error")]
    if errors:
        combined["error"] = "; ".join(errors)
    combined["extra"] = {**rounds[0].get("extra", {}), "rounds": [
        {key: r.get(key) for key in ("messages", "p50_ms", "p99_ms", "p999_ms")}
        for r in rounds]}
    return combined


async def run_workloads(workloads: list[str], params: Params, emit: Callable[[Any], None], *,
                        latency: Callable[[str], Awaitable[dict[str, Any]]],
                        produce: Workload, consume: Workload,
                        batches: bool = False) -> None:
    """The workloads asked for, in the suite's order, through one adapter's functions.

    ``latency(name)``, ``produce(workload, name, body_bytes=, messages=, **extra)`` and
    ``consume(name, expected=)`` take the destination's short name (``w1``, ``w5``, ...),
    which each adapter turns into its stream, key, queue or topic. W3 runs first, on a
    fresh server: the throughput runs leave different amounts of dirty data behind, whose
    writeback would land in the latency samples. ``batches``: the system also runs the
    ``-batch`` rows (TideMQ's ``send_batch``).
    """
    if "W3" in workloads:  # rounds on destinations of their own: w3, w3r2, w3r3, ...
        emit(combine_latency_rounds([await latency("w3" if number == 1 else f"w3r{number}")
                                     for number in range(1, params.latency_rounds + 1)]))
    if "W1" in workloads or "W2" in workloads:
        w1 = await produce("W1", "w1", body_bytes=params.body_bytes, messages=params.messages)
        emit(w1)
        if "W2" in workloads:
            emit(await consume("w1", expected=w1["extra"]["stored"]))
    if batches and "W1-batch" in workloads:
        emit(await produce("W1-batch", "w1b", body_bytes=params.body_bytes,
                           messages=params.messages, batch=params.batch))
    if "W5" in workloads:
        emit(await produce("W5", "w5", body_bytes=params.small_body_bytes,
                           messages=params.small_messages))
    if batches and "W5-batch" in workloads:
        emit(await produce("W5-batch", "w5b", body_bytes=params.small_body_bytes,
                           messages=params.small_messages, batch=params.batch))
    if "W6" in workloads:
        emit(await produce("W6", "w6", body_bytes=params.body_bytes, messages=params.messages,
                           topics=params.topics, producers=params.producers))


async def publish_at_rate(total: int, rate_per_s: int, padding: bytes,
                          publish: Callable[[bytes], Awaitable[Any]]) -> float:
    """W3's sender: ``total`` bodies at ``rate_per_s``, each starting with the
    ``time.perf_counter()`` of its sending (a little-endian double), every publish in a task
    of its own so a slow ack never delays the next send. Returns when all are acked;
    the value is the start time (perf_counter)."""
    stamp = STAMP_FORMAT.pack
    tasks: set[asyncio.Task[Any]] = set()
    start = time.perf_counter()
    for sent in range(total):
        delay = start + sent / rate_per_s - time.perf_counter()
        if delay > 0.001:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(publish(stamp(time.perf_counter()) + padding))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return start
