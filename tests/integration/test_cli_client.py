"""produce / consume / admin from the shell against a running `tidemq dev` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "backend")}


@pytest.fixture
def dev_broker(tmp_path: Path) -> Iterator[str]:
    with subprocess.Popen(
        [sys.executable, "-m", "tidemq", "dev", "--data", str(tmp_path / "data"),
         "--set", "broker.port=0", "--set", "store.segment_size_bytes=8MiB",
         "--set", "store.max_message_size_bytes=1MiB",
         "--set", "store.append_batch_bytes_max=2MiB"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=ENV,
    ) as process:
        try:
            assert process.stdout is not None
            yield json.loads(process.stdout.readline())["broker"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()


def tidemq(broker: str, *args: str, stdin: str = "") -> list[dict[str, object]]:
    result = subprocess.run([sys.executable, "-m", "tidemq", *args, "--brokers", broker],
                            input=stdin, capture_output=True, text=True, timeout=60,
                            cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_produce_consume_and_admin_from_the_shell(dev_broker: str) -> None:
    created = tidemq(dev_broker, "admin", "topic", "create", "orders", "--queues", "2")
    assert created[0]["name"] == "orders"
    sent = tidemq(dev_broker, "produce", "orders", "--key", "k1", "--tag", "created",
                  stdin="first\nsecond\nthird\n")
    assert len(sent) == 3
    assert all(isinstance(result["msg_id"], str) for result in sent)
    received = tidemq(dev_broker, "consume", "orders", "--group", "cli", "--from",
                      "earliest", "--max", "3")
    assert sorted(str(m["body"]) for m in received) == ["first", "second", "third"]
    assert {m["tag"] for m in received} == {"created"}
    assert all(m["keys"] == ["k1"] for m in received)
    topics = tidemq(dev_broker, "admin", "topic", "list")
    assert [t["name"] for t in topics] == ["orders"]
    described = tidemq(dev_broker, "admin", "topic", "describe", "orders")[0]
    assert sum(q["max_offset"] for q in described["queues"]) == 3  # type: ignore[union-attr]
    group = tidemq(dev_broker, "admin", "group", "describe", "cli")[0]
    assert group["lag"] == 0
    reset = tidemq(dev_broker, "admin", "group", "reset-offset", "cli", "--topic", "orders",
                   "--to", "earliest")[0]
    assert [o["offset"] for o in reset["offsets"]] == [0, 0]  # type: ignore[union-attr]
    group = tidemq(dev_broker, "admin", "group", "describe", "cli")[0]
    assert group["lag"] == 3
    assert tidemq(dev_broker, "admin", "group", "list") == [{"group": "cli"}]
