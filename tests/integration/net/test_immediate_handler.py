"""``serve(immediate_handler=...)`` on real sockets at 127.0.0.1: requests answered on the
connection's reader task, handed on to workers in order, errors, bursts, a full send queue.

Raw connections write several frames in one ``send`` so that they reach the server in one
read, which is what decides whether a request may be answered on the reader.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from tidemq.errors import ErrorCode, InvalidArgument, TideError
from tidemq.net import (
    HANDLE_LATER,
    ConnectionOptions,
    HandleLater,
    ImmediateHandler,
    ServerConnectionContext,
    connect,
    serve,
)
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import NEED_DATA, Request, Response
from tidemq.protocol.frame import FrameDecoder, encode_request

GUARD_S = 10
WORKER_TASK = "tidemq.net.handler"  # the name the session gives its handler workers


@contextlib.asynccontextmanager
async def running_server(immediate: ImmediateHandler,
                         handler: Callable[[Request, ServerConnectionContext], Any],
                         **serve_options: Any) -> AsyncIterator[tuple[str, int]]:
    async with anyio.create_task_group() as group:
        addresses = await group.start(lambda task_status: serve(
            handler, "127.0.0.1", 0, immediate_handler=immediate, task_status=task_status,
            **serve_options))
        yield addresses[0]
        group.cancel_scope.cancel()


class RawClient:
    """A client that writes frames exactly as told and reads answers one by one."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.next_opaque = 1

    @classmethod
    @contextlib.asynccontextmanager
    async def connected(cls, address: tuple[str, int]) -> AsyncIterator[RawClient]:
        async with await anyio.connect_tcp(*address) as stream:
            client = cls(stream)
            await client.write([Request(RequestCode.HELLO, 0,
                                        {"version": 1, "client_id": "raw"})])
            assert (await client.read(1))[0].ok
            yield client

    def request(self, code: RequestCode, fields: dict[str, Any] | None = None) -> Request:
        request = Request(code, self.next_opaque, fields or {})
        self.next_opaque += 1
        return request

    async def write(self, requests: list[Request]) -> None:
        await self.stream.send(b"".join(encode_request(request) for request in requests))

    async def read(self, count: int) -> list[Response]:
        responses: list[Response] = []
        while len(responses) < count:
            event = self.decoder.next_event()
            if event is NEED_DATA:
                self.decoder.receive_data(await self.stream.receive())
                continue
            assert isinstance(event, Response)
            responses.append(event)
        return responses


async def test_answers_on_the_reader_or_hands_on_as_the_immediate_handler_says(
        caplog: pytest.LogCaptureFixture) -> None:
    ran_on: dict[RequestCode, str] = {}
    handled_later: list[RequestCode] = []

    async def continuation(request: Request) -> Response:
        ran_on[RequestCode.CREATE_TOPIC] = str(anyio.get_current_task().name)
        await anyio.lowlevel.checkpoint()
        return request.respond({"continued": True})

    def immediate(request: Request, context: ServerConnectionContext
                  ) -> Response | HandleLater | None:
        ran_on.setdefault(request.code, str(anyio.get_current_task().name))
        if request.code is RequestCode.SEND_MESSAGE:
            return request.respond({"now": True, "client_id": context.client_id})
        if request.code is RequestCode.CREATE_TOPIC:
            return HandleLater(lambda: continuation(request))
        if request.code is RequestCode.DELETE_TOPIC:
            raise InvalidArgument("no such topic")
        if request.code is RequestCode.UPDATE_TOPIC:
            raise ValueError("details that must stay on the server")
        if request.code is RequestCode.LIST_TOPICS:
            return "not a response"  # type: ignore[return-value]
        return HANDLE_LATER

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        handled_later.append(request.code)
        return request.respond({"later": True})

    with anyio.fail_after(GUARD_S):
        async with running_server(immediate, handler) as address, \
                await connect(*address, client_id="c-1") as client:
            assert (await client.call(RequestCode.SEND_MESSAGE)).fields == {
                "now": True, "client_id": "c-1"}
            assert (await client.call(RequestCode.PULL_MESSAGE)).fields == {"later": True}
            assert (await client.call(RequestCode.CREATE_TOPIC)).fields == {"continued": True}
            with pytest.raises(InvalidArgument, match="no such topic"):
                await client.call(RequestCode.DELETE_TOPIC)
            internal = await client.request(RequestCode.UPDATE_TOPIC)
            assert (internal.code, internal.remark) == (ErrorCode.INTERNAL,
                                                        "internal error (ValueError)")
            with pytest.raises(TideError, match="handler gave no response"):
                await client.call(RequestCode.LIST_TOPICS)
            assert (await client.call(RequestCode.SEND_MESSAGE)).ok  # still serving
    # The async handler saw only what was handed to it; the continuation ran in a worker,
    # the immediate handler on the reader.
    assert handled_later == [RequestCode.PULL_MESSAGE]
    assert ran_on[RequestCode.CREATE_TOPIC] == WORKER_TASK
    assert ran_on[RequestCode.SEND_MESSAGE] != WORKER_TASK
    assert RequestCode.HELLO not in ran_on  # HELLO is the server's own
    assert any(record.message == "handler_failed" and record.exc_info
               for record in caplog.records)


async def test_a_request_queued_for_a_worker_keeps_the_ones_behind_it_in_line() -> None:
    """Requests of a connection start in the order they came: behind one handed to a
    worker and not yet started, the next is handed on too, not answered first."""
    offered: list[int] = []
    started: list[int] = []

    def immediate(request: Request, context: ServerConnectionContext
                  ) -> Response | HandleLater | None:
        offered.append(request.opaque)
        if request.code is RequestCode.PULL_MESSAGE:
            return HANDLE_LATER
        return request.respond({"now": True})

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        started.append(request.opaque)
        return request.respond({"later": True})

    with anyio.fail_after(GUARD_S):
        async with running_server(immediate, handler) as address, \
                RawClient.connected(address) as client:
            pull = client.request(RequestCode.PULL_MESSAGE)
            sends = [client.request(RequestCode.SEND_MESSAGE) for _ in range(3)]
            await client.write([pull, *sends])
            answers = {answer.opaque: answer.fields for answer in await client.read(4)}
            # Now nothing is queued: the next send is answered on the reader again.
            last = client.request(RequestCode.SEND_MESSAGE)
            await client.write([last])
            assert (await client.read(1))[0].fields == {"now": True}
    assert offered == [pull.opaque, last.opaque]
    assert started == [pull.opaque] + [send.opaque for send in sends]
    assert all(answers[send.opaque] == {"later": True} for send in sends)


async def test_a_started_request_does_not_hold_back_the_ones_behind_it() -> None:
    """A request the immediate handler began and only answers later (a sync send: appended,
    its answer waits for the fsync) leaves the requests behind it to the reader, even
    while its continuation is still waiting."""
    offered: list[int] = []
    release = anyio.Event()

    async def answer_first(request: Request) -> Response:
        await release.wait()
        return request.respond({"first": True})

    def immediate(request: Request, context: ServerConnectionContext
                  ) -> Response | HandleLater | None:
        offered.append(request.opaque)
        if len(offered) == 1:
            return HandleLater(lambda: answer_first(request), started=True)
        return request.respond({"now": True})

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        raise AssertionError("every request is offered to the immediate handler")

    with anyio.fail_after(GUARD_S):
        async with running_server(immediate, handler) as address, \
                RawClient.connected(address) as client:
            requests = [client.request(RequestCode.SEND_MESSAGE) for _ in range(4)]
            await client.write(requests)
            behind = await client.read(3)  # answered while the first one still waits
            release.set()
            first = await client.read(1)
    assert offered == [r.opaque for r in requests]
    assert sorted(a.opaque for a in behind) == [r.opaque for r in requests[1:]]
    assert all(a.fields == {"now": True} for a in behind)
    assert first[0].opaque == requests[0].opaque
    assert first[0].fields == {"first": True}


def test_a_started_request_needs_its_continuation() -> None:
    with pytest.raises(ValueError, match="needs the continuation"):
        HandleLater(started=True)


async def test_a_burst_answered_on_the_reader_lets_other_tasks_run() -> None:
    answered = 0
    answered_at_ticks: list[int] = []  # how many were answered, each time another task ran

    def immediate(request: Request, context: ServerConnectionContext
                  ) -> Response | HandleLater | None:
        nonlocal answered
        answered += 1
        return request.respond({"n": request.opaque})

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        raise AssertionError("every request is answered on the reader")

    async def tick() -> None:
        while True:
            answered_at_ticks.append(answered)
            await anyio.lowlevel.checkpoint()

    burst = 300
    with anyio.fail_after(GUARD_S):
        async with running_server(immediate, handler) as address, \
                RawClient.connected(address) as client, anyio.create_task_group() as group:
            group.start_soon(tick)
            requests = [client.request(RequestCode.SEND_MESSAGE) for _ in range(burst)]
            await client.write(requests)
            answers = await client.read(burst)
            group.cancel_scope.cancel()
    assert [answer.fields["n"] for answer in answers] == [r.opaque for r in requests]
    # The reader yields every 64 requests at most. Trio runs each batch of runnable tasks
    # in random order, so between two runs of the ticker the reader may run twice.
    most_between_ticks = max(after - before for before, after
                             in itertools.pairwise([*answered_at_ticks, answered]))
    assert 0 < most_between_ticks <= 2 * 64


async def test_answers_wait_for_room_when_the_send_queue_is_full() -> None:
    """A client that does not read: an answer made on the reader finds the send queue full
    and goes to a worker that waits for room; the requests behind it go to workers too (they
    start in order). None is lost."""
    body = bytes(1024 * 1024)
    handled_later: list[int] = []

    def immediate(request: Request, context: ServerConnectionContext
                  ) -> Response | HandleLater | None:
        return request.respond({"n": request.opaque}, body)

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        handled_later.append(request.opaque)
        return request.respond({"n": request.opaque}, body)

    count = 24  # 24 MiB of answers: the first ones fill the socket buffers
    with anyio.fail_after(GUARD_S):
        async with running_server(immediate, handler,
                                  options=ConnectionOptions(send_high_water_bytes=1)) as address, \
                RawClient.connected(address) as client:
            requests = [client.request(RequestCode.SEND_MESSAGE) for _ in range(count)]
            await client.write(requests)
            answers = await client.read(count)
    assert sorted(int(answer.fields["n"]) for answer in answers  # type: ignore[arg-type]
                  ) == [r.opaque for r in requests]
    assert all(len(answer.body) == len(body) for answer in answers)
    assert handled_later  # the queue was full at some point, and nothing was lost then
