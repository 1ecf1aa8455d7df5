"""Clocks as inputs. The core never reads the wall clock directly: it takes a ``Clock``.

The store stamps records with ``Clock.now_ms()``; tests pass a ``ManualClock`` to control
time (retention, lookups by time) without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol, final


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


@final
class SystemClock:
    """The real wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@final
class ManualClock:
    """A clock that moves only when told to (for tests and simulations)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def advance(self, delta_ms: int) -> None:
        if delta_ms < 0:
            raise ValueError("a clock never goes back")
        self._now_ms += delta_ms
