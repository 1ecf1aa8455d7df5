"""The pure part of the peer benchmark suite: pairing, ratios, sync counts, targets."""

from __future__ import annotations

import math

import pytest

from tidemq.bench.peers_report import (
    Result,
    Results,
    SyncCount,
    count_sync_calls,
    counterpart,
    cpu_text,
    evaluate_targets,
    figures_table,
    markdown_table,
    peer_workload,
    ratio,
    ratios_table,
    workload_ratio,
)


def produce(system: str, workload: str, per_s: float, body: int = 1024) -> Result:
    return Result(system, workload, messages=int(per_s * 2), seconds=2.0, body_bytes=body)


def latency(system: str, p99: float) -> Result:
    return Result(system, "W3", 1000, 1.0, 1024, p50_ms=p99 / 4, p99_ms=p99,
                  p999_ms=p99 * 2, rate_per_s=1000)


def test_like_with_like_pairs_by_what_an_ack_means() -> None:
    assert counterpart("redis-everysec") == "tidemq-async"
    assert counterpart("rabbitmq-stream") == "tidemq-async"
    assert counterpart("nats-jetstream") == "tidemq-async"
    assert counterpart("redis-always") == "tidemq-sync"
    assert counterpart("rabbitmq-quorum") == "tidemq-sync"
    with pytest.raises(ValueError, match="not a peer"):
        counterpart("tidemq-sync")
    with pytest.raises(ValueError, match="unknown"):
        counterpart("kafka")


def test_batch_rows_compare_with_the_peers_plain_row() -> None:
    assert peer_workload("W1-batch") == "W1"
    assert peer_workload("W5-batch") == "W5"
    assert peer_workload("W2") == "W2"


def test_ratio_is_above_one_when_tidemq_is_better() -> None:
    assert ratio(200.0, 100.0, higher_better=True) == 2.0
    assert ratio(2.0, 4.0, higher_better=False) == 2.0  # latency: peer / TideMQ
    assert ratio(None, 4.0, higher_better=True) is None
    assert ratio(0.0, 4.0, higher_better=True) is None


def test_workload_ratio_uses_the_counterpart_not_the_other_variant() -> None:
    results = Results([
        produce("tidemq-async", "W1", 60_000), produce("tidemq-sync", "W1", 20_000),
        produce("redis-everysec", "W1", 30_000), produce("redis-always", "W1", 10_000),
        produce("tidemq-async", "W1-batch", 120_000),
        latency("tidemq-async", 2.0), latency("redis-everysec", 3.0),
    ])
    assert workload_ratio(results, "W1", "redis-everysec") == pytest.approx(2.0)
    assert workload_ratio(results, "W1", "redis-always") == pytest.approx(2.0)
    assert workload_ratio(results, "W1-batch", "redis-everysec") == pytest.approx(4.0)
    assert workload_ratio(results, "W3", "redis-everysec") == pytest.approx(1.5)
    assert workload_ratio(results, "W2", "redis-everysec") is None


def test_a_failed_result_counts_as_missing() -> None:
    results = Results([produce("tidemq-async", "W1", 50_000),
                       Result("redis-everysec", "W1", 0, 0.0, 1024, error="boom")])
    assert results.get("redis-everysec", "W1") is None
    assert workload_ratio(results, "W1", "redis-everysec") is None


STRACE = """\
4101 1700000000.100000 fdatasync(7) = 0
4102 1700000001.000000 fdatasync(7 <unfinished ...>
4101 1700000001.000100 <... fdatasync resumed>) = 0
4101 1700000001.500000 fsync(9) = 0
[pid  4103] 1700000001.600000 msync(0x7f, 4096, MS_SYNC) = 0
4101 1700000002.000000 sync_file_range(3, 0, 0, 2) = 0
4101 1700000005.000000 fsync(9) = 0
4101 1700000001.700000 +++ exited with 0 +++
"""


def test_sync_calls_are_counted_once_within_the_window() -> None:
    counts = count_sync_calls(STRACE.splitlines(), 1700000000.5, 1700000002.0)
    assert counts == {"fdatasync": 1, "fsync": 1, "msync": 1, "sync_file_range": 1}
    assert count_sync_calls(STRACE.splitlines(), 1800000000.0, 1800000001.0) == {}


def test_disk_ack_needs_one_sync_per_in_flight_window() -> None:
    # 1,000 in flight: at most 1,000 acks can wait on one sync.
    assert SyncCount("redis-always", calls=10, acked=10_000, in_flight=1000).disk_ack_possible
    assert not SyncCount("redis-always", calls=9, acked=10_000,
                         in_flight=1000).disk_ack_possible
    assert SyncCount("redis-always", 9, 10_000, 1000).verdict() == "on disk? too few syncs"
    assert SyncCount("redis-everysec", 2, 20_000, 1000).verdict() == "page cache (confirmed)"
    assert SyncCount("rabbitmq-quorum", 500, 20_000, 1000).per_thousand == 25.0
    assert math.isnan(SyncCount("nats-jetstream", 0, 0, 1000).per_thousand)


def full_results(*, tidemq_w1: float, tidemq_sync_w1: float, tidemq_p99: float,
                 w5_batch: float) -> Results:
    return Results([
        produce("tidemq-async", "W1", tidemq_w1),
        produce("tidemq-async", "W1-batch", 150_000),
        produce("tidemq-async", "W2", 170_000),
        produce("tidemq-async", "W5-batch", w5_batch, body=100),
        latency("tidemq-async", tidemq_p99),
        produce("tidemq-sync", "W1", tidemq_sync_w1),
        produce("tidemq-sync", "W2", 170_000),
        latency("tidemq-sync", 5.0),
        produce("redis-everysec", "W1", 32_000), produce("redis-everysec", "W2", 80_000),
        latency("redis-everysec", 4.0),
        produce("redis-always", "W1", 15_000), produce("redis-always", "W2", 80_000),
        latency("redis-always", 6.0),
        produce("nats-jetstream", "W1", 18_000), produce("nats-jetstream", "W2", 40_000),
        latency("nats-jetstream", 3.7),
    ])


def verdicts_by_target(results: Results, disk: float | None) -> dict[str, bool | None]:
    return {v.target: v.passed for v in evaluate_targets(results, disk)}


def test_targets_pass_when_tidemq_beats_every_like_peer() -> None:
    results = full_results(tidemq_w1=40_000, tidemq_sync_w1=50_000, tidemq_p99=3.0,
                           w5_batch=400_000)
    verdicts = verdicts_by_target(results, disk=250.0)
    assert verdicts["W1 produce 1 KiB: TideMQ ahead of every peer (like with like)"] is True
    assert verdicts["W2 consume 1 KiB, acked: TideMQ ahead of every peer (like with like)"] \
        is True
    assert verdicts["W3 p99 of tidemq-async <= best page cache-ack peer's"] is True
    assert verdicts["W3 p99 of tidemq-sync <= best disk-ack peer's"] is True
    assert verdicts["W1 MB/s with batching >= 50% of W4 disk write"] is True  # 154 of 250
    assert verdicts["W1 produce 1 KiB, flush=sync >= 3x best on-disk-ack peer"] is True
    assert verdicts["W5 produce 100 B, TideMQ send_batch >= 300,000 msg/s"] is True
    assert verdicts["W5 produce 100 B >= 300,000 msg/s"] is None  # not measured


def test_targets_miss_when_one_peer_is_ahead() -> None:
    results = full_results(tidemq_w1=30_000, tidemq_sync_w1=44_000, tidemq_p99=3.8,
                           w5_batch=299_999)
    verdicts = verdicts_by_target(results, disk=400.0)
    assert verdicts["W1 produce 1 KiB: TideMQ ahead of every peer (like with like)"] is False
    assert verdicts["W3 p99 of tidemq-async <= best page cache-ack peer's"] is False
    assert verdicts["W1 MB/s with batching >= 50% of W4 disk write"] is False  # 154 of 400
    # 44,000 < 3 x 15,000 (redis-always is the best on-disk peer)
    assert verdicts["W1 produce 1 KiB, flush=sync >= 3x best on-disk-ack peer"] is False
    assert verdicts["W5 produce 100 B, TideMQ send_batch >= 300,000 msg/s"] is False
    assert verdicts_by_target(results, disk=None)[
        "W1 MB/s with batching >= 50% of W4 disk write"] is None


def test_tables_have_one_row_per_system_and_per_peer() -> None:
    results = full_results(tidemq_w1=40_000, tidemq_sync_w1=50_000, tidemq_p99=3.0,
                           w5_batch=400_000)
    syncs = {"redis-always": SyncCount("redis-always", 300, 20_000, 1000)}
    figures = figures_table(results, syncs)
    assert len(figures) == 1 + 5  # header + systems present
    always = next(row for row in figures if row[0].startswith("Redis Streams, appendfsync al"))
    assert always[1] == "on disk (confirmed)"
    assert always[2] == "15.00"
    ratios = ratios_table(results)
    assert [row[0] for row in ratios[1:]] == [
        "Redis Streams, appendfsync everysec", "Redis Streams, appendfsync always",
        "NATS JetStream, file storage"]
    nats = ratios[-1]
    assert nats[1] == "TideMQ flush=async"
    assert nats[2] == "2.22x"  # 40,000 / 18,000
    text = markdown_table(ratios)
    assert text.splitlines()[1].startswith("| --- | --- | ---: |")


def test_cpu_column_shows_server_and_client_cores() -> None:
    measured = Result("nats-jetstream", "W1", 1000, 1.0, 1024,
                      extra={"server_cpu": 0.5, "client_cpu": 0.98})
    assert cpu_text(measured) == "0.50 + 0.98"
    assert cpu_text(Result("nats-jetstream", "W1", 1000, 1.0, 1024)) == "-"
    assert cpu_text(None) == "-"
