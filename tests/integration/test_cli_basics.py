"""The tidemq command line as a user runs it: real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tidemq import __version__

TIDEMQ = [sys.executable, "-m", "tidemq"]
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TIDEMQ, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT / "backend")})


def test_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"tidemq {__version__}"
    help_text = run_cli("--help")
    assert help_text.returncode == 0
    for command in ("dev", "store", "bench"):
        assert command in help_text.stdout


def test_bad_config_names_the_key_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[store]\nflush = "sometimes"\n')
    result = run_cli("dev", "--config", str(config), "--data", str(tmp_path / "data"))
    assert result.returncode == 1
    assert "store.flush" in result.stderr
    assert str(config) in result.stderr
    config.write_text("[store]\nsegment_size_byte = 4096\n")
    result = run_cli("dev", "--config", str(config))
    assert result.returncode == 1
    assert "unknown key store.segment_size_byte" in result.stderr


def test_dev_serves_until_sigterm_then_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with subprocess.Popen(
        [*TIDEMQ, "dev", "--data", str(data), "--set", "broker.port=0",
         "--set", "store.segment_size_bytes=1MiB",
         "--set", "store.max_message_size_bytes=64KiB",
         "--set", "store.append_batch_bytes_max=64KiB"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "backend")}) as process:
        try:
            assert process.stdout is not None
            started = json.loads(process.stdout.readline())
            assert started["event"] == "started"
            assert started["data_dir"] == str(data)
            assert started["broker"].startswith("127.0.0.1:")
            assert (data / "lock").exists()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert not (data / "lock").exists()  # the stop was clean
    inspect = run_cli("store", "inspect", "--data", str(data),
                      "--set", "store.segment_size_bytes=1MiB",
                      "--set", "store.max_message_size_bytes=64KiB",
                      "--set", "store.append_batch_bytes_max=64KiB")
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["recovery"]["clean_shutdown"] is True
