"""Long polling's waiters (tidemq.broker.long_polling): who wakes, and what notify reports."""

from __future__ import annotations

import trio
import trio.testing

from tidemq.broker.long_polling import PullWaiters


async def test_notify_wakes_the_pulls_of_its_queue_and_says_so() -> None:
    waiters = PullWaiters()
    woken: list[bool] = []

    async def pull() -> None:
        woken.append(await waiters.wait("orders", 1, 60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull)
        nursery.start_soon(pull)
        await trio.testing.wait_all_tasks_blocked()
        assert waiters.waiting == 2
        assert not waiters.notify("orders", 0)  # another queue: nobody parked there
        assert waiters.notify("orders", 1)
    assert woken == [True, True]
    assert waiters.waiting == 0
    assert not waiters.notify("orders", 1)  # both left: nobody to wake now


async def test_a_pull_nobody_notifies_times_out(autojump_clock: trio.abc.Clock) -> None:
    waiters = PullWaiters()
    assert not await waiters.wait("orders", 0, 5)
    assert waiters.waiting == 0
