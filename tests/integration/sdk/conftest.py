"""Shared pieces of the SDK tests: an embedded broker per test, consumers tuned for speed.

The fixture is the public one of ``tidemq.testing`` (what applications get with
``pytest_plugins = ["tidemq.testing"]``), imported here because ``pytest_plugins`` belongs
in the root conftest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from tidemq import Consumer
from tidemq.testing import EmbeddedBroker
from tidemq.testing import embedded_broker as embedded_broker

FAST: Mapping[str, Any] = {
    "heartbeat_interval_ms": 150,
    "commit_interval_ms": 100,
    "retry_delay_ms": 50,
    "start_from": "earliest",
}
"""Consumer settings that make group changes take a fraction of a second."""


def make_consumer(broker: EmbeddedBroker | Sequence[str], group: str,
                  topics: Mapping[str, str] | Sequence[str] | str, **overrides: Any) -> Consumer:
    """A consumer with the ``FAST`` settings, of one embedded broker or of addresses."""
    brokers = [broker.address] if isinstance(broker, EmbeddedBroker) else list(broker)
    return Consumer(group, topics, brokers=brokers, **{**FAST, **overrides})


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0,
                     poll_s: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout_s``."""
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110  (statistics() has no event to wait on)
            await trio.sleep(poll_s)


def is_partition(assignments: Sequence[Sequence[object]], expected: set[object]) -> bool:
    """Every expected queue assigned exactly once across the consumers."""
    flat = [queue for assigned in assignments for queue in assigned]
    return len(flat) == len(set(flat)) and set(flat) == expected
