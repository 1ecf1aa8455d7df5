"""The producer's bounded in-flight window: at most ``size`` sends at once.

Like a semaphore, but free of charge while there is room: taking a slot is a counter
decrement with no scheduling (``anyio.Semaphore`` yields to the scheduler on every acquire,
a few microseconds a send). When the window is full, a send waits in FIFO order and the
slot is handed to it directly on release. A send cancelled while waiting gives back a slot
it was handed at the same moment, so none is lost.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import final

import anyio


@final
class InFlightWindow:
    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self.waiting: deque[anyio.Event] = deque()
        """Senders waiting for a slot, in order (read it, never change it from outside)."""

    def take_nowait(self) -> bool:
        """Take a slot if one is free and nobody waits (no scheduling at all)."""
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return True
        return False

    async def __aenter__(self) -> None:
        if not self.take_nowait():
            await self.acquire()

    async def acquire(self) -> None:
        """Wait for a slot, in arrival order."""
        handed = anyio.Event()
        self.waiting.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():  # a slot arrived as we were cancelled: pass it on
                self.release()
            else:
                self.waiting.remove(handed)
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        if self.waiting:
            self.waiting.popleft().set()  # the slot goes straight to the next sender
        else:
            self.free += 1

    def release_many(self, count: int) -> None:
        """``release`` ``count`` times (a whole answered request at once)."""
        waiting = self.waiting
        while count and waiting:
            waiting.popleft().set()
            count -= 1
        self.free += count

    @property
    def in_use(self) -> int:
        return self.size - self.free
