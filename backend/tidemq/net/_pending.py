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

Callback waiters (``add_callback``): no task waits; whoever completes the waiter (the
reader with the response, the expiry task with ``RequestTimeout``, ``fail_all`` with the
connection's error) frees its slot and calls the callback right there, so a response reaches
its user without a task switch. The caller may withdraw one still waiting with ``forget``.

Resource handling: a waiter leaves the table when its response arrives, its deadline passes,
its task is cancelled (the caller's ``finish`` in a ``finally``; ``forget`` for a callback
waiter), or the connection fails (``fail_all``). Nothing here does I/O.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from typing import TypeAlias, final

import anyio

from tidemq.errors import TideError
from tidemq.net._errors import RequestTimeout
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Response

logger = logging.getLogger("tidemq.net.session")

_HEAP_SLACK = 64

ResponseCallback: TypeAlias = Callable[[Response | None, TideError | None], None]
"""Called once with the response (and None), or None and the error that failed the request
(``RequestTimeout``, ``ConnectionClosed``: a copy of its own)."""


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

    callback: ResponseCallback | None = None
    """Never set on a ``Waiter`` (see ``CallbackWaiter``)."""

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
class CallbackWaiter:
    """A waiter no task waits on: completing it calls ``callback`` (see the module
    docstring)."""

    __slots__ = ("callback", "code", "deadline", "timeout_ms")

    def __init__(self, code: RequestCode, deadline: float, timeout_ms: int,
                 callback: ResponseCallback) -> None:
        self.code = code
        self.deadline = deadline
        self.timeout_ms = timeout_ms
        self.callback: ResponseCallback | None = callback

    def succeed(self, response: Response) -> None:
        self._call(response, None)

    def fail(self, error: TideError) -> None:
        self._call(None, fresh_copy(error))

    def _call(self, response: Response | None, error: TideError | None) -> None:
        callback = self.callback
        assert callback is not None
        try:
            callback(response, error)
        except Exception:  # the reader (or the expiry task) must go on
            logger.exception("response_callback_failed", extra={"code": self.code.name})


@final
class PendingRequests:
    """The waiter table of one connection. See the module docstring."""

    def __init__(self, max_outstanding: int) -> None:
        self._max_outstanding = max_outstanding
        self._waiters: dict[int, Waiter | CallbackWaiter] = {}
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
        self._register(opaque, waiter)
        return waiter

    def add_callback(self, opaque: int, code: RequestCode, deadline: float, timeout_ms: int,
                     callback: ResponseCallback) -> None:
        """Take a slot (the caller checked ``has_free_slot``) and register a callback waiter:
        its completion frees the slot, or ``forget(opaque)`` does while it still waits."""
        assert self.has_free_slot()
        self._slots_taken += 1
        self._register(opaque, CallbackWaiter(code, deadline, timeout_ms, callback))

    def _register(self, opaque: int, waiter: Waiter | CallbackWaiter) -> None:
        self._waiters[opaque] = waiter
        deadline = waiter.deadline
        if not self._deadlines or deadline < self._deadlines[0][0]:
            self._earlier_deadline.set()
        heapq.heappush(self._deadlines, (deadline, opaque))
        if len(self._deadlines) > 2 * len(self._waiters) + _HEAP_SLACK:
            self._deadlines = [(entry.deadline, key) for key, entry in self._waiters.items()]
            heapq.heapify(self._deadlines)

    def finish(self, opaque: int) -> None:
        """Forget ``opaque``'s waiter (if still there) and free its slot."""
        self._waiters.pop(opaque, None)
        self._free_slot()

    def forget(self, opaque: int) -> bool:
        """Withdraw ``opaque``'s callback waiter if it still waits (its callback is then
        never called) and free its slot; False if it was completed already."""
        waiter = self._waiters.get(opaque)
        if waiter is None or waiter.callback is None:
            return False
        del self._waiters[opaque]
        self._free_slot()
        return True

    def _free_slot(self) -> None:
        self._slots_taken -= 1
        if self._slot_waiters:
            self._slot_freed.set()
            self._slot_freed = anyio.Event()

    def complete(self, response: Response) -> bool:
        """Hand ``response`` to its waiter; False if none waits (timed out or cancelled)."""
        waiter = self._waiters.pop(response.opaque, None)
        if waiter is None:
            return False
        if waiter.callback is not None:
            self._free_slot()  # first: the callback may send the next request
        waiter.succeed(response)
        return True

    def fail_all(self, error: TideError) -> None:
        waiters = list(self._waiters.values())  # callbacks may add (and be refused)
        self._waiters.clear()
        self._deadlines.clear()
        for waiter in waiters:
            if waiter.callback is not None:
                self._slots_taken -= 1
        self._slot_freed.set()
        self._slot_freed = anyio.Event()
        for waiter in waiters:
            waiter.fail(error)

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
                if waiter.callback is not None:
                    self._free_slot()
                waiter.fail(RequestTimeout(
                    f"no response to {waiter.code.name} within {waiter.timeout_ms} ms"
                ))
