"""Long polling's waiters (tidemq.broker.long_polling): who wakes, who is answered from the
notify, and what notify reports."""

from __future__ import annotations

import trio
import trio.testing

from tidemq.broker.long_polling import PullWaiters, PullWake


async def test_notify_wakes_the_pulls_of_its_queue_and_says_so() -> None:
    waiters = PullWaiters()
    woken: list[PullWake] = []

    async def pull() -> None:
        woken.append(await waiters.wait("orders", 1, 60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull)
        nursery.start_soon(pull)
        await trio.testing.wait_all_tasks_blocked()
        assert waiters.waiting == 2
        assert not waiters.notify("orders", 0)  # another queue: nobody parked there
        assert waiters.notify("orders", 1)  # woken, and they answer in their own tasks
    assert woken == [PullWake.NOTIFIED, PullWake.NOTIFIED]
    assert waiters.waiting == 0
    assert not waiters.notify("orders", 1)  # both left: nobody to wake now


async def test_notify_answers_a_pull_on_the_spot_when_it_can() -> None:
    waiters = PullWaiters()
    calls: list[str] = []
    woken: list[PullWake] = []

    async def pull(name: str, answers: bool) -> None:
        def answer_now() -> bool:
            calls.append(name)
            return answers
        woken.append(await waiters.wait("orders", 0, 60, answer_now))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull, "answered", True)
        await trio.testing.wait_all_tasks_blocked()
        assert not waiters.notify("orders", 0)  # answered here: none left to answer
        assert calls == ["answered"]  # during notify, not when the pull's task runs
    assert woken == [PullWake.ANSWERED]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull, "filtered", False)
        await trio.testing.wait_all_tasks_blocked()
        assert waiters.notify("orders", 0)  # nothing to answer with: it reads again itself
    assert woken[1:] == [PullWake.NOTIFIED]


async def test_a_failing_answer_leaves_the_pull_to_its_own_task() -> None:
    waiters = PullWaiters()
    woken: list[PullWake] = []

    def answer_now() -> bool:
        raise RuntimeError("the store broke")

    async def pull() -> None:
        woken.append(await waiters.wait("orders", 0, 60, answer_now))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull)
        await trio.testing.wait_all_tasks_blocked()
        assert waiters.notify("orders", 0)  # the sender never sees the error
    assert woken == [PullWake.NOTIFIED]


async def test_a_pull_nobody_notifies_times_out_and_is_forgotten(
        autojump_clock: trio.abc.Clock) -> None:
    waiters = PullWaiters()
    answered: list[bool] = []

    def answer_now() -> bool:
        answered.append(True)
        return True

    assert await waiters.wait("orders", 0, 5, answer_now) is PullWake.TIMED_OUT
    assert waiters.waiting == 0
    assert not waiters.notify("orders", 0)  # gone: its handler must not answer twice
    assert answered == []
