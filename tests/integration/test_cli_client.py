"""produce / consume / admin from the shell against a running `tidemq dev` process (its
broker directly, and through its name server)."""

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
def dev_node(tmp_path: Path) -> Iterator[dict[str, str]]:
    """``tidemq dev`` on free ports: its start report (``broker``, ``namesrv``)."""
    with subprocess.Popen(
        [sys.executable, "-m", "tidemq", "dev", "--data", str(tmp_path / "data"),
         "--set", "broker.port=0", "--set", "namesrv.port=0",
         "--set", "store.segment_size_bytes=8MiB",
         "--set", "store.max_message_size_bytes=1MiB",
         "--set", "store.append_batch_bytes_max=2MiB"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=ENV,
    ) as process:
        try:
            assert process.stdout is not None
            yield json.loads(process.stdout.readline())
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()


@pytest.fixture
def dev_broker(dev_node: dict[str, str]) -> str:
    return dev_node["broker"]


def run_tidemq(*args: str, stdin: str = "") -> str:
    result = subprocess.run([sys.executable, "-m", "tidemq", *args],
                            input=stdin, capture_output=True, text=True, timeout=60,
                            cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr
    return result.stdout


def tidemq(broker: str, *args: str, stdin: str = "") -> list[dict[str, object]]:
    output = run_tidemq(*args, "--brokers", broker, stdin=stdin)
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_through_the_name_server_of_tidemq_dev(dev_node: dict[str, str]) -> None:
    namesrv = dev_node["namesrv"]
    sent = json.loads(run_tidemq("produce", "payments", "--namesrv", namesrv, stdin="a\n"))
    assert sent["broker"] == dev_node["broker"]  # found through the name server
    received = json.loads(run_tidemq("consume", "payments", "--group", "g", "--from",
                                     "earliest", "--max", "1", "--namesrv", namesrv))
    assert received["body"] == "a"
    cluster = json.loads(run_tidemq("admin", "cluster", "--json", "--namesrv", namesrv))
    assert cluster["namesrvs"][0]["reachable"] is True
    assert cluster["namesrvs"][0]["role"] == "standalone"
    replicas = cluster["groups"][0]["replicas"]
    assert [r["address"] for r in replicas] == [dev_node["broker"]]
    assert "payments" in cluster["topics"]
    table = run_tidemq("admin", "cluster", "--namesrv", f"{namesrv},127.0.0.1:1")
    for expected in ("NAME SERVERS", "127.0.0.1:1", "DOWN", dev_node["broker"], "payments"):
        assert expected in table


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
