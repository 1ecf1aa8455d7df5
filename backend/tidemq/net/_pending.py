"""Our requests awaiting responses on one connection: waiters, slots and deadlines.

Each request sent registers a waiter under its opaque id; the reader completes it with the
response, and the requesting task wakes up::

    waiters   {opaque: waiter}                      at most max_outstanding at once (slots)
    deadlines heap of (deadline, opaque)            one expiry task per connection

Timeouts. A cancel scope per request is the usual Trio way, but with 1,000 requests in flight
it cost a quarter of the connection's throughput (measured with
benchmarks/net_echo_bench.py). So, like RocketMQ's scan of its response table, one task per
connection sleeps until the earliest deadline and fails what is due with ``RequestTimeout``.
A finished request leaves its heap entry behind; such entries are skipped when popped, and
the heap is rebuilt from the live waiters whenever it grows past twice their number, so it
stays O(outstanding) in size at O(1) amortized cost per request.

Resource handling: a waiter leaves the table when its response arrives, its deadline passes,
its task is cancelled (the caller's ``finish`` in a ``finally``), or the connection fails
(``fail_all``). Nothing here does I/O.
"""

from __future__ import annotations

import heapq
from typing import final

import anyio

from tidemq.errors import TideError
from tidemq.net._errors import RequestTimeout
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Response

_HEAP_SLACK = 64


def fresh_copy(error: TideError) -> TideError:
    """A new exception like ``error``. One error may fail many waiters; raising a copy in each
    task keeps their tracebacks from piling up on one shared object."""
    copy = type(error)(error.remark)
    copy.__cause__ = error.__cause__
    return copy


@final
class Waiter:
    __slots__ = ("_done", "_error", "_response", "code", "deadline", "timeout_ms")

    def __init__(self, code: RequestCode, deadline: float, timeout_ms: int) -> None:
        self.code = code
        self.deadline = deadline
        self.timeout_ms = timeout_ms
        self._done = anyio.Event()
        self._response: Response | None = None
        self._error: TideError | None = None

    def succeed(self, response: Response) -> None:
        self._response = response
        self._done.set()

    def fail(self, error: TideError) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> Response:
        """The response; or raises what failed the waiter (RequestTimeout, ConnectionClosed)."""
        await self._done.wait()
        if self._response is not None:
            return self._response
        assert self._error is not None
        raise fresh_copy(self._error)


@final
class PendingRequests:
    """The waiter table of one connection. See the module docstring."""

    def __init__(self, max_outstanding: int) -> None:
        self._max_outstanding = max_outstanding
        self._waiters: dict[int, Waiter] = {}
        self._slots_taken = 0
        self._slot_waiters = 0
        self._slot_freed = anyio.Event()
        self._deadlines: list[tuple[float, int]] = []
        self._earlier_deadline = anyio.Event()

    def __len__(self) -> int:
        return len(self._waiters)

    def has_free_slot(self) -> bool:
        return self._slots_taken < self._max_outstanding

    async def wait_slot_freed(self) -> None:
        self._slot_waiters += 1
        try:
            await self._slot_freed.wait()
        finally:
            self._slot_waiters -= 1

    def add(self, opaque: int, code: RequestCode, deadline: float, timeout_ms: int) -> Waiter:
        """Take a slot (the caller checked ``has_free_slot``) and register a waiter. The
        caller must call ``finish(opaque)`` once done with it, whatever happens."""
        assert self.has_free_slot()
        self._slots_taken += 1
        waiter = Waiter(code, deadline, timeout_ms)
        self._waiters[opaque] = waiter
        if not self._deadlines or deadline < self._deadlines[0][0]:
            self._earlier_deadline.set()
        heapq.heappush(self._deadlines, (deadline, opaque))
        if len(self._deadlines) > 2 * len(self._waiters) + _HEAP_SLACK:
            self._deadlines = [(entry.deadline, key) for key, entry in self._waiters.items()]
            heapq.heapify(self._deadlines)
        return waiter

    def finish(self, opaque: int) -> None:
        """Forget ``opaque``'s waiter (if still there) and free its slot."""
        self._waiters.pop(opaque, None)
        self._slots_taken -= 1
        if self._slot_waiters:
            self._slot_freed.set()
            self._slot_freed = anyio.Event()

    def complete(self, response: Response) -> bool:
        """Hand ``response`` to its waiter; False if none waits (timed out or cancelled)."""
        waiter = self._waiters.pop(response.opaque, None)
        if waiter is None:
            return False
        waiter.succeed(response)
        return True

    def fail_all(self, error: TideError) -> None:
        for waiter in self._waiters.values():
            waiter.fail(error)
        self._waiters.clear()
        self._deadlines.clear()
        self._slot_freed.set()
        self._slot_freed = anyio.Event()

    async def expire_forever(self) -> None:
        """Fail each waiter whose deadline passed with ``RequestTimeout``. Never returns."""
        while True:
            self._earlier_deadline = anyio.Event()
            if not self._deadlines:
                await self._earlier_deadline.wait()
                continue
            with anyio.move_on_at(self._deadlines[0][0]):
                await self._earlier_deadline.wait()  # a new, earlier deadline re-arms us
            self._expire_due(anyio.current_time())

    def _expire_due(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, opaque = heapq.heappop(self._deadlines)
            waiter = self._waiters.pop(opaque, None)
            if waiter is not None:  # else it finished earlier: a stale entry
                waiter.fail(RequestTimeout(
                    f"no response to {waiter.code.name} within {waiter.timeout_ms} ms"
                ))
