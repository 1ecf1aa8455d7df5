"""Fixtures for integration tests: a real broker on a free port of 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tidemq.broker.node import Broker, BrokerStarted
from tidemq.config import BrokerConfig, StoreConfig, TidemqConfig


def broker_config(data_dir: Path, *, auto_create_topics: bool = True) -> TidemqConfig:
    return TidemqConfig(
        broker=BrokerConfig(port=0, auto_create_topics=auto_create_topics),
        store=StoreConfig(data_dir=str(data_dir), segment_size_bytes=8 << 20,
                          max_message_size_bytes=256 << 10, append_batch_bytes_max=1 << 20,
                          index_slots=1024, index_entries_per_file=16384),
    )


@pytest.fixture
async def running_broker(tmp_path: Path) -> AsyncIterator[tuple[Broker, BrokerStarted]]:
    broker = Broker(broker_config(tmp_path / "broker"))
    async with trio.open_nursery() as nursery:
        started = await nursery.start(broker.run)
        yield broker, started
        nursery.cancel_scope.cancel()


@pytest.fixture
async def strict_broker(tmp_path: Path) -> AsyncIterator[tuple[Broker, BrokerStarted]]:
    """A broker with topic auto-creation off (as in production)."""
    broker = Broker(broker_config(tmp_path / "strict", auto_create_topics=False))
    async with trio.open_nursery() as nursery:
        started = await nursery.start(broker.run)
        yield broker, started
        nursery.cancel_scope.cancel()
