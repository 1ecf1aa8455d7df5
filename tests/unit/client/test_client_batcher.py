"""The producer's send batcher against a scripted pool: coalescing, order, errors, cancels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio.testing

from tidemq.client._batcher import QueuedSend, SendBatcher
from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._message import SendResult
from tidemq.client._pending import PendingSend, complete_stored
from tidemq.client._pool import BrokerPool, CallOutcome
from tidemq.client._routes import MessageQueue
from tidemq.errors import MessageIllegal, SystemBusy, TideError
from tidemq.net import ConnectionClosed
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Body, Fields, Response

QUEUE = MessageQueue("orders", "b1:1", 0)
DRAFT = 4
"""Every test draft is 4 bytes, so the fake broker counts drafts by length."""


class FakePool:
    """Stores drafts per queue; each call waits until the test opens the gate. With
    ``nowait``, requests are also taken through ``call_nowait`` (answered through their
    callback by a responder task, as a connection's reader would); without, only ``call``."""

    def __init__(self, nowait: bool = False) -> None:
        self.nowait = nowait
        self.calls: list[tuple[RequestCode, list[bytes]]] = []
        self.gate = trio.Event()
        self.offsets: dict[int, int] = {}
        self.stored: list[bytes] = []
        self.fail_with: list[Exception | None] = []
        """Scripted outcomes of the next calls (None: succeed)."""
        self.illegal = b"BAD!"
        self.unanswered: list[tuple[Fields, list[bytes], CallOutcome]] = []
        self.arrived = trio.Event()

    def _drafts(self, code: RequestCode, body: Body) -> list[bytes]:
        data = bytes(body)
        drafts = [data[i:i + DRAFT] for i in range(0, len(data), DRAFT)]
        self.calls.append((code, drafts))
        return drafts

    def _answer(self, fields: Fields, drafts: list[bytes]) -> Response:
        if self.fail_with and (error := self.fail_with.pop(0)) is not None:
            raise error
        if self.illegal in drafts:
            raise MessageIllegal("a record is too large")
        queue_id = cast(int, fields["queue_id"])
        first = self.offsets.get(queue_id, 0)
        self.offsets[queue_id] = first + len(drafts)
        self.stored.extend(drafts)
        return Response(0, 1, {"queue_id": queue_id, "first_queue_offset": first,
                               "msg_id_prefix": "id",
                               "commit_offsets": [first + i for i in range(len(drafts))],
                               "store_timestamp_ms": 1})

    async def call(self, address: str, code: RequestCode, fields: Fields, body: Body = b"",
                   *, timeout_ms: int | None = None) -> Response:
        drafts = self._drafts(code, body)
        await self.gate.wait()
        return self._answer(fields, drafts)

    def call_nowait(self, address: str, code: RequestCode, fields: Fields, body: Body,
                    on_outcome: CallOutcome, *, timeout_ms: int | None = None
                    ) -> tuple[object, int] | None:
        if not self.nowait:
            return None
        self.unanswered.append((fields, self._drafts(code, body), on_outcome))
        self.arrived.set()
        return object(), len(self.calls)

    async def respond(self) -> None:
        """The reader of the ``call_nowait`` requests: answers them in order once the gate
        is open; fails what is left with ConnectionClosed when cancelled (closed)."""
        try:
            while True:
                await self.gate.wait()
                while not self.unanswered:
                    self.arrived = trio.Event()
                    await self.arrived.wait()
                fields, drafts, on_outcome = self.unanswered.pop(0)
                try:
                    response = self._answer(fields, drafts)
                except TideError as error:
                    on_outcome(None, error)
                else:
                    on_outcome(response, None)
                await trio.lowlevel.checkpoint()
        finally:
            self.nowait = False  # a closed connection takes no more requests
            left, self.unanswered = self.unanswered, []
            for _, _, on_outcome in left:
                on_outcome(None, ConnectionClosed("closed"))


@pytest.fixture(params=[False, True], ids=["awaited", "callbacks"])
def nowait(request: pytest.FixtureRequest) -> bool:
    """Each test runs with requests awaited by drain tasks, and answered through callbacks
    (the pool's ``call_nowait``)."""
    return cast(bool, request.param)


@asynccontextmanager
async def batcher(nowait: bool, **options: Any) -> AsyncIterator[tuple[SendBatcher, FakePool]]:
    pool = FakePool(nowait)
    owned = OwnedTaskGroup()
    task_group = await owned.enter()
    if nowait:
        task_group.start_soon(pool.respond)
    try:
        yield SendBatcher(cast(BrokerPool, pool), owned, group=None, timeout_ms=1_000,
                          **options), pool
    finally:
        await owned.close()


async def _start_sends(nursery: trio.Nursery, sender: SendBatcher, drafts: list[bytes],
                       results: dict[bytes, SendResult | BaseException]) -> None:
    """Start one send per draft, in this order (each joins its lane before the next)."""

    async def one(draft: bytes) -> None:
        try:
            results[draft] = await sender.send(QUEUE, draft, draft.hex())
        except Exception as error:
            results[draft] = error

    for draft in drafts:
        nursery.start_soon(one, draft)
        await trio.testing.wait_all_tasks_blocked()


async def test_sends_arriving_while_one_is_in_flight_go_out_together_in_order(nowait: bool) -> None:
    drafts = [b"m%03d" % i for i in range(10)]
    results: dict[bytes, SendResult | BaseException] = {}
    async with batcher(nowait) as (sender, pool), trio.open_nursery() as nursery:
        await _start_sends(nursery, sender, drafts, results)
        assert [len(d) for _, d in pool.calls] == [1]  # the first went out at once, alone
        pool.gate.set()
    assert [(code, len(d)) for code, d in pool.calls] == \
        [(RequestCode.SEND_MESSAGE, 1), (RequestCode.SEND_BATCH, 9)]
    assert pool.stored == drafts
    offsets = [cast(SendResult, results[d]).queue_offset for d in drafts]
    assert offsets == list(range(10))
    assert [cast(SendResult, results[d]).msg_id for d in drafts] == \
        [f"id{i:016X}" for i in range(10)]
    assert [cast(SendResult, results[d]).unique_id for d in drafts] == [d.hex() for d in drafts]


async def test_batches_are_bounded_by_count_and_bytes(nowait: bool) -> None:
    drafts = [b"n%03d" % i for i in range(12)]
    results: dict[bytes, SendResult | BaseException] = {}
    async with batcher(nowait, max_messages=4, max_bytes=3 * DRAFT) as (sender, pool), \
            trio.open_nursery() as nursery:
        await _start_sends(nursery, sender, drafts, results)
        pool.gate.set()
    assert [len(d) for _, d in pool.calls] == [1, 3, 3, 3, 2]
    assert pool.stored == drafts
    assert sorted(cast(SendResult, r).queue_offset for r in results.values()) == list(range(12))


async def test_a_failed_batch_fails_each_send_and_later_batches_still_go(nowait: bool) -> None:
    drafts = [b"e%03d" % i for i in range(6)]
    results: dict[bytes, SendResult | BaseException] = {}
    async with batcher(nowait) as (sender, pool), trio.open_nursery() as nursery:
        pool.fail_with = [None, SystemBusy("busy")]
        await _start_sends(nursery, sender, drafts[:4], results)  # 1 in flight, 3 waiting
        pool.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        await _start_sends(nursery, sender, drafts[4:], results)
    assert isinstance(results[drafts[0]], SendResult)
    assert all(isinstance(results[d], SystemBusy) for d in drafts[1:4])
    assert [cast(SendResult, results[d]).queue_offset for d in drafts[4:]] == [1, 2]
    assert pool.stored == [drafts[0], *drafts[4:]]


async def test_an_illegal_draft_fails_alone(nowait: bool) -> None:
    drafts = [b"a000", b"a001", b"BAD!", b"a003"]
    results: dict[bytes, SendResult | BaseException] = {}
    async with batcher(nowait) as (sender, pool), trio.open_nursery() as nursery:
        await _start_sends(nursery, sender, drafts, results)
        pool.gate.set()
    assert isinstance(results[b"BAD!"], MessageIllegal)
    assert [cast(SendResult, results[d]).queue_offset for d in (b"a000", b"a001", b"a003")] \
        == [0, 1, 2]
    assert pool.stored == [b"a000", b"a001", b"a003"]


async def test_cancelled_sends_leave_the_batch_machinery_working(nowait: bool) -> None:
    drafts = [b"c%03d" % i for i in range(6)]
    results: dict[bytes, SendResult | BaseException] = {}
    scopes: dict[bytes, trio.CancelScope] = {}
    finished: list[bytes] = []

    async def cancellable(sender: SendBatcher, draft: bytes) -> None:
        with trio.CancelScope() as scope:
            scopes[draft] = scope
            await sender.send(QUEUE, draft, draft.hex())
            finished.append(draft)

    async with batcher(nowait) as (sender, pool), trio.open_nursery() as nursery:
        for draft in drafts[:3]:  # the first in flight (taken), two waiting (not taken)
            nursery.start_soon(cancellable, sender, draft)
            await trio.testing.wait_all_tasks_blocked()
        assert [len(d) for _, d in pool.calls] == [1]
        for scope in scopes.values():
            scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        await _start_sends(nursery, sender, drafts[3:], results)
        pool.gate.set()
    assert finished == []
    assert pool.stored == [drafts[0], *drafts[3:]]  # the taken one is stored all the same
    assert [cast(SendResult, results[d]).queue_offset for d in drafts[3:]] == [1, 2, 3]


async def test_closing_fails_the_sends_still_waiting(nowait: bool) -> None:
    results: dict[bytes, SendResult | BaseException] = {}
    pool_seen: list[FakePool] = []
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            async with batcher(nowait) as (sender, pool):
                pool_seen.append(pool)
                await _start_sends(nursery, sender, [b"z000", b"z001"], results)
            await trio.testing.wait_all_tasks_blocked()
    assert all(isinstance(r, ConnectionClosed) for r in results.values())
    assert len(results) == 2
    with pytest.raises(RuntimeError):
        await sender.send(QUEUE, b"late", "late")


async def test_awaited_and_submitted_sends_share_a_request_and_each_gets_its_result(
        nowait: bool) -> None:
    answered: list[list[QueuedSend]] = []
    drafts = [b"s%03d" % i for i in range(7)]
    results: dict[bytes, SendResult | BaseException] = {}
    submitted = {draft: PendingSend("orders", draft.hex(), None, draft)
                 for draft in drafts if int(draft[1:]) % 2}
    async with batcher(nowait, on_answered=lambda target, entries: answered.append(entries)) \
            as (sender, pool), trio.open_nursery() as nursery:
        for draft in drafts:  # the first goes out alone; the others share the second request
            if draft in submitted:
                sender.enqueue(QUEUE, submitted[draft])
            else:
                await _start_sends(nursery, sender, [draft], results)
        pool.gate.set()
    assert [len(d) for _, d in pool.calls] == [1, 6]
    assert len(answered) == 1  # once, with the flight
    assert answered[0][0] is submitted[drafts[1]]
    for entries in answered:
        assert complete_stored(entries) == (len(submitted), [])
    for draft, pending in submitted.items():
        results[draft] = pending.result()
    assert [cast(SendResult, results[d]).queue_offset for d in drafts] == list(range(7))
    assert [cast(SendResult, results[d]).unique_id for d in drafts] == [d.hex() for d in drafts]
    assert [cast(SendResult, results[d]).msg_id for d in drafts] == \
        [f"id{i:016X}" for i in range(7)]


async def test_a_failed_request_leaves_its_submitted_sends_for_the_producer_to_retry(
        nowait: bool) -> None:
    answered: list[list[QueuedSend]] = []
    entries = [PendingSend("orders", f"u{i}", None, b"f%03d" % i) for i in range(3)]
    async with batcher(nowait, on_answered=lambda target, flight: answered.append(flight)) \
            as (sender, pool):
        pool.fail_with = [SystemBusy("busy")]
        for entry in entries:  # the first goes out alone, the others wait for it
            sender.enqueue(QUEUE, entry)
            await trio.testing.wait_all_tasks_blocked()
        pool.gate.set()
        await trio.testing.wait_all_tasks_blocked()
    stored, failed = complete_stored([entry for flight in answered for entry in flight])
    assert (stored, [pending.unique_id for pending in failed]) == (2, ["u0"])
    assert isinstance(entries[0]._error, SystemBusy)
    assert not entries[0].done()  # the producer settles it after its retries
    assert [entry.result().queue_offset for entry in entries[1:]] == [0, 1]


async def test_a_send_to_an_idle_lane_goes_out_from_its_own_task() -> None:
    """No drain task for an idle lane: the sender writes its request itself (after one
    schedule point), and the answer comes back through the callback."""
    senders: list[trio.lowlevel.Task] = []
    async with batcher(True) as (sender, pool):
        call_nowait = pool.call_nowait

        def recording(*args: Any, **kwargs: Any) -> tuple[object, int] | None:
            senders.append(trio.lowlevel.current_task())
            return call_nowait(*args, **kwargs)

        pool.call_nowait = recording  # type: ignore[method-assign]
        pool.gate.set()
        with trio.fail_after(5):
            first = await sender.send(QUEUE, b"i000", "u0")
            second = await sender.send(QUEUE, b"i001", "u1")
    assert senders == [trio.lowlevel.current_task()] * 2
    assert (first.queue_offset, second.queue_offset) == (0, 1)
    assert sender.requests == 2
