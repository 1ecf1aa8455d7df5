"""The waiter table (tidemq.net._pending): deadlines, slots, failure. Runs on Trio's
autojumping mock clock, so 30-second timeouts take no real time."""

from __future__ import annotations

import anyio
import pytest
import trio
import trio.testing

from tidemq.net import ConnectionClosed, RequestTimeout
from tidemq.net._pending import PendingRequests, Waiter
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Response


async def outcome(waiter: Waiter) -> object:
    try:
        return await waiter.wait()
    except (RequestTimeout, ConnectionClosed) as exc:
        return exc


async def test_requests_time_out_at_their_own_deadlines(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pending = PendingRequests(max_outstanding=10)
    start = trio.current_time()
    results: dict[int, tuple[float, object]] = {}

    async def watch(opaque: int, waiter: Waiter) -> None:
        result = await outcome(waiter)
        results[opaque] = (trio.current_time() - start, result)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pending.expire_forever)
        await trio.testing.wait_all_tasks_blocked()  # the sweeper now waits on an empty heap
        slow = pending.add(1, RequestCode.PULL_MESSAGE, start + 30, 30_000)
        nursery.start_soon(watch, 1, slow)
        await trio.sleep(1)
        # An earlier deadline than the one the sweeper sleeps towards must re-arm it.
        fast = pending.add(2, RequestCode.HEARTBEAT, start + 2, 1_000)
        nursery.start_soon(watch, 2, fast)
        answered = pending.add(3, RequestCode.HEARTBEAT, start + 2, 1_000)
        nursery.start_soon(watch, 3, answered)
        await trio.sleep(0.5)
        assert pending.complete(Response(0, 3))
        await trio.sleep(40)
        nursery.cancel_scope.cancel()
    elapsed_fast, fast_error = results[2]
    elapsed_slow, slow_error = results[1]
    assert elapsed_fast == pytest.approx(2)
    assert isinstance(fast_error, RequestTimeout)
    assert str(fast_error) == "no response to HEARTBEAT within 1000 ms"
    assert elapsed_slow == pytest.approx(30)
    assert isinstance(slow_error, RequestTimeout)
    assert results[3][1] == Response(0, 3)
    assert not pending.complete(Response(0, 2))  # a late answer finds no waiter


async def test_finished_requests_do_not_pile_up_in_the_deadline_heap() -> None:
    pending = PendingRequests(max_outstanding=10)
    now = anyio.current_time()
    pending.add(0, RequestCode.PULL_MESSAGE, now + 30, 30_000)  # stays outstanding
    for opaque in range(1, 10_001):
        pending.add(opaque, RequestCode.HEARTBEAT, now + 30, 30_000)
        assert pending.complete(Response(0, opaque))
        pending.finish(opaque)
    assert len(pending) == 1
    assert len(pending._deadlines) <= 2 * 1 + 64 + 1  # rebuilt, not grown to 10,001


async def test_slots_bound_outstanding_requests() -> None:
    pending = PendingRequests(max_outstanding=2)
    now = anyio.current_time()
    pending.add(1, RequestCode.HEARTBEAT, now + 30, 30_000)
    pending.add(2, RequestCode.HEARTBEAT, now + 30, 30_000)
    assert not pending.has_free_slot()
    freed = anyio.Event()

    async def wait_for_slot() -> None:
        await pending.wait_slot_freed()
        freed.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(wait_for_slot)
            await anyio.wait_all_tasks_blocked()
            assert not freed.is_set()
            pending.finish(1)
            await freed.wait()
    assert pending.has_free_slot()


async def test_fail_all_fails_every_waiter_with_its_own_copy() -> None:
    pending = PendingRequests(max_outstanding=10)
    now = anyio.current_time()
    waiters = [pending.add(opaque, RequestCode.HEARTBEAT, now + 30, 30_000)
               for opaque in range(3)]
    reason = ConnectionClosed("peer closed the connection")
    pending.fail_all(reason)
    with anyio.fail_after(5):
        errors = [await outcome(waiter) for waiter in waiters]
    assert len(pending) == 0
    assert all(isinstance(error, ConnectionClosed) for error in errors)
    assert len({id(error) for error in errors}) == 3  # no shared traceback object
    assert all(str(error) == "peer closed the connection" for error in errors)
