"""A broker in its own process for client benchmarks (so client and broker each get a
core, as in a deployment), started with `python -m tidemq broker` on a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def broker_command(data_dir: str, *, flush: str = "async",
                   extra: Sequence[str] = ()) -> list[str]:
    """The command line of a benchmark broker: port 0 (it prints its address as the first
    line of JSON on stdout), topics created on first use, data in ``data_dir``."""
    return [sys.executable, "-m", "tidemq", "--log-level", "WARNING", "broker",
            "--set", "broker.port=0", "--set", "broker.auto_create_topics=true",
            "--set", f"store.data_dir={data_dir}", "--set", f"store.flush={flush}",
            "--set", "store.segment_size_bytes=1GiB", *extra]


@contextmanager
def broker_process(data_root: str, *, flush: str = "async",
                   extra: Sequence[str] = ()) -> Iterator[str]:
    """Start a broker (data in a fresh directory under ``data_root``); yields host:port."""
    with tempfile.TemporaryDirectory(prefix="tidemq-bench-broker-", dir=data_root) as data:
        command = broker_command(data, flush=flush, extra=extra)
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                              env=os.environ.copy()) as process:
            try:
                assert process.stdout is not None
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError("the broker process did not start")
                yield str(json.loads(line)["broker"])
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
