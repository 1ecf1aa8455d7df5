"""The pure part of the peer benchmark suite (``benchmarks/suite.py``): which systems are
compared with which, the TideMQ/peer ratios, the targets' verdicts, fsync counts from an
strace log, and the Markdown section for docs/benchmarks.md.

Like with like: TideMQ with ``flush = "async"`` is compared with the peers whose
acknowledgement means "in the page cache" (Redis ``appendfsync everysec``, a RabbitMQ
stream, NATS JetStream 2.9), TideMQ with ``flush = "sync"`` with the peers whose
acknowledgement means "on disk" (Redis ``appendfsync always``, a RabbitMQ quorum queue).
A ratio above 1 means TideMQ did better: throughput TideMQ/peer, latency peer/TideMQ.

Nothing here starts a process or reads a clock, so it is unit-tested
(tests/unit/test_bench_peers_report.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

AckMeaning = Literal["page cache", "disk"]

#: Workloads in table order. ``-batch`` rows are TideMQ's ``send_batch`` form of a
#: workload; the peers have no batch send, so they are compared with the peer's plain row.
WORKLOADS: Final = ("W1", "W1-batch", "W2", "W3", "W5", "W5-batch", "W6")
THROUGHPUT_WORKLOADS: Final = ("W1", "W1-batch", "W2", "W5", "W5-batch", "W6")
WORKLOAD_LABELS: Final = {
    "W1": "W1 produce 1 KiB",
    "W1-batch": "W1 produce 1 KiB, TideMQ send_batch",
    "W2": "W2 consume 1 KiB, acked",
    "W3": "W3 end-to-end latency at a fixed rate",
    "W5": "W5 produce 100 B",
    "W5-batch": "W5 produce 100 B, TideMQ send_batch",
    "W6": "W6 produce 1 KiB, 16 topics, 16 producers",
}


@dataclass(frozen=True, slots=True)
class SystemInfo:
    key: str
    label: str
    family: Literal["tidemq", "redis", "rabbitmq", "nats"]
    ack: AckMeaning  # what the server's acknowledgement means, as configured

    @property
    def is_tidemq(self) -> bool:
        return self.family == "tidemq"


SYSTEMS: Final = (
    SystemInfo("tidemq-async", "TideMQ flush=async", "tidemq", "page cache"),
    SystemInfo("tidemq-sync", "TideMQ flush=sync", "tidemq", "disk"),
    SystemInfo("redis-everysec", "Redis Streams, appendfsync everysec", "redis", "page cache"),
    SystemInfo("redis-always", "Redis Streams, appendfsync always", "redis", "disk"),
    SystemInfo("rabbitmq-stream", "RabbitMQ stream queue, confirms", "rabbitmq", "page cache"),
    SystemInfo("rabbitmq-quorum", "RabbitMQ quorum queue, confirms", "rabbitmq", "disk"),
    SystemInfo("nats-jetstream", "NATS JetStream, file storage", "nats", "page cache"),
)
SYSTEMS_BY_KEY: Final = {system.key: system for system in SYSTEMS}


def system(key: str) -> SystemInfo:
    try:
        return SYSTEMS_BY_KEY[key]
    except KeyError:
        raise ValueError(f"unknown system {key!r}") from None


def counterpart(peer_key: str) -> str:
    """The TideMQ variant a peer is compared with: same meaning of an acknowledgement."""
    peer = system(peer_key)
    if peer.is_tidemq:
        raise ValueError(f"{peer_key} is TideMQ, not a peer")
    return "tidemq-async" if peer.ack == "page cache" else "tidemq-sync"


def peer_workload(workload: str) -> str:
    """The peer's row a TideMQ workload row is compared with (``W1-batch`` -> ``W1``)."""
    return workload.removesuffix("-batch")


@dataclass(slots=True)
class Result:
    """One workload on one system, as measured by a client process."""

    system: str
    workload: str
    messages: int
    seconds: float
    body_bytes: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    rate_per_s: int | None = None  # W3's offered rate
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.messages > 0 and self.seconds > 0

    @property
    def msg_per_s(self) -> float:
        return self.messages / self.seconds if self.ok else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.msg_per_s * self.body_bytes / 1e6

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["msg_per_s"] = round(self.msg_per_s, 1)
        document["mb_per_s"] = round(self.mb_per_s, 2)
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Result:
        names = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in document.items() if key in names})


class Results:
    """All results of one run, by (system, workload)."""

    def __init__(self, results: Iterable[Result] = ()) -> None:
        self._by_key: dict[tuple[str, str], Result] = {}
        for result in results:
            self.add(result)

    def add(self, result: Result) -> None:
        self._by_key[(result.system, result.workload)] = result

    def get(self, system_key: str, workload: str) -> Result | None:
        result = self._by_key.get((system_key, workload))
        return result if result is not None and result.ok else None

    def all(self) -> list[Result]:
        return list(self._by_key.values())

    def systems(self) -> list[str]:
        present = {key for key, _ in self._by_key}
        return [s.key for s in SYSTEMS if s.key in present]


def higher_is_better(workload: str) -> bool:
    return workload != "W3"


def figure(result: Result | None, workload: str) -> float | None:
    """The figure a workload is judged on: msg/s, or p99 in ms for W3."""
    if result is None:
        return None
    if workload == "W3":
        return result.p99_ms
    return result.msg_per_s


def ratio(tidemq: float | None, peer: float | None, *, higher_better: bool) -> float | None:
    """TideMQ/peer for throughput, peer/TideMQ for latency: above 1, TideMQ did better."""
    if tidemq is None or peer is None or tidemq <= 0 or peer <= 0:
        return None
    return tidemq / peer if higher_better else peer / tidemq


def workload_ratio(results: Results, workload: str, peer_key: str) -> float | None:
    tidemq = results.get(counterpart(peer_key), workload)
    peer = results.get(peer_key, peer_workload(workload))
    return ratio(figure(tidemq, workload), figure(peer, workload),
                 higher_better=higher_is_better(workload))


# -- fsync counts ---------------------------------------------------------------------

SYNC_CALLS: Final = ("fsync", "fdatasync", "msync", "sync_file_range", "syncfs", "sync")
_STRACE_LINE: Final = re.compile(
    r"^(?:\[pid\s+)?\d+\]?\s+(\d+\.\d+)\s+(" + "|".join(SYNC_CALLS) + r")\(")


def count_sync_calls(lines: Iterable[str], start: float, end: float) -> dict[str, int]:
    """Sync calls started within [start, end] in an ``strace -f -ttt`` log, by name.

    A call split by another thread's output ("... <unfinished ...>" then "<... resumed>")
    counts once, on its first line."""
    counts: dict[str, int] = {}
    for line in lines:
        match = _STRACE_LINE.match(line)
        if match is None:
            continue
        when = float(match.group(1))
        if start <= when <= end:
            counts[match.group(2)] = counts.get(match.group(2), 0) + 1
    return counts


@dataclass(frozen=True, slots=True)
class SyncCount:
    """Sync calls the server made while it acknowledged ``acked`` messages."""

    system: str
    calls: int
    acked: int
    in_flight: int
    by_call: dict[str, int] = field(default_factory=dict)

    @property
    def per_thousand(self) -> float:
        return self.calls * 1000 / self.acked if self.acked else math.nan

    @property
    def disk_ack_possible(self) -> bool:
        """Could every ack have waited for a sync? Only if one sync per ``in_flight``
        acks at least: no more than ``in_flight`` messages can wait on the same sync."""
        return self.acked > 0 and self.calls * self.in_flight >= self.acked

    def verdict(self) -> str:
        declared = system(self.system).ack
        if declared == "disk":
            return "on disk (confirmed)" if self.disk_ack_possible else \
                "on disk? too few syncs"
        return "page cache (confirmed)" if not self.disk_ack_possible else \
            "page cache? many syncs"


# -- targets --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    measured: str
    passed: bool | None  # None: not measured

    @property
    def word(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "MISS")


def peers(results: Results, ack: AckMeaning | None = None) -> list[str]:
    return [key for key in results.systems()
            if not system(key).is_tidemq and (ack is None or system(key).ack == ack)]


def _ahead_of_every_peer(results: Results, workload: str) -> Verdict:
    ratios = {peer: workload_ratio(results, workload, peer) for peer in peers(results)}
    known = {peer: value for peer, value in ratios.items() if value is not None}
    text = ", ".join(f"{peer} {value:.2f}x" for peer, value in known.items()) or "-"
    passed = None if not known or len(known) < len(ratios) else \
        all(value > 1 for value in known.values())
    return Verdict(f"{WORKLOAD_LABELS[workload]}: TideMQ ahead of every peer "
                   "(like with like)", text, passed)


def _best_peer_p99(results: Results, ack: AckMeaning) -> tuple[str, float] | None:
    values = [(peer, results.get(peer, "W3")) for peer in peers(results, ack)]
    known = [(peer, r.p99_ms) for peer, r in values if r is not None and r.p99_ms is not None]
    return min(known, key=lambda item: item[1]) if known else None


def evaluate_targets(results: Results, disk_mb_per_s: float | None) -> list[Verdict]:
    """The issue's targets, judged on this run's figures."""
    verdicts = [_ahead_of_every_peer(results, "W1"),
                _ahead_of_every_peer(results, "W1-batch"),
                _ahead_of_every_peer(results, "W2")]
    pairs: tuple[tuple[str, AckMeaning], ...] = (("tidemq-async", "page cache"),
                                                 ("tidemq-sync", "disk"))
    for tidemq_key, ack in pairs:
        best = _best_peer_p99(results, ack)
        own = results.get(tidemq_key, "W3")
        if best is None or own is None or own.p99_ms is None:
            verdicts.append(Verdict(f"W3 p99 of {tidemq_key} <= best {ack}-ack peer's",
                                    "-", None))
            continue
        verdicts.append(Verdict(
            f"W3 p99 of {tidemq_key} <= best {ack}-ack peer's",
            f"{own.p99_ms:.2f} ms vs {best[1]:.2f} ms ({best[0]})", own.p99_ms <= best[1]))
    batch = results.get("tidemq-async", "W1-batch")
    if batch is None or not disk_mb_per_s:
        verdicts.append(Verdict("W1 MB/s with batching >= 50% of W4 disk write", "-", None))
    else:
        share = batch.mb_per_s / disk_mb_per_s
        verdicts.append(Verdict("W1 MB/s with batching >= 50% of W4 disk write",
                                f"{batch.mb_per_s:.0f} MB/s = {share:.0%} of "
                                f"{disk_mb_per_s:.0f} MB/s", share >= 0.5))
    disk_peers = [(peer, results.get(peer, "W1")) for peer in peers(results, "disk")]
    best_disk = max(((peer, r.msg_per_s) for peer, r in disk_peers if r is not None),
                    key=lambda item: item[1], default=None)
    for workload in ("W1", "W1-batch"):
        sync = results.get("tidemq-sync", workload)
        label = f"{WORKLOAD_LABELS[workload]}, flush=sync >= 3x best on-disk-ack peer"
        if sync is None or best_disk is None:
            verdicts.append(Verdict(label, "-", None))
            continue
        times = sync.msg_per_s / best_disk[1]
        verdicts.append(Verdict(label, f"{sync.msg_per_s:,.0f} vs {best_disk[1]:,.0f} msg/s "
                                       f"({best_disk[0]}) = {times:.2f}x", times >= 3))
    for workload in ("W5", "W5-batch"):
        w5 = results.get("tidemq-async", workload)
        label = f"{WORKLOAD_LABELS[workload]} >= 300,000 msg/s"
        verdicts.append(Verdict(label, "-", None) if w5 is None else
                        Verdict(label, f"{w5.msg_per_s:,.0f} msg/s", w5.msg_per_s >= 300_000))
    return verdicts


# -- Markdown -------------------------------------------------------------------------

def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def figures_table(results: Results, syncs: Mapping[str, SyncCount]) -> list[list[str]]:
    """Rows: one per system. Throughputs in msg/s (MB/s for W1), W3 percentiles in ms."""
    header = ["system", "ack means (strace)", "syncs / 1k acks", "W1 msg/s", "W1 MB/s",
              "W1 batch msg/s", "W2 msg/s", "W3 p50 / p99 / p99.9 ms", "W5 msg/s",
              "W5 batch msg/s", "W6 msg/s", "W1 / W2 CPU, server + client (cores)"]
    rows = [header]
    for key in results.systems():
        info = system(key)
        sync = syncs.get(key)
        w1, w3 = results.get(key, "W1"), results.get(key, "W3")
        latency = "-" if w3 is None else " / ".join(
            _num(value, 2) for value in (w3.p50_ms, w3.p99_ms, w3.p999_ms))
        rows.append([
            info.label,
            sync.verdict() if sync else f"{info.ack} (not traced)",
            _num(sync.per_thousand, 2) if sync else "-",
            _num(figure(w1, "W1")),
            _num(w1.mb_per_s, 1) if w1 else "-",
            _num(figure(results.get(key, "W1-batch"), "W1")),
            _num(figure(results.get(key, "W2"), "W2")),
            latency,
            _num(figure(results.get(key, "W5"), "W5")),
            _num(figure(results.get(key, "W5-batch"), "W5")),
            _num(figure(results.get(key, "W6"), "W6")),
            " / ".join(cpu_text(results.get(key, w)) for w in ("W1", "W2")),
        ])
    return rows


def cpu_text(result: Result | None) -> str:
    """Busy cores during a workload: the server's process tree + the client process."""
    if result is None or "server_cpu" not in result.extra:
        return "-"
    return f"{result.extra['server_cpu']:.2f} + {result.extra['client_cpu']:.2f}"


def ratios_table(results: Results) -> list[list[str]]:
    """Rows: one per peer, with its TideMQ counterpart and TideMQ/peer per workload."""
    header = ["peer", "compared with", *[f"{w} ratio" for w in WORKLOADS]]
    rows = [header]
    for peer in peers(results):
        rows.append([system(peer).label, system(counterpart(peer)).label,
                     *[_ratio_text(workload_ratio(results, w, peer)) for w in WORKLOADS]])
    return rows


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---" if i < 2 else "---:" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def targets_table(verdicts: Sequence[Verdict]) -> str:
    rows = [["target", "measured", "verdict"]]
    rows += [[v.target, v.measured, f"**{v.word}**"] for v in verdicts]
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | --- |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)
