"""Configuration: frozen dataclasses per role, loaded from TOML.

Precedence, lowest first: the dataclass defaults, the TOML file, ``TIDEMQ_<SECTION>_<KEY>``
environment variables (``TIDEMQ_STORE_FLUSH=sync``), then CLI overrides (``--set
store.flush=sync``). Every value is validated: an unknown section or key, a wrong type or an
out-of-range value raises ``ConfigError`` naming the key and where it came from.

Units go last in names (before a ``_max``/``_min`` qualifier). Size fields (``*_bytes``,
``*_bytes_max``) accept an integer or a string such as ``"64MiB"``; duration fields
(``*_ms``, ``*_ms_max``) accept an integer or a string such as ``"10s"``.
``config/dev.toml`` documents every option in place.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tidemq.common.units import GIB, HOUR_MS, MIB, parse_duration_ms, parse_size_bytes
from tidemq.errors import ConfigError

FlushMode = Literal["async", "sync"]
NameServerMode = Literal["peers", "primary", "chain"]
ReplicationAck = Literal["async", "semi-sync", "sync"]
ZeroFill = Literal["auto", "always", "never"]


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """The storage engine (DESIGN.md section 3)."""

    data_dir: str = "./data"
    segment_size_bytes: int = GIB
    consume_queue_segment_entries: int = 300_000
    flush: FlushMode = "async"
    flush_interval_ms: int = 500
    sync_flush_timeout_ms: int = 5_000
    max_message_size_bytes: int = 4 * MIB
    append_batch_bytes_max: int = 4 * MIB
    index_slots: int = 500_000
    index_entries_per_file: int = 2_000_000
    retention_ms: int = 72 * HOUR_MS
    disk_usage_ratio_max: float = 0.75
    retention_check_interval_ms: int = 10_000
    checkpoint_interval_ms: int = 1_000
    preallocate_next_segment: bool = True
    zero_fill_segments: ZeroFill = "auto"
    """Prepare commit-log segments by writing zeros rather than ``posix_fallocate``:
    "auto" does with ``flush = "sync"`` only (see docs/decisions.md)."""

    @property
    def zero_fills_segments(self) -> bool:
        return self.zero_fill_segments == "always" or \
            (self.zero_fill_segments == "auto" and self.flush == "sync")

    def __post_init__(self) -> None:
        _require(self.segment_size_bytes >= 64 * 1024, "store.segment_size_bytes", ">= 64KiB")
        _require(self.segment_size_bytes % 4096 == 0, "store.segment_size_bytes",
                 "a multiple of 4096")
        _require(self.consume_queue_segment_entries >= 16,
                 "store.consume_queue_segment_entries", ">= 16")
        _require(self.flush in ("async", "sync"), "store.flush", '"async" or "sync"')
        _require(self.zero_fill_segments in ("auto", "always", "never"),
                 "store.zero_fill_segments", '"auto", "always" or "never"')
        _require(self.flush_interval_ms >= 1, "store.flush_interval_ms", ">= 1")
        _require(self.sync_flush_timeout_ms >= 1, "store.sync_flush_timeout_ms", ">= 1")
        _require(0 < self.max_message_size_bytes <= self.segment_size_bytes // 2,
                 "store.max_message_size_bytes", "> 0 and <= half a segment")
        _require(self.append_batch_bytes_max >= self.max_message_size_bytes,
                 "store.append_batch_bytes_max", ">= store.max_message_size_bytes")
        _require(self.index_slots >= 16, "store.index_slots", ">= 16")
        _require(self.index_entries_per_file >= 16, "store.index_entries_per_file", ">= 16")
        _require(self.retention_ms >= 1, "store.retention_ms", ">= 1")
        _require(0.0 < self.disk_usage_ratio_max <= 1.0, "store.disk_usage_ratio_max",
                 "in (0, 1]")
        _require(self.retention_check_interval_ms >= 1, "store.retention_check_interval_ms",
                 ">= 1")
        _require(self.checkpoint_interval_ms >= 1, "store.checkpoint_interval_ms", ">= 1")


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """A broker node: identity and listener."""

    cluster: str = "DefaultCluster"
    group: str = "broker-a"
    host: str = "127.0.0.1"
    port: int = 10911
    auto_create_topics: bool = False
    default_queue_count: int = 4
    hello_timeout_ms: int = 10_000
    frame_stall_timeout_ms: int = 30_000
    max_in_flight_requests: int = 1024
    namesrv_addresses: tuple[str, ...] = ()
    namesrv_heartbeat_interval_ms: int = 10_000

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "broker.port", "in 0..65535")
        _require(all(_is_address(a) for a in self.namesrv_addresses),
                 "broker.namesrv_addresses", "a list of host:port")
        _require(self.namesrv_heartbeat_interval_ms >= 10,
                 "broker.namesrv_heartbeat_interval_ms", ">= 10")
        _require(self.hello_timeout_ms >= 1, "broker.hello_timeout_ms", ">= 1")
        _require(self.frame_stall_timeout_ms >= 1, "broker.frame_stall_timeout_ms", ">= 1")
        _require(self.max_in_flight_requests >= 1, "broker.max_in_flight_requests", ">= 1")
        _require(1 <= self.default_queue_count <= 1024, "broker.default_queue_count",
                 "in 1..1024")
        _require(bool(self.cluster), "broker.cluster", "non-empty")
        _require(bool(self.group), "broker.group", "non-empty")


@dataclass(frozen=True, slots=True)
class NameServerConfig:
    """A name server node (DESIGN.md section 7) and, with ``members``, its cluster."""

    host: str = "127.0.0.1"
    port: int = 9876
    mode: NameServerMode = "peers"
    members: tuple[str, ...] = ()
    """Every name server of the cluster as ``host:port``, this one included, in the order
    that decides who takes over (primary) or the chain's order. Empty: a lone name server."""
    ack: ReplicationAck = "semi-sync"
    broker_timeout_ms: int = 30_000
    eviction_check_interval_ms: int = 1_000
    ping_interval_ms: int = 500
    peer_timeout_ms: int = 2_000
    replication_timeout_ms: int = 3_000
    hello_timeout_ms: int = 10_000
    frame_stall_timeout_ms: int = 30_000
    max_in_flight_requests: int = 1024

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "namesrv.port", "in 0..65535")
        _require(self.mode in ("peers", "primary", "chain"), "namesrv.mode",
                 '"peers", "primary" or "chain"')
        _require(self.ack in ("async", "semi-sync", "sync"), "namesrv.ack",
                 '"async", "semi-sync" or "sync"')
        _require(all(_is_address(a) for a in self.members), "namesrv.members",
                 "a list of host:port")
        _require(len(set(self.members)) == len(self.members), "namesrv.members",
                 "free of duplicates")
        for key in ("broker_timeout_ms", "eviction_check_interval_ms", "ping_interval_ms",
                    "peer_timeout_ms", "replication_timeout_ms", "hello_timeout_ms",
                    "frame_stall_timeout_ms", "max_in_flight_requests"):
            _require(getattr(self, key) >= 1, f"namesrv.{key}", ">= 1")
        _require(self.peer_timeout_ms > self.ping_interval_ms, "namesrv.peer_timeout_ms",
                 "> namesrv.ping_interval_ms")


@dataclass(frozen=True, slots=True)
class TidemqConfig:
    """Everything one process reads. Each section is one role's dataclass."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    namesrv: NameServerConfig = field(default_factory=NameServerConfig)


def _is_address(address: object) -> bool:
    if not isinstance(address, str):
        return False
    host, separator, port = address.rpartition(":")
    return bool(separator and host and port.isdigit() and 0 < int(port) < 65536)


def _require(condition: bool, key: str, expectation: str) -> None:
    if not condition:
        raise ValueError(f"{key} must be {expectation}")


ENV_PREFIX = "TIDEMQ_"
_SIZE_KEY = re.compile(r"_bytes(_max|_min)?$")
_DURATION_KEY = re.compile(r"_ms(_max|_min)?$")


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> TidemqConfig:
    """Load a config: defaults, then ``path`` (TOML), then environment, then ``overrides``.

    Args:
        path: a TOML file, or None for defaults only.
        environ: the environment to read ``TIDEMQ_<SECTION>_<KEY>`` from (default os.environ).
        overrides: ``{"store.flush": "sync"}`` from the command line.

    Raises:
        ConfigError: naming the key and its source, for an unknown key or a bad value.
    """
    raw: dict[str, dict[str, tuple[Any, str]]] = {}
    sections = {f.name: f for f in dataclasses.fields(TidemqConfig)}
    if path is not None:
        source = os.fspath(path)
        try:
            with open(source, "rb") as file:
                document = tomllib.load(file)
        except OSError as error:
            raise ConfigError(f"cannot read config file {source}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source}: not valid TOML: {error}") from None
        for section_name, table in document.items():
            if section_name not in sections:
                raise ConfigError(f"{source}: unknown section [{section_name}]")
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: [{section_name}] must be a table")
            for key, value in table.items():
                raw.setdefault(section_name, {})[key] = (value, source)
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section_name, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section_name not in sections:
            continue  # TIDEMQ_* variables of other tools (e.g. TIDEMQ_SEED in tests)
        raw.setdefault(section_name, {})[key] = (value, f"environment variable {name}")
    for dotted, value in (overrides or {}).items():
        section_name, _, key = dotted.partition(".")
        if section_name not in sections or not key:
            raise ConfigError(f"--set {dotted}: unknown section (use section.key)")
        raw.setdefault(section_name, {})[key] = (value, f"--set {dotted}")
    built: dict[str, Any] = {}
    for section_name, section_field in sections.items():
        section_type = _section_type(section_field)
        built[section_name] = _build_section(section_name, section_type,
                                             raw.get(section_name, {}))
    return TidemqConfig(**built)


def _section_type(section_field: dataclasses.Field[Any]) -> type[Any]:
    hints = typing.get_type_hints(TidemqConfig)
    section_type = hints[section_field.name]
    assert isinstance(section_type, type)
    return section_type


def _build_section(name: str, section_type: type[Any],
                   values: Mapping[str, tuple[Any, str]]) -> Any:
    hints = typing.get_type_hints(section_type)
    known = {f.name for f in dataclasses.fields(section_type)}
    kwargs: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, (value, source) in values.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {name}.{key}")
        try:
            kwargs[key] = _coerce(key, hints[key], value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{source}: {name}.{key}: {error}") from None
        sources[key] = source
    try:
        return section_type(**kwargs)
    except ValueError as error:
        message = str(error)
        key = message.split(" ", 1)[0].partition(".")[2]
        # A rule across keys (a >= b) may fail on a default because of a value that was set:
        # then name where the section's set values came from.
        source = sources.get(key) or ", ".join(sorted(set(sources.values()))) or \
            "default value"
        raise ConfigError(f"{source}: {message}") from None


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Turn a TOML or string value into the field's type, or raise ValueError/TypeError."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is tuple:
        if isinstance(value, str):  # an environment variable or --set: comma-separated
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of strings, got {value!r}")
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError("union-typed config fields are not supported")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise TypeError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            if _SIZE_KEY.search(key):
                return parse_size_bytes(value)
            if _DURATION_KEY.search(key):
                return parse_duration_ms(value)
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value)
        raise TypeError(f"expected a number, got {value!r}")
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r}")
