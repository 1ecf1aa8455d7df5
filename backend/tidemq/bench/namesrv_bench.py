"""``tidemq bench namesrv``: route lookups (GET_ROUTE) per second on one name server.

    tidemq bench namesrv [--duration S] [--processes P] [--connections N] [--requesters M]

The name server runs in its own process (``python -m tidemq namesrv``, port 0, its address
read from its ``started`` line); the clients run in processes of their own. This process
registers ``--brokers`` fake broker groups (REGISTER_BROKER, each reporting the same
``--topics`` topics, so every route names every group). Then ``--processes`` client
processes open ``--connections`` connections each; each connection carries
``--requesters`` concurrent requesters asking for a random topic's route in a loop for
``--duration`` seconds, after a one-second warm-up that is not counted.

Reported: lookups per second, the latency percentiles of one lookup as the requesters saw
it, and the name server's CPU time per lookup (from ``/proc``): on a shared machine the
rate depends on the neighbours, the CPU cost much less.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import trio

from tidemq.net import ClientConnection, connect, split_address
from tidemq.protocol.codes import RequestCode

TARGET_PER_S: Final = 20_000
WARM_UP_S: Final = 1.0
CLIENT_START_S: Final = 3.0
"""Time given to the client processes to start (spawned interpreters import tidemq)."""
START_TIMEOUT_S: Final = 30.0


@contextmanager
def namesrv_process(extra: tuple[str, ...] = ()) -> Iterator[tuple[str, int]]:
    """A name server in its own process on a free port; yields its address and pid."""
    command = [sys.executable, "-m", "tidemq", "--log-level", "WARNING", "namesrv",
               "--set", "namesrv.port=0", *extra]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"the name server exited ({process.wait()}) before serving")
            started = json.loads(line)
            yield str(started["namesrv"]), process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def registration(index: int, topics: list[str]) -> dict[str, Any]:
    return {"cluster": "bench", "group": f"group-{index}",
            "address": f"127.0.0.1:{20_000 + index}", "role": "leader", "epoch": 1,
            "topics": {name: {"read_queue_count": 8, "write_queue_count": 8,
                              "permission": 6} for name in topics}}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; nan elsewhere)."""
    if pid is None:
        return math.nan
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def lookups(address: str, pid: int | None, *, brokers: int, topic_count: int,
                  connections: int, requesters: int, processes: int, duration_s: float,
                  seed: int) -> dict[str, Any]:
    """Register the fake brokers (their connection stays open: closing it would evict
    them), then run ``processes`` client processes over one common time window."""
    host, port = split_address(address)
    topics = [f"bench-topic-{index:03d}" for index in range(topic_count)]
    async with await connect(host, port, client_id="bench-registrar") as registrar:
        for index in range(brokers):
            await registrar.call(RequestCode.REGISTER_BROKER,
                                 {"registration": registration(index, topics)})
        measure_from = time.monotonic() + CLIENT_START_S + WARM_UP_S
        measure_until = measure_from + duration_s
        jobs = [(address, topics, connections, requesters, measure_from, measure_until,
                 seed + 1000 * n) for n in range(processes)]
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            pending = pool.starmap_async(_client_process, jobs)
            await trio.sleep_until(trio.current_time() + measure_from - time.monotonic())
            cpu_from = cpu_seconds(pid)
            await trio.sleep_until(trio.current_time() + measure_until - time.monotonic())
            server_cpu_s = cpu_seconds(pid) - cpu_from
            results = await trio.to_thread.run_sync(pending.get)
    counted = sum(count for count, _ in results)
    latencies = sorted(latency for _, sample in results for latency in sample)
    return {"workload": "namesrv-get-route", "lookups": counted,
            "seconds": round(duration_s, 3), "lookups_per_s": round(counted / duration_s),
            "target_per_s": TARGET_PER_S,
            "server_cpu_us_per_lookup": round(server_cpu_s / max(counted, 1) * 1e6, 1),
            "server_cpu_share": round(server_cpu_s / duration_s, 2),
            "latency_ms": {name: round(_percentile(latencies, q) * 1000, 3)
                           for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))},
            "brokers": brokers, "topics": topic_count, "client_processes": processes,
            "connections_per_process": connections,
            "requesters_per_connection": requesters}


def _client_process(address: str, topics: list[str], connections: int, requesters: int,
                    measure_from: float, measure_until: float, seed: int
                    ) -> tuple[int, list[float]]:
    return trio.run(_requesters, address, topics, connections, requesters, measure_from,
                    measure_until, seed)


async def _requesters(address: str, topics: list[str], connections: int, requesters: int,
                      measure_from: float, measure_until: float, seed: int
                      ) -> tuple[int, list[float]]:
    """Lookups in a loop until ``measure_until`` (``time.monotonic``, the same clock in
    every process); those started from ``measure_from`` on are counted."""
    host, port = split_address(address)
    latencies: list[float] = []

    async def requester(connection: ClientConnection, rng: random.Random) -> None:
        clock = time.monotonic
        while (start := clock()) < measure_until:
            await connection.call(RequestCode.GET_ROUTE, {"topic": rng.choice(topics)})
            if start >= measure_from:
                latencies.append(clock() - start)

    async with trio.open_nursery() as nursery:
        opened = [await connect(host, port, client_id=f"bench-{seed}-{n}")
                  for n in range(connections)]
        for connection in opened:
            await nursery.start(_keep_open, connection)
        async with trio.open_nursery() as workers:
            for n in range(connections * requesters):
                workers.start_soon(requester, opened[n % connections],
                                   random.Random(seed + n))
        nursery.cancel_scope.cancel()
    return len(latencies), latencies[::max(1, len(latencies) // 20_000)]


async def _keep_open(connection: ClientConnection, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with connection:
        task_status.started()
        await trio.sleep_forever()


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namesrv", help="use this running name server (host:port)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--processes", type=int, default=1,
                        help="client processes (each with its own connections)")
    parser.add_argument("--connections", type=int, default=2, help="per client process")
    parser.add_argument("--requesters", type=int, default=16,
                        help="concurrent requesters per connection")
    parser.add_argument("--brokers", type=int, default=4, help="fake broker groups")
    parser.add_argument("--topics", type=int, default=100, help="topics per broker")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    parser.add_argument("--quick", action="store_true", help="3 measured seconds")


def run_from_args(args: argparse.Namespace) -> int:
    if args.quick:
        args.duration = min(args.duration, 3.0)

    def measure(address: str, pid: int | None) -> dict[str, Any]:
        result: dict[str, Any] = trio.run(lambda: lookups(
            address, pid, brokers=args.brokers, topic_count=args.topics,
            connections=args.connections, processes=args.processes, requesters=args.requesters,
            duration_s=args.duration, seed=args.seed))
        return result

    if args.namesrv:
        result = measure(args.namesrv, None)
    else:
        with namesrv_process() as (address, pid):
            result = measure(address, pid)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)
    return 0
