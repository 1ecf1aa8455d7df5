"""A broker in its own process for the cluster tests (``python -m tidemq broker``).

The broker and the test process each get a core, as in a deployment. ``broker_process``
starts one, waits for its ``{"event": "started", ...}`` line and yields a handle that can
stop it cleanly (SIGTERM) or kill it (SIGKILL); whatever happens, the process is gone and
its pipes closed when the ``with`` block ends. Its log (stderr) goes to a file, printed on
failure by the tests that care.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "backend")}
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RunningBroker:
    process: subprocess.Popen[str]
    started: dict[str, Any]
    """The broker's ``started`` line: ``broker`` (host:port), ``data_dir``, ``recovery``."""

    @property
    def address(self) -> str:
        return str(self.started["broker"])

    def stop(self) -> int:
        """SIGTERM, wait; the exit code (0 for a clean stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def kill9(self) -> None:
        """SIGKILL, and wait until the process is gone (its socket and flock released)."""
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=STOP_TIMEOUT_S) == -signal.SIGKILL


def log_tail(log_path: Path, chars: int = 4000) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@contextmanager
def broker_process(data_dir: Path, log_path: Path, *, port: int = 0,
                   extra: Sequence[str] = ()) -> Iterator[RunningBroker]:
    """Run a broker on ``port`` (0: any free one) with its data in ``data_dir``."""
    command = [sys.executable, "-m", "tidemq", "--log-level", "WARNING", "broker",
               "--set", f"broker.port={port}", "--set", "broker.auto_create_topics=true",
               "--set", f"store.data_dir={data_dir}",
               "--set", "store.segment_size_bytes=64MiB", *extra]
    with open(log_path, "ab") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
            env=ENV) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                process.wait(timeout=STOP_TIMEOUT_S)
                raise RuntimeError(f"the broker exited ({process.returncode}) before "
                                   f"serving:\n{log_tail(log_path)}")
            started = json.loads(line)
            assert started["event"] == "started", started
            yield RunningBroker(process, started)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
