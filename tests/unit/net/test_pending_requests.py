"""The waiter table (tidemq.net._pending): deadlines, slots, failure. Runs on Trio's
autojumping mock clock, so 30-second timeouts take no real time."""

from __future__ import annotations

import anyio
import pytest
import trio
import trio.testing

from tidemq.errors import TideError
from tidemq.net import ConnectionClosed, RequestTimeout, ResponseCallback
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


async def test_callback_waiters_hand_over_their_outcome_and_free_their_slot_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No task waits on a callback waiter: whoever completes it (the reader, the expiry
    task, fail_all) frees its slot and calls it once; ``forget`` withdraws one."""
    pending = PendingRequests(max_outstanding=2)
    now = trio.current_time()
    outcomes: dict[int, list[object]] = {1: [], 2: [], 3: [], 4: [], 5: []}
    slot_free_in_callback: list[bool] = []

    def callback(opaque: int) -> ResponseCallback:
        def on_outcome(response: Response | None, error: TideError | None) -> None:
            slot_free_in_callback.append(pending.has_free_slot())
            outcomes[opaque].append(response if error is None else error)
        return on_outcome

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pending.expire_forever)
        pending.add_callback(1, RequestCode.PULL_MESSAGE, now + 30, 30_000, callback(1))
        pending.add_callback(2, RequestCode.HEARTBEAT, now + 2, 2_000, callback(2))
        assert not pending.has_free_slot()
        assert pending.complete(Response(0, 1))
        assert outcomes[1] == [Response(0, 1)]
        await trio.sleep(3)
        assert isinstance(outcomes[2][0], RequestTimeout)
        assert len(pending) == 0
        assert pending.has_free_slot()
        pending.add_callback(3, RequestCode.HEARTBEAT, now + 60, 1_000, callback(3))
        assert pending.forget(3)
        assert not pending.forget(3)
        assert not pending.complete(Response(0, 3))  # a late answer finds no waiter
        pending.add_callback(4, RequestCode.HEARTBEAT, now + 60, 1_000, callback(4))
        pending.add_callback(5, RequestCode.HEARTBEAT, now + 60, 1_000, callback(5))
        pending.fail_all(ConnectionClosed("peer closed the connection"))
        nursery.cancel_scope.cancel()
    assert outcomes[3] == []
    assert [type(outcomes[n][0]) for n in (4, 5)] == [ConnectionClosed, ConnectionClosed]
    assert outcomes[4][0] is not outcomes[5][0]  # each its own copy
    assert slot_free_in_callback == [True, True, True, True]
    # both slots are free again: two more fit
    pending.add_callback(6, RequestCode.HEARTBEAT, now + 60, 1_000, callback(1))
    pending.add_callback(7, RequestCode.HEARTBEAT, now + 60, 1_000, callback(1))
    assert not pending.has_free_slot()


def test_a_failing_callback_is_logged_and_the_rest_are_still_called(
        caplog: pytest.LogCaptureFixture) -> None:
    pending = PendingRequests(max_outstanding=4)
    called: list[int] = []

    def broken(response: Response | None, error: TideError | None) -> None:
        raise ValueError("bug in a callback")

    def fine(response: Response | None, error: TideError | None) -> None:
        called.append(1)

    pending.add_callback(1, RequestCode.HEARTBEAT, 1e9, 1_000, broken)
    pending.add_callback(2, RequestCode.HEARTBEAT, 1e9, 1_000, fine)
    pending.fail_all(ConnectionClosed("closed"))
    assert called == [1]
    assert "response_callback_failed" in caplog.text
    assert pending.has_free_slot()
    assert len(pending) == 0
