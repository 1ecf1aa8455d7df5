"""The knobs and the statistics of one connection, for either end (see ``_session``)."""

from __future__ import annotations

from dataclasses import dataclass

from tidemq.common.units import KIB, MIB
from tidemq.protocol.frame import DEFAULT_LIMITS, FrameLimits


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """The limits of one connection, either end. Units are in the names."""

    frame_limits: FrameLimits = DEFAULT_LIMITS
    max_in_flight_requests: int = 1024
    """Requests from the peer handled at once; beyond it the answer is SYSTEM_BUSY."""
    max_outstanding_requests: int = 4096
    """Our requests awaiting responses; beyond it ``request()`` waits for a slot."""
    send_high_water_bytes: int = 4 * MIB
    receive_size_bytes: int = 64 * KIB
    flush_on_close_timeout_ms: int = 1000
    frame_stall_timeout_ms: int = 30_000
    """A frame that started arriving must be whole within this time, or the connection is
    dropped (a peer that stops mid-frame would otherwise hold it forever). Idle time between
    frames is not limited here."""
    handler_grace_ms: int = 5_000
    """When the peer closes its end, requests already received may run this long to
    finish (a oneway send must still be stored); then they are cancelled."""

    def __post_init__(self) -> None:
        for name in ("max_in_flight_requests", "max_outstanding_requests",
                     "send_high_water_bytes", "receive_size_bytes", "frame_stall_timeout_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.handler_grace_ms < 0:
            raise ValueError("handler_grace_ms must not be negative")
        if self.flush_on_close_timeout_ms < 0:
            raise ValueError("flush_on_close_timeout_ms must not be negative")


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    outstanding_requests: int
    """Our requests awaiting a response."""
    in_flight_requests: int
    """The peer's requests being handled."""
    queued_send_bytes: int
    closed: bool
