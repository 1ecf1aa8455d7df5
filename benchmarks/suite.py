"""TideMQ against its peers (issue 5): the workloads of DESIGN.md section 10 on TideMQ,
Redis Streams, RabbitMQ and NATS JetStream, in one run, on this machine.

    python benchmarks/suite.py [--quick] [--systems a,b] [--workloads W1,W3] [--no-trace]
    make bench [QUICK=1]

Workloads: W1 produce 1 KiB with acks, 1,000 in flight; W2 consume it back from the start
with acks; W3 end-to-end latency at a fixed rate; W4 the disk's sequential write (fio);
W5 = W1 with 100-byte bodies; W6 = W1 over 16 topics (TideMQ: 8 queues each) from 16
producers. TideMQ also runs W1 and W5 with ``send_batch`` (``-batch`` rows).

Each server is started here as a subprocess on 127.0.0.1 with its own data directory under
``--dir`` (removed afterwards) and durable settings; each system's client runs in another
process (``suite.py client ...``), so client and server have a core each. Before the
measured run, each server runs a short W1 under ``strace -f --seccomp-bpf`` to count its
sync calls (fsync, fdatasync, msync, sync_file_range) per 1,000 acknowledged messages
(``--quick``: during the measured W1 itself, and not for RabbitMQ, whose boot under strace
takes ~23 s). W3 runs first on each fresh server, in rounds (``Params.latency_rounds``;
each percentile is the median round's); the other workloads follow. The suite
also records the CPU time of the server's process tree and of the client process during
each throughput workload (which side is the limit).

Results: JSON and a PNG under docs/bench/, a section in docs/benchmarks.md (the quick
run's and the full run's sections are each replaced by the next run of the same kind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from typing import Any

from peers import common
from peers.common import Params
from tidemq.bench import baselines
from tidemq.bench.peers_report import (
    SYSTEMS,
    Result,
    Results,
    SyncCount,
    count_sync_calls,
    evaluate_targets,
    figures_table,
    markdown_table,
    ratios_table,
    system,
    targets_table,
)
from tidemq.bench.report import machine_description

# RabbitMQ boots in ~23 s under strace (~6 s without): quick runs leave it untraced.
QUICK_UNTRACED = {"rabbitmq-stream", "rabbitmq-quorum"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIDEMQ_WORKLOADS = ["W3", "W1", "W2", "W1-batch", "W5", "W5-batch", "W6"]
PEER_WORKLOADS = ["W3", "W1", "W2", "W5", "W6"]
# Systems sharing one server process (RabbitMQ: the queue type is per queue).
SERVER_GROUPS = [["tidemq-async"], ["tidemq-sync"], ["redis-everysec"], ["redis-always"],
                 ["rabbitmq-stream", "rabbitmq-quorum"], ["nats-jetstream"]]


def adapter(key: str) -> Any:
    family = system(key).family
    if family == "tidemq":
        from peers import tidemq as module
    elif family == "redis":
        from peers import redis_streams as module  # type: ignore[no-redef]
    elif family == "rabbitmq":
        from peers import rabbitmq as module  # type: ignore[no-redef]
    else:
        from peers import nats_jetstream as module  # type: ignore[no-redef]
    return module


# -- the client process ---------------------------------------------------------------

def client_main(args: argparse.Namespace) -> int:
    params = Params(**json.loads(args.params))
    workloads = args.workloads.split(",")
    module = adapter(args.system)

    def emit(line: dict[str, Any]) -> None:
        print(json.dumps(line), flush=True)

    # Every system's client alike: the start-up heap out of the collector's way, as
    # docs/client.md advises applications (full collections walking it cost 10-25 ms).
    gc.collect()
    gc.freeze()
    try:
        if system(args.system).family == "tidemq":
            import trio

            trio.run(module.run, args.system, args.address, workloads, params, emit)
        else:
            asyncio.run(module.run(args.system, args.address, workloads, params, emit))
    except BaseException as error:  # reported to the suite, which records an error row
        traceback.print_exc()
        emit({"system": args.system, "workload": "error", "messages": 0, "seconds": 0,
              "body_bytes": 0, "error": f"{type(error).__name__}: {error}"[:300]})
        return 1
    return 0


def run_client(key: str, address: str, workloads: list[str], params: Params, workdir: str,
               timeout_s: float) -> list[dict[str, Any]]:
    command = [sys.executable, os.path.abspath(__file__), "client", "--system", key,
               "--address", address, "--workloads", ",".join(workloads),
               "--params", json.dumps(params.to_json())]
    log_path = os.path.join(workdir, f"client-{key}.log")
    env = {**os.environ, common.SERVER_PIDS_ENV: ",".join(map(str, common.started_pids))}
    with open(log_path, "ab") as log:
        try:
            completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, env=env,
                                       timeout=timeout_s, check=False)
            output = completed.stdout.decode()
        except subprocess.TimeoutExpired as expired:
            output = (expired.stdout or b"").decode()
            output += json.dumps({"system": key, "workload": "error", "messages": 0,
                                  "seconds": 0, "body_bytes": 0,
                                  "error": f"client timed out after {timeout_s:.0f} s"})
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line["workload"] == "error"]
    if errors:
        with open(log_path, encoding="utf-8", errors="replace") as log_text:
            tail = log_text.read()[-1500:]
        print(f"  ! {key}: {errors[0]['error']}\n{tail}", file=sys.stderr)
    return lines


# -- the suite ------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def latency_rounds(params: dict[str, Any]) -> str:
    """How W3 was run, for the document (runs recorded before rounds had one of 20 s)."""
    rounds = params.get("latency_rounds", 1)
    seconds = f"{params['latency_seconds']:.0f} s"
    if rounds == 1:
        return f"one run of {seconds}"
    return f"{rounds} rounds of {seconds}, each percentile the median round's"


def client_timeout(params: Params, workloads: list[str]) -> float:
    """Generous but bounded: every loop of the client stops by itself well before."""
    return 60 + len(workloads) * (3 * params.max_seconds + 20) + \
        params.latency_rounds * (params.latency_seconds + 15)


def syncs_in_windows(trace_file: str, windows: dict[str, tuple[float, float, int]],
                     in_flight: int) -> dict[str, SyncCount]:
    """Sync calls in an strace log within each system's W1 window (start, end, acked)."""
    if not os.path.exists(trace_file):
        return {}
    with open(trace_file, encoding="utf-8", errors="replace") as trace:
        trace_lines = trace.readlines()
    counts: dict[str, SyncCount] = {}
    for key, (start, end, acked) in windows.items():
        by_call = count_sync_calls(trace_lines, start, end)
        counts[key] = SyncCount(key, sum(by_call.values()), acked, in_flight, by_call)
    return counts


def w1_window(line: dict[str, Any]) -> tuple[float, float, int] | None:
    if line["workload"] != "W1" or line.get("error"):
        return None
    start, end = line["extra"]["window"]
    return start, end, int(line["messages"])


def trace_sync_calls(group: list[str], params: Params, root: str) -> dict[str, SyncCount]:
    """A short W1 on a server running under strace; sync calls within each W1's window."""
    with tempfile.TemporaryDirectory(prefix="trace-", dir=root) as workdir:
        trace_file = os.path.join(workdir, "strace.log")
        windows: dict[str, tuple[float, float, int]] = {}
        with adapter(group[0]).server(group[0], workdir, trace_file) as address:
            for key in group:
                for line in run_client(key, address, ["W1"], params, workdir,
                                       client_timeout(params, ["W1"])):
                    if (window := w1_window(line)) is not None:
                        windows[key] = window
        return syncs_in_windows(trace_file, windows, params.in_flight)


def log_syncs(keys: list[str], syncs: dict[str, SyncCount]) -> None:
    for key in keys:
        if key in syncs:
            count = syncs[key]
            log(f"  {key}: {count.calls} sync calls / {count.acked:,} acks = "
                f"{count.per_thousand:.2f} per 1k ({count.by_call}) -> {count.verdict()}")


def disk_baseline(root: str, quick: bool) -> dict[str, Any]:
    tool = baselines.pick_disk_tool("auto")
    run = baselines.disk_sequential_write(root, 512 if quick else 2048, tool)
    fdatasync = baselines.sync_latencies_ms(root, 1024, 100 if quick else 250, datasync=True)
    return {"tool": run.tool, "command": run.command, "bytes": run.bytes_written,
            "seconds": run.seconds, "mb_per_s": run.bytes_written / run.seconds / 1e6,
            "fdatasync_1k_median_ms": statistics.median(fdatasync)}


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def code_description() -> str:
    """Which TideMQ was measured: a snapshot (benchmarks/snapshot.py) or the working tree."""
    if os.environ.get("TIDEMQ_BENCH_SOURCE"):
        return os.environ["TIDEMQ_BENCH_SOURCE"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "backend/tidemq"],
                               cwd=REPO, text=True, capture_output=True,
                               timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"working tree at {head}" + (
        f", uncommitted changes in {', '.join(changed)}" if changed else "")


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    probes = {"redis-server": ["redis-server", "--version"],
              "nats-server": ["nats-server", "--version"],
              "rabbitmq-server": ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
              "erlang": ["dpkg-query", "-W", "-f=${Version}", "erlang-base"],
              "fio": ["fio", "--version"], "strace": ["strace", "-V"]}
    for name, command in probes.items():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            output = subprocess.run(command, capture_output=True, text=True, timeout=10)
            found[name] = (output.stdout.strip().splitlines() or ["?"])[0][:80]
    from importlib.metadata import PackageNotFoundError, version

    for package in ("redis", "aio-pika", "nats-py", "trio", "matplotlib"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


@contextlib.contextmanager
def scratch(root: str) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="tidemq-peers-", dir=root)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_suite(args: argparse.Namespace) -> int:
    params = common.QUICK if args.quick else Params()
    trace_params = common.QUICK_TRACE if args.quick else common.TRACE
    if args.latency_rate:
        params.latency_rate = args.latency_rate
    wanted = args.systems.split(",") if args.systems else [s.key for s in SYSTEMS]
    for key in wanted:
        system(key)  # unknown names fail here
    only = set(args.workloads.split(",")) if args.workloads else None
    kind = "quick" if args.quick else "full"
    started = time.monotonic()
    machine = machine_description(args.dir)
    machine.update(cpu_model=cpu_model(), nproc=os.cpu_count(), versions=versions(),
                   load_before=os.getloadavg(), code=code_description())
    results = Results()
    syncs: dict[str, SyncCount] = {}
    with scratch(args.dir) as root:
        log(f"W4 disk baseline ({kind})")
        disk = disk_baseline(root, args.quick)
        log(f"  disk {disk['mb_per_s']:.0f} MB/s ({disk['tool']}), fdatasync(1 KiB) "
            f"{disk['fdatasync_1k_median_ms']:.2f} ms")
        for group in SERVER_GROUPS:
            keys = [key for key in group if key in wanted]
            if not keys:
                continue
            tracing = not args.no_trace and (only is None or "W1" in only) and not (
                args.quick and set(keys) & QUICK_UNTRACED)
            if tracing and not args.quick:
                log(f"{', '.join(keys)}: sync calls under strace (W1, "
                    f"{trace_params.messages:,} messages)")
                try:
                    syncs.update(trace_sync_calls(keys, trace_params, root))
                except Exception as error:
                    log(f"  ! trace failed: {type(error).__name__}: {error}")
                log_syncs(keys, syncs)
            with tempfile.TemporaryDirectory(prefix="run-", dir=root) as workdir:
                # Quick runs count sync calls during the measured W1 itself (the server
                # runs under strace, stopped only on sync calls) to save a server start.
                trace_file = os.path.join(workdir, "strace.log") \
                    if tracing and args.quick else None
                windows: dict[str, tuple[float, float, int]] = {}
                try:
                    with adapter(keys[0]).server(keys[0], workdir, trace_file) as address:
                        for key in keys:
                            workloads = TIDEMQ_WORKLOADS if system(key).is_tidemq \
                                else PEER_WORKLOADS
                            if only is not None:
                                workloads = [w for w in workloads if w in only]
                            log(f"{key} at {address}: {', '.join(workloads)}")
                            for line in run_client(key, address, workloads, params, workdir,
                                                   client_timeout(params, workloads)):
                                result = Result.from_json(line)
                                if result.workload != "error":
                                    results.add(result)
                                if (window := w1_window(line)) is not None:
                                    windows[key] = window
                                log("  " + describe(result))
                except Exception as error:
                    log(f"  ! {', '.join(keys)}: server failed: {type(error).__name__}: "
                        f"{error}")
                if trace_file is not None:
                    syncs.update(syncs_in_windows(trace_file, windows, params.in_flight))
                    log_syncs(keys, syncs)
    machine["load_after"] = os.getloadavg()
    elapsed = time.monotonic() - started
    document = {"kind": kind, "command": args.command_line, "machine": machine,
                "params": params.to_json(), "trace_params": trace_params.to_json(),
                "disk": disk, "elapsed_s": elapsed,
                "results": [r.to_json() for r in results.all()],
                "syncs": {key: {"calls": c.calls, "acked": c.acked, "in_flight": c.in_flight,
                                "by_call": c.by_call, "per_thousand": c.per_thousand,
                                "verdict": c.verdict()} for key, c in syncs.items()}}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as file:
        json.dump(document, file, indent=2)
        file.write("\n")
    log(f"JSON: {args.json}")
    try:
        from peers.plot import plot

        plot(results, args.png, title=f"TideMQ and peers ({kind} run, {machine['date_utc']})")
        log(f"PNG: {args.png}")
    except ImportError as error:
        log(f"  ! no PNG ({error}); pip install '.[bench]'")
    section = render_section(document, results, syncs, args)
    print(section)
    if args.doc:
        replace_section(args.doc, kind, section)
        log(f"section written to {args.doc}")
    log(f"done in {elapsed:.0f} s")
    return 0


def render_from_json(args: argparse.Namespace) -> int:
    """The PNG and the Markdown section again, from a run's JSON file (no measuring)."""
    with open(args.from_json, encoding="utf-8") as file:
        document = json.load(file)
    results = Results(Result.from_json(line) for line in document["results"])
    syncs = {key: SyncCount(key, value["calls"], value["acked"], value["in_flight"],
                            value["by_call"]) for key, value in document["syncs"].items()}
    args.json = args.from_json
    from peers.plot import plot

    plot(results, args.png, title=f"TideMQ and peers ({document['kind']} run, "
                                  f"{document['machine']['date_utc']})")
    section = render_section(document, results, syncs, args)
    print(section)
    if args.doc:
        replace_section(args.doc, document["kind"], section)
    return 0


def describe(result: Result) -> str:
    if result.error:
        return f"{result.system} {result.workload}: ERROR {result.error}"
    if result.workload == "W3":
        return (f"{result.system} W3: {result.messages:,} samples, p50 {result.p50_ms} ms, "
                f"p99 {result.p99_ms} ms, p99.9 {result.p999_ms} ms")
    return (f"{result.system} {result.workload}: {result.messages:,} in {result.seconds:.2f} s"
            f" = {result.msg_per_s:,.0f} msg/s, {result.mb_per_s:.1f} MB/s; CPU server "
            f"{result.extra.get('server_cpu', '-')}, client {result.extra.get('client_cpu', '-')}")


def render_section(document: dict[str, Any], results: Results, syncs: dict[str, SyncCount],
                   args: argparse.Namespace) -> str:
    machine, disk, params = document["machine"], document["disk"], document["params"]
    kind = document["kind"]
    memory = machine.get("memory_bytes") or 0
    png = os.path.relpath(args.png, os.path.dirname(os.path.abspath(args.doc or args.png)))
    json_path = os.path.relpath(args.json, os.path.dirname(os.path.abspath(args.doc
                                                                            or args.json)))
    verdicts = evaluate_targets(results, disk["mb_per_s"])
    version_text = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    load = "{:.2f}/{:.2f}/{:.2f}"
    lines = [
        f"<!-- peers:{kind}:start -->",
        f"## Peers ({kind} run): TideMQ, Redis Streams, RabbitMQ, NATS JetStream",
        "",
        f"Command: `{document['command']}`; {machine['date_utc']}; "
        f"{document['elapsed_s']:.0f} s in all. Generated by `benchmarks/suite.py`; raw "
        f"figures in [{json_path}]({json_path}).",
        "",
        f"Machine: `nproc` {machine['nproc']}, {machine['cpu_model']}, "
        f"{memory / 2**30:.1f} GiB RAM, kernel {machine['kernel']}, Python "
        f"{machine['python']}; data on {machine['filesystem']['device']} "
        f"({machine['filesystem']['type']}). Load average before/after: "
        f"{load.format(*machine['load_before'])} / {load.format(*machine['load_after'])} "
        "(other agents' test runs share these 2 cores: treat differences under ~20% as "
        f"noise). Code: {machine['code']}. Versions: {version_text}.",
        "",
        f"Parameters: {params['body_bytes']}-byte bodies (W5 {params['small_body_bytes']}), "
        f"{params['in_flight']:,} in flight, each throughput loop stops at "
        f"{params['messages']:,} messages (W5 {params['small_messages']:,}) or "
        f"{params['max_seconds']:.0f} s; W3 at {params['latency_rate']:,} msg/s, "
        f"{latency_rounds(params)}; W6 {params['topics']} topics x "
        f"{params['queues_per_topic']} queues (peers: one stream/queue per topic), "
        f"{params['producers']} producers; TideMQ batch rows `send_batch` of "
        f"{params['batch']}. W4 disk: {disk['tool']} sequential write "
        f"{disk['mb_per_s']:,.0f} MB/s, fdatasync after 1 KiB "
        f"{disk['fdatasync_1k_median_ms']:.2f} ms (median).",
        "",
        "Figures per system (msg/s unless noted; \"syncs / 1k acks\": fsync + fdatasync + "
        "msync + sync_file_range calls by the server per 1,000 acknowledged messages during "
        + (f"a separate {document['trace_params']['messages']:,}-message W1 under `strace -f "
           "--seccomp-bpf`" if kind == "full" else "the measured W1, its server under "
           "`strace -f --seccomp-bpf`")
        + "; an ack can mean \"on disk\" only with at least one sync per "
        f"{params['in_flight']:,} acks):",
        "",
        markdown_table(figures_table(results, syncs)),
        "",
        "TideMQ/peer, like with like (TideMQ flush=async against page-cache acks, "
        "flush=sync against on-disk acks); above 1 TideMQ is better (latency: peer p99 / "
        "TideMQ p99); batch rows compare TideMQ's `send_batch` with the peer's plain W1/W5:",
        "",
        markdown_table(ratios_table(results)),
        "",
        "Targets:",
        "",
        targets_table(verdicts),
        "",
        f"![throughput and latency per system]({png})",
        f"<!-- peers:{kind}:end -->",
    ]
    return "\n".join(lines)


def replace_section(path: str, kind: str, section: str) -> None:
    start, end = f"<!-- peers:{kind}:start -->", f"<!-- peers:{kind}:end -->"
    with open(path, encoding="utf-8") as file:
        text = file.read()
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action")
    client = sub.add_parser("client", help="(internal) one system's client workloads")
    client.add_argument("--system", required=True)
    client.add_argument("--address", required=True)
    client.add_argument("--workloads", required=True)
    client.add_argument("--params", required=True)
    parser.add_argument("--quick", action="store_true", help="about a minute in all")
    parser.add_argument("--systems", help="comma-separated: " + ",".join(s.key for s in SYSTEMS))
    parser.add_argument("--workloads", help="comma-separated subset of W1,W1-batch,W2,W3,W5,"
                                            "W5-batch,W6")
    parser.add_argument("--no-trace", action="store_true", help="skip the strace sync count")
    parser.add_argument("--latency-rate", type=int, help="W3 msg/s (default 1000)")
    parser.add_argument("--dir", default=".", help="where servers keep their data")
    parser.add_argument("--json", help="default docs/bench/peers[-quick].json")
    parser.add_argument("--png", help="default docs/bench/peers[-quick].png")
    parser.add_argument("--from-json", metavar="FILE",
                        help="only draw the PNG and write the section from a run's JSON")
    parser.add_argument("--doc", default=os.path.join(REPO, "docs", "benchmarks.md"),
                        help="Markdown file to write the section into ('' for none)")
    args = parser.parse_args(argv)
    if args.action == "client":
        return client_main(args)
    suffix = "-quick" if args.quick else ""
    args.json = args.json or os.path.join(REPO, "docs", "bench", f"peers{suffix}.json")
    args.png = args.png or os.path.join(REPO, "docs", "bench", f"peers{suffix}.png")
    args.command_line = shlex.join(["python", "benchmarks/suite.py", *argv])
    if args.from_json:
        return render_from_json(args)
    _stop_on_sigterm()
    return run_suite(args)


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every server's ``finally`` stops it."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
