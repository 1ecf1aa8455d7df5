"""load_config: defaults < TOML file < TIDEMQ_* environment < --set overrides, and every
error is a ConfigError that names the key and where its value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemq.config import StoreConfig, TidemqConfig, load_config
from tidemq.errors import ConfigError, ErrorCode


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    assert load_config(environ={}) == TidemqConfig()


def test_file_values_with_units(tmp_path: Path) -> None:
    path = write(tmp_path, """
[store]
data_dir = "/srv/tide"
segment_size_bytes = "64MiB"
flush = "sync"
flush_interval_ms = "2s"
retention_ms = "7d"
disk_usage_ratio_max = 0.5
preallocate_next_segment = false
[broker]
port = 9876
""")
    config = load_config(path, environ={})
    assert config.store.data_dir == "/srv/tide"
    assert config.store.segment_size_bytes == 64 * 1024 * 1024
    assert config.store.flush == "sync"
    assert config.store.flush_interval_ms == 2_000
    assert config.store.retention_ms == 7 * 24 * 3600 * 1000
    assert config.store.disk_usage_ratio_max == 0.5
    assert config.store.preallocate_next_segment is False
    assert config.broker.port == 9876


def test_precedence_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nflush = "sync"\nflush_interval_ms = 7\n')
    config = load_config(path, environ={"TIDEMQ_STORE_FLUSH_INTERVAL_MS": "9",
                                        "TIDEMQ_SEED": "42", "HOME": "/root"})
    assert (config.store.flush, config.store.flush_interval_ms) == ("sync", 9)
    config = load_config(path, environ={"TIDEMQ_STORE_FLUSH_INTERVAL_MS": "9"},
                         overrides={"store.flush_interval_ms": "11", "store.flush": "async"})
    assert (config.store.flush, config.store.flush_interval_ms) == ("async", 11)
    assert load_config(path, environ={"TIDEMQ_STORE_PREALLOCATE_NEXT_SEGMENT": "off"}
                       ).store.preallocate_next_segment is False


@pytest.mark.parametrize(("text", "expected"), [
    ("[stor]\nflush = 'sync'\n", ["unknown section [stor]"]),
    ("[store]\nflsh = 'sync'\n", ["unknown key store.flsh"]),
    ("store = 1\n", ["[store] must be a table"]),
    ("[store]\nflush = 'fast'\n", ["store.flush", "'fast'"]),
    ("[store]\nflush = 1\n", ["store.flush"]),
    ("[store]\nsegment_size_bytes = 'lots'\n", ["store.segment_size_bytes", "not a size"]),
    ("[store]\nflush_interval_ms = 'soon'\n", ["store.flush_interval_ms", "not a duration"]),
    ("[store]\nsegment_size_bytes = 1024\n", ["store.segment_size_bytes", ">= 64KiB"]),
    ("[store]\nsegment_size_bytes = 70000\n", ["store.segment_size_bytes", "4096"]),
    ("[store]\ndisk_usage_ratio_max = 1.5\n", ["store.disk_usage_ratio_max"]),
    ("[store]\ndisk_usage_ratio_max = 'half'\n", ["store.disk_usage_ratio_max"]),
    ("[store]\npreallocate_next_segment = 'maybe'\n", ["store.preallocate_next_segment"]),
    ("[store]\nindex_slots = true\n", ["store.index_slots", "integer"]),
    ("[store]\ndata_dir = 5\n", ["store.data_dir", "string"]),
    ("[broker]\nport = 70000\n", ["broker.port"]),
    ("[store]\nmax_message_size_bytes = '8MiB'\n", ["store.append_batch_bytes_max",
                                                    "store.max_message_size_bytes"]),
    ("[store\n", ["not valid TOML"]),
])
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str,
                                          expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert str(path) in message
    for part in expected:
        assert part in message
    assert caught.value.code is ErrorCode.CONFIG_INVALID


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml"):
        load_config(tmp_path / "nope.toml", environ={})


def test_environment_and_override_errors_name_their_source() -> None:
    with pytest.raises(ConfigError, match=r"environment variable TIDEMQ_STORE_FLUSH.*store\.flush"):
        load_config(environ={"TIDEMQ_STORE_FLUSH": "later"})
    with pytest.raises(ConfigError, match=r"TIDEMQ_STORE_BOGUS.*unknown key store\.bogus"):
        load_config(environ={"TIDEMQ_STORE_BOGUS": "1"})
    with pytest.raises(ConfigError, match=r"--set store\.segment_size_bytes"):
        load_config(environ={}, overrides={"store.segment_size_bytes": "1KiB"})
    with pytest.raises(ConfigError, match=r"--set nothing\.flush: unknown section"):
        load_config(environ={}, overrides={"nothing.flush": "sync"})
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(environ={}, overrides={"store": "sync"})


def test_store_config_validates_directly() -> None:
    with pytest.raises(ValueError, match=r"store\.append_batch_bytes_max"):
        StoreConfig(max_message_size_bytes=1 << 20, append_batch_bytes_max=1 << 10)


@pytest.mark.parametrize(("setting", "flush", "zero_fills"), [
    ("auto", "sync", True), ("auto", "async", False), ("always", "async", True),
    ("never", "sync", False)])
def test_segments_are_zero_filled_as_configured(setting: str, flush: str,
                                                zero_fills: bool) -> None:
    config = load_config(environ={}, overrides={"store.zero_fill_segments": setting,
                                                "store.flush": flush})
    assert config.store.zero_fills_segments is zero_fills
    with pytest.raises(ConfigError, match=r"store\.zero_fill_segments"):
        load_config(environ={}, overrides={"store.zero_fill_segments": "true"})
