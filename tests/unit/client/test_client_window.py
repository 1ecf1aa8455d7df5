"""The producer's in-flight window: a bound, FIFO hand-over, no slot lost to cancellation."""

from __future__ import annotations

import trio
import trio.testing

from tidemq.client._window import InFlightWindow


async def test_at_most_size_inside_and_fifo_hand_over() -> None:
    window = InFlightWindow(2)
    inside = 0
    most = 0
    order: list[int] = []
    release = trio.Event()

    async def user(index: int) -> None:
        nonlocal inside, most
        async with window:
            order.append(index)
            inside += 1
            most = max(most, inside)
            await release.wait()
            inside -= 1

    async with trio.open_nursery() as nursery:
        for index in range(6):
            nursery.start_soon(user, index)
            await trio.testing.wait_all_tasks_blocked()
        assert inside == 2
        assert window.in_use == 2
        release.set()
    assert most == 2
    assert sorted(order) == [0, 1, 2, 3, 4, 5]
    assert window.free == 2


async def test_waiters_get_the_slot_in_arrival_order() -> None:
    window = InFlightWindow(1)
    order: list[int] = []
    leave = [trio.Event() for _ in range(5)]

    async def user(index: int) -> None:
        async with window:
            order.append(index)
            await leave[index].wait()

    async with trio.open_nursery() as nursery:
        for index in range(5):
            nursery.start_soon(user, index)
            await trio.testing.wait_all_tasks_blocked()
        for index in range(5):  # one at a time: only the next in line can run
            await trio.testing.wait_all_tasks_blocked()
            assert order == list(range(index + 1))
            leave[index].set()


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    window = InFlightWindow(1)
    holder_done = trio.Event()

    async def holder() -> None:
        async with window:
            await holder_done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                async with window:
                    raise AssertionError("entered a full window")
            except trio.Cancelled:
                pass
        # handed a slot and cancelled at the same moment: the slot goes on
        waiter_scope = trio.CancelScope()

        async def waiter() -> None:
            with waiter_scope:
                async with window:
                    raise AssertionError("should have been cancelled first")

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        holder_done.set()  # releases: the slot is handed to the waiter...
        waiter_scope.cancel()  # ...which is cancelled before it runs
    assert window.free == 1
    async with window:
        assert window.free == 0


async def test_releasing_many_hands_slots_to_waiters_first_then_frees_the_rest() -> None:
    window = InFlightWindow(3)
    assert all(window.take_nowait() for _ in range(3))
    got: list[int] = []

    async def waiter(index: int) -> None:
        await window.acquire()
        got.append(index)

    async with trio.open_nursery() as nursery:
        for index in range(2):
            nursery.start_soon(waiter, index)
            await trio.testing.wait_all_tasks_blocked()
        window.release_many(1)  # to the first waiter (woken tasks run in any order: one)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [0]
        window.release_many(3)  # one to the other waiter; two are free
    assert got == [0, 1]
    assert (window.free, window.in_use) == (2, 1)
