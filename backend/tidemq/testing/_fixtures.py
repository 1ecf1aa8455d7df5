"""The pytest fixture (pytest-trio): enable it with ``pytest_plugins = ["tidemq.testing"]``
in your ``conftest.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidemq.testing._embedded import EmbeddedBroker, open_embedded_broker


@pytest.fixture
async def embedded_broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    """A broker on a free port of 127.0.0.1 with a fresh data directory and topic
    auto-creation on, for one test; ``embedded_broker.address`` is ``"127.0.0.1:port"``.
    Needs pytest-trio (the test must be a Trio test: ``trio_mode = true`` or
    ``@pytest.mark.trio``)."""
    async with open_embedded_broker(tmp_path / "tidemq-broker") as broker:
        yield broker
