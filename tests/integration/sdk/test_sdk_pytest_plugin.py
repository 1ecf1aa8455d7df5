"""The documented way to get the fixture: ``pytest_plugins = ["tidemq.testing"]``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = 'pytest_plugins = ["tidemq.testing"]\n'

TEST = '''
import pytest
from tidemq import Consumer, Producer

@pytest.mark.trio
async def test_uses_the_fixture(embedded_broker):
    assert embedded_broker.address.startswith("127.0.0.1:")
    async with Producer(brokers=[embedded_broker.address]) as producer:
        await producer.send("orders", b"hello")
    async with Consumer("g", "orders", brokers=[embedded_broker.address],
                        start_from="earliest") as consumer:
        message = await consumer.__anext__()
        await message.ack()
    assert message.body == b"hello"
'''


def test_the_plugin_provides_the_embedded_broker_fixture(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_app.py").write_text(TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
