"""Long polling: a pull that finds no new message parks here until one arrives.

The send path calls ``notify(topic, queue_id)`` after each append; every parked pull of that
queue wakes at once and reads again. No timer polls the store. Each queue's waiters are a
set of events, so the cost of a notify is the number of waiters on that queue only.
"""

from __future__ import annotations

from typing import final

import trio


@final
class PullWaiters:
    def __init__(self, waiters_max: int = 10_000) -> None:
        self._events: dict[tuple[str, int], trio.Event] = {}
        self._waiting = 0
        self.waiters_max = waiters_max

    @property
    def waiting(self) -> int:
        return self._waiting

    async def wait(self, topic: str, queue_id: int, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a notify on the queue. Returns True if woken.
        With ``waiters_max`` pulls already parked, returns False at once."""
        if self._waiting >= self.waiters_max or timeout_s <= 0:
            return False
        key = (topic, queue_id)
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = trio.Event()
        self._waiting += 1
        try:
            with trio.move_on_after(timeout_s):
                await event.wait()
                return True
            return False
        finally:
            self._waiting -= 1

    def notify(self, topic: str, queue_id: int) -> bool:
        """Wake every pull parked on the queue. Returns whether there was one (a sender may
        then let them answer before its own acknowledgement)."""
        event = self._events.pop((topic, queue_id), None)
        if event is None:
            return False
        event.set()
        return True
