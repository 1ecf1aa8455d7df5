"""The consumer's local buffer: pulled messages wait here for a receiver.

A deque plus a wake-up event rather than a memory channel, for one property: taking an
item is synchronous once the waiter wakes, so a receiver cancelled while waiting never takes
(and so never loses) a message, on Trio and on asyncio alike. ``put_front_nowait`` lets a
released message go first again. There is no size bound here: the queue workers bound what
they pull (a prefetch per queue), which bounds the inbox.
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar, final

import anyio
import anyio.lowlevel

T = TypeVar("T")


@final
class Inbox(Generic[T]):
    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._wakeup = anyio.Event()
        self._waiting = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        """Receivers waiting in ``get`` for an item (the next put wakes them)."""
        return self._waiting

    def put_nowait(self, item: T) -> bool:
        """Append ``item``; False (and dropped) once closed."""
        if self._closed:
            return False
        self._items.append(item)
        self._wake()
        return True

    def put_many_nowait(self, items: list[T]) -> bool:
        """Append ``items`` in order (one wake-up); False (and dropped) once closed."""
        if self._closed:
            return False
        self._items.extend(items)
        self._wake()
        return True

    def put_front_nowait(self, item: T) -> bool:
        """Put ``item`` first in line; False (and dropped) once closed."""
        if self._closed:
            return False
        self._items.appendleft(item)
        self._wake()
        return True

    def get_nowait(self) -> T | None:
        """The next item, or None when there is none right now."""
        return self._items.popleft() if self._items else None

    async def get(self) -> T:
        """Wait for the next item.

        Raises:
            anyio.EndOfStream: the inbox was closed (items left in it are still returned
                first).
        """
        await anyio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            event = self._wakeup
            self._waiting += 1
            try:
                await event.wait()
            finally:
                self._waiting -= 1
        return self._items.popleft()

    def close(self) -> None:
        """Accept no more items; wake every waiter."""
        self._closed = True
        self._wakeup.set()

    def _wake(self) -> None:
        if self._waiting:
            self._wakeup.set()
            self._wakeup = anyio.Event()
