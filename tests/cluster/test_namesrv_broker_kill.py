"""A broker killed with SIGKILL leaves the routes, and producers that found their brokers
through the name server move to the other broker without failing a send.

Processes: one name server, two brokers (groups broker-a and broker-b) registering with
it; the producer (and the route checks) run in the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from cluster_broker import ENV, ROOT, broker_process, log_tail

from tidemq import Admin, Producer, SendResult
from tidemq.errors import TopicNotFound
from tidemq.net import connect, split_address
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.routing import TopicRoute

pytestmark = pytest.mark.slow

BROKER_TIMEOUT_MS = 3_000


@contextmanager
def namesrv_process(log_path: Path) -> Iterator[str]:
    command = [sys.executable, "-m", "tidemq", "--log-level", "WARNING", "namesrv",
               "--set", "namesrv.port=0",
               "--set", f"namesrv.broker_timeout_ms={BROKER_TIMEOUT_MS}",
               "--set", "namesrv.eviction_check_interval_ms=100"]
    with open(log_path, "ab") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
            env=ENV) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line, f"the name server did not start:\n{log_tail(log_path)}"
            yield str(json.loads(line)["namesrv"])
        finally:
            process.kill()
            process.wait(timeout=30)


async def route_brokers(namesrv: str, topic: str) -> set[str]:
    host, port = split_address(namesrv)
    async with await connect(host, port, client_id="route-check") as connection:
        try:
            response = await connection.call(RequestCode.GET_ROUTE, {"topic": topic})
        except TopicNotFound:
            return set()
    route = TopicRoute.from_fields(response.fields)
    return {group.leader for group in route.groups if group.leader is not None}


async def test_a_killed_broker_leaves_the_routes_and_sends_move_on(tmp_path: Path) -> None:
    log = tmp_path / "cluster.log"
    with namesrv_process(log) as namesrv:
        extra = ["--set", f"broker.namesrv_addresses={namesrv}",
                 "--set", "broker.namesrv_heartbeat_interval_ms=300"]
        with broker_process(tmp_path / "a", log, extra=[*extra, "--set",
                                                        "broker.group=broker-a"]) as a, \
                broker_process(tmp_path / "b", log, extra=[*extra, "--set",
                                                           "broker.group=broker-b"]) as b:
            async with Admin(namesrv=namesrv) as admin:
                await admin.create_topic("orders", queue_count=4)
            with trio.fail_after(10):
                while await route_brokers(namesrv, "orders") != {a.address, b.address}:  # noqa: ASYNC110
                    await trio.sleep(0.05)

            results: list[SendResult] = []
            killed_at: list[float] = []
            async with Producer(namesrv=namesrv, retries=2, send_timeout_ms=3_000,
                                route_ttl_ms=30_000) as producer:

                async def send_for(seconds: float) -> None:
                    deadline = trio.current_time() + seconds
                    index = 0
                    while trio.current_time() < deadline:
                        results.append(await producer.send("orders", b"m%d" % index))
                        index += 1
                        await trio.sleep(0.002)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_for, 4.0)
                    await trio.sleep(1.0)
                    await trio.to_thread.run_sync(a.kill9)
                    killed_at.append(trio.current_time())
                    with trio.fail_after(BROKER_TIMEOUT_MS / 1000 + 2):
                        while a.address in await route_brokers(namesrv, "orders"):  # noqa: ASYNC110
                            await trio.sleep(0.05)
                    evicted_after_s = trio.current_time() - killed_at[0]

            # every send returned a result (none raised), and the later ones all went to b
            assert len(results) > 100
            before = {r.broker for r in results[:50]}
            assert before == {a.address, b.address}
            assert {r.broker for r in results[-50:]} == {b.address}
            assert evicted_after_s <= BROKER_TIMEOUT_MS / 1000, \
                f"evicted after {evicted_after_s:.2f} s"
            assert await route_brokers(namesrv, "orders") == {b.address}
