"""Three name servers in processes of their own (``python -m tidemq namesrv``) for the
cluster tests: start, ``kill -9``, restart on the same port, and ask them things.

Timings are short (ping 100 ms, peer timeout 500 ms, broker timeout 3 s) so failovers take
well under a second. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cluster_broker import ENV, ROOT, free_port, log_tail

from tidemq.errors import TideError
from tidemq.net import connect, split_address
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Response

TIMINGS = ("--set", "namesrv.ping_interval_ms=100", "--set", "namesrv.peer_timeout_ms=500",
           "--set", "namesrv.broker_timeout_ms=3000", "--set",
           "namesrv.eviction_check_interval_ms=200", "--set",
           "namesrv.replication_timeout_ms=1000")


@dataclass
class NameServerCluster:
    mode: str
    ack: str
    log_dir: Path
    members: tuple[str, ...] = field(init=False)
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.members = tuple(f"127.0.0.1:{free_port()}" for _ in range(3))

    def start(self, address: str) -> None:
        port = split_address(address)[1]
        command = [sys.executable, "-m", "tidemq", "--log-level", "WARNING", "namesrv",
                   "--set", f"namesrv.port={port}", "--set", f"namesrv.mode={self.mode}",
                   "--set", f"namesrv.ack={self.ack}",
                   "--set", f"namesrv.members={','.join(self.members)}", *TIMINGS]
        log = open(self.log_dir / f"namesrv-{port}.log", "ab")  # noqa: SIM115 (Popen owns it)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True,
                                   cwd=ROOT, env=ENV)
        log.close()
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            process.wait(timeout=10)
            raise RuntimeError(f"name server {address} exited:\n{self.logs()}")
        assert json.loads(line)["event"] == "started"
        self.processes[address] = process

    def kill9(self, address: str) -> None:
        process = self.processes.pop(address)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        if process.stdout is not None:
            process.stdout.close()

    def live(self) -> list[str]:
        return [m for m in self.members if m in self.processes]

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.processes.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{log_tail(path, 2000)}"
                         for path in sorted(self.log_dir.glob("*.log")))


async def ask(address: str, code: RequestCode, fields: dict[str, Any] | None = None
              ) -> Response | TideError:
    """One request on a fresh connection: the response, or the typed error (a dead node
    gives ConnectionClosed)."""
    host, port = split_address(address)
    try:
        with trio.fail_after(3):
            async with await connect(host, port, client_id="cluster-test",
                                     connect_timeout_ms=1000) as connection:
                try:
                    return await connection.call(code, fields or {}, timeout_ms=2000)
                except TideError as error:
                    return error
    except (TideError, OSError, trio.TooSlowError) as error:
        return error if isinstance(error, TideError) else TideError(repr(error))


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], limit_s: float,
                   cluster: NameServerCluster | None = None) -> None:
    """Poll ``check`` every 100 ms until it holds; fail with the logs after ``limit_s``."""
    with trio.move_on_after(limit_s):
        while not await check():  # noqa: ASYNC110 (polls other processes)
            await trio.sleep(0.1)
        return
    logs = cluster.logs() if cluster else ""
    raise AssertionError(f"not within {limit_s} s: {what}\n{logs}")
