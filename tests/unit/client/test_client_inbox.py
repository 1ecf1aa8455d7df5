"""The consumer's inbox: a receiver cancelled while waiting never takes a message."""

from __future__ import annotations

import anyio
import pytest
import trio

from tidemq.client._inbox import Inbox


async def test_cancelled_receivers_take_nothing_and_order_is_kept() -> None:
    inbox: Inbox[int] = Inbox()
    taken: list[int] = []
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(inbox.get)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    for item in range(3):
        inbox.put_nowait(item)
    inbox.put_front_nowait(-1)
    while (item := inbox.get_nowait()) is not None:
        taken.append(item)
    assert taken == [-1, 0, 1, 2]


async def test_waiters_wake_on_put_and_end_on_close() -> None:
    inbox: Inbox[str] = Inbox()
    got: list[str] = []

    async def receive() -> None:
        got.append(await inbox.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        inbox.put_nowait("a")
        inbox.put_nowait("b")
    assert sorted(got) == ["a", "b"]
    inbox.put_nowait("left")
    inbox.close()
    assert not inbox.put_nowait("late")
    assert await inbox.get() == "left"  # what was there before closing is still delivered
    with pytest.raises(anyio.EndOfStream):
        await inbox.get()
