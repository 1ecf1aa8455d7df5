"""The suite's W3 figure from several rounds: the median round's percentiles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peers.common import combine_latency_rounds, result


def _round(p50: float, p99: float, p999: float, messages: int = 10_000,
           **extra: Any) -> dict[str, Any]:
    return result("redis-everysec", "W3", messages, 10.0, 1024, rate_per_s=1000,
                  p50_ms=p50, p99_ms=p99, p999_ms=p999, **extra)


def test_each_percentile_is_the_median_of_the_rounds() -> None:
    combined = combine_latency_rounds([_round(0.5, 1.9, 4.0), _round(0.4, 1.1, 9.0),
                                       _round(0.6, 1.3, 3.0)])
    assert (combined["p50_ms"], combined["p99_ms"], combined["p999_ms"]) == (0.5, 1.3, 4.0)
    assert combined["messages"] == 30_000
    assert combined["seconds"] == 30.0
    assert [r["p99_ms"] for r in combined["extra"]["rounds"]] == [1.9, 1.1, 1.3]
    assert "error" not in combined


def test_a_round_that_failed_is_reported() -> None:
    failed = _round(0.5, 1.0, 2.0, messages=10, error="only 10 of 10000 received")
    combined = combine_latency_rounds([_round(0.5, 1.0, 2.0), failed, _round(0.5, 1.0, 2.0)])
    assert combined["error"] == "only 10 of 10000 received"


def test_one_round_is_the_result_itself() -> None:
    single = _round(0.5, 1.0, 2.0)
    assert combine_latency_rounds([single]) is single
