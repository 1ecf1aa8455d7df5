"""tidemq.net on real sockets at 127.0.0.1: correlation, limits, failures, both event loops.

No test sleeps to let something happen: each waits on an event that the thing itself sets,
under a generous ``fail_after`` so a bug shows as a failure, not a hang. The only real-clock
waits are the timeouts under test (100 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from tidemq.errors import ErrorCode, InvalidArgument, TideError
from tidemq.net import (
    ClientConnection,
    ConnectionClosed,
    ConnectionOptions,
    Handler,
    RequestTimeout,
    ServerConnectionContext,
    connect,
    serve,
)
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.connection import Connection, Role
from tidemq.protocol.events import PEER_CLOSED, Request, Response
from tidemq.protocol.exceptions import LocalProtocolError, RemoteProtocolError
from tidemq.protocol.frame import PREFIX, FrameDecoder, encode_request

GUARD_S = 10  # upper bound on any single test step; hitting it means a bug, not slowness


@dataclass
class RunningServer:
    host: str
    port: int
    cancel_scope: anyio.CancelScope

    async def connect(self, client_id: str = "test-client") -> ClientConnection:
        return await connect(self.host, self.port, client_id=client_id)


async def serve_in_scope(
    scope: anyio.CancelScope, handler: Handler, serve_options: dict[str, Any],
    *, task_status: anyio.abc.TaskStatus[list[tuple[str, int]]],
) -> None:
    with scope:
        await serve(handler, "127.0.0.1", 0, task_status=task_status, **serve_options)


@contextlib.asynccontextmanager
async def running_server(handler: Handler, **serve_options: Any) -> AsyncIterator[RunningServer]:
    """A server whose ``cancel_scope`` covers the server alone (not the test's own tasks, so
    a test can stop the server and go on asserting)."""
    scope = anyio.CancelScope()
    async with anyio.create_task_group() as group:
        addresses = await group.start(serve_in_scope, scope, handler, serve_options)
        host, port = addresses[0]
        yield RunningServer(host, port, scope)
        group.cancel_scope.cancel()


async def echo(request: Request, context: ServerConnectionContext) -> Response:
    return request.respond({**request.fields, "client_id": context.client_id}, request.body)


async def test_echo_round_trip_and_hello_details() -> None:
    with anyio.fail_after(GUARD_S):
        async with running_server(echo, hello_fields={"broker": {"name": "b-1"}}) as server, \
                await server.connect("me") as client:
            assert client.client_id == "me"
            assert client.server_fields == {"version": 1, "broker": {"name": "b-1"}}
            response = await client.call(RequestCode.SEND_MESSAGE, {"topic": "t"}, b"body")
            assert response.fields == {"topic": "t", "client_id": "me"}
            assert bytes(response.body) == b"body"


async def test_many_requests_in_flight_are_matched_to_their_callers() -> None:
    count = 200
    arrived: list[int] = []
    all_arrived = anyio.Event()
    release = [anyio.Event() for _ in range(count)]

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        index = request.fields["index"]
        assert isinstance(index, int)
        arrived.append(index)
        if len(arrived) == count:
            all_arrived.set()
        await release[index].wait()
        return request.respond({"index": index}, request.body)

    completed: list[int] = []
    done = [anyio.Event() for _ in range(count)]

    async def call(client: ClientConnection, index: int) -> None:
        body = index.to_bytes(4, "big") * 256
        response = await client.call(RequestCode.SEND_MESSAGE, {"index": index}, body)
        assert response.fields == {"index": index}
        assert bytes(response.body) == body
        completed.append(index)
        done[index].set()

    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server, await server.connect() as client:
            async with anyio.create_task_group() as group:
                for index in range(count):
                    group.start_soon(call, client, index)
                await all_arrived.wait()
                assert client.statistics().outstanding_requests == count
                for index in reversed(range(count)):  # answer in the reverse order
                    release[index].set()
                    await done[index].wait()
            assert completed == list(reversed(range(count)))
            assert client.statistics().outstanding_requests == 0


async def test_timeout_removes_the_waiter_and_the_late_response_is_dropped() -> None:
    entered = anyio.Event()
    gate = anyio.Event()

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        if request.code is RequestCode.PULL_MESSAGE:
            entered.set()
            await gate.wait()
        return request.respond({"answering": request.code.name})

    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server, await server.connect() as client:
            with pytest.raises(RequestTimeout, match="PULL_MESSAGE within 100 ms"):
                await client.request(RequestCode.PULL_MESSAGE, timeout_ms=100)
            assert entered.is_set()
            assert client.statistics().outstanding_requests == 0
            gate.set()  # the late answer now arrives and must not confuse anyone
            response = await client.call(RequestCode.HEARTBEAT)
            assert response.fields == {"answering": "HEARTBEAT"}


async def test_cancelled_request_removes_its_waiter() -> None:
    entered = anyio.Event()

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server, await server.connect() as client:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(client.request, RequestCode.PULL_MESSAGE)
                    await entered.wait()
                    assert client.statistics().outstanding_requests == 1
                    scope.cancel()
            assert client.statistics().outstanding_requests == 0


async def test_server_busy_window_answers_system_busy_at_once() -> None:
    entered: list[int] = []
    both_entered = anyio.Event()
    gate = anyio.Event()

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        if request.code is RequestCode.PULL_MESSAGE:
            entered.append(request.opaque)
            if len(entered) == 2:
                both_entered.set()
            await gate.wait()
        return request.respond()

    options = ConnectionOptions(max_in_flight_requests=2)
    with anyio.fail_after(GUARD_S):
        async with running_server(handler, options=options) as server, \
                await server.connect() as client:
            async with anyio.create_task_group() as group:
                for _ in range(2):
                    group.start_soon(client.call, RequestCode.PULL_MESSAGE)
                await both_entered.wait()
                busy = await client.request(RequestCode.HEARTBEAT)
                assert busy.code == ErrorCode.SYSTEM_BUSY
                with pytest.raises(TideError) as caught:  # SystemBusy, or RemoteError
                    await client.call(RequestCode.HEARTBEAT)
                assert caught.value.code is ErrorCode.SYSTEM_BUSY
                assert caught.value.code.retryable
                gate.set()
            assert (await client.call(RequestCode.HEARTBEAT)).ok  # the window reopened


async def block_forever_counting(
    entered: list[int], enough: int, all_entered: anyio.Event,
    request: Request, context: ServerConnectionContext,
) -> Response:
    entered.append(request.opaque)
    if len(entered) == enough:
        all_entered.set()
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def expect_closed(client: ClientConnection, seen: list[ConnectionClosed] | None = None,
                        ) -> None:
    with pytest.raises(ConnectionClosed) as caught:
        await client.request(RequestCode.PULL_MESSAGE)
    if seen is not None:
        seen.append(caught.value)


async def test_server_going_away_fails_every_waiter() -> None:
    entered: list[int] = []
    all_entered = anyio.Event()
    handler = partial(block_forever_counting, entered, 5, all_entered)
    seen: list[ConnectionClosed] = []
    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server, await server.connect() as client:
            async with anyio.create_task_group() as group:
                for _ in range(5):
                    group.start_soon(expect_closed, client, seen)
                await all_entered.wait()
                server.cancel_scope.cancel()  # the server, its connections and handlers go
            assert len(seen) == 5  # every waiter saw ConnectionClosed, none was cancelled
            assert client.statistics().outstanding_requests == 0
            assert client.statistics().closed
            with pytest.raises(ConnectionClosed, match="peer closed"):
                await client.request(RequestCode.HEARTBEAT)


async def test_closing_the_client_fails_its_waiters() -> None:
    entered: list[int] = []
    all_entered = anyio.Event()
    handler = partial(block_forever_counting, entered, 3, all_entered)
    seen: list[ConnectionClosed] = []
    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server, await server.connect() as client:
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(expect_closed, client, seen)
                await all_entered.wait()
                await client.aclose()
            assert len(seen) == 3
            with pytest.raises(ConnectionClosed, match="closed by this end"):
                await client.call(RequestCode.HEARTBEAT)


async def test_handlers_of_a_departed_client_are_cancelled() -> None:
    entered = anyio.Event()
    cancelled = anyio.Event()

    async def handler(request: Request, context: ServerConnectionContext) -> Response:
        entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()  # no one is left to answer: the work is abandoned
        raise AssertionError("unreachable")

    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server:
            async with await server.connect() as client, anyio.create_task_group() as group:
                group.start_soon(expect_closed, client)
                await entered.wait()
                await client.aclose()
            await cancelled.wait()


async def test_handler_can_drop_its_connection() -> None:
    async def handler(request: Request, context: ServerConnectionContext) -> Response | None:
        context.close()
        return request.respond()

    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server:
            async with await server.connect() as client:
                await expect_closed(client)
            async with await server.connect() as other:  # the server itself still serves
                await expect_closed(other)


async def test_handler_errors_become_error_responses(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: Request, context: ServerConnectionContext) -> Response | None:
        if request.code is RequestCode.SEND_MESSAGE:
            raise ValueError("details that must stay on the server")
        if request.code is RequestCode.CREATE_TOPIC:
            raise InvalidArgument("bad topic name")
        if request.code is RequestCode.DELETE_TOPIC:
            return None  # a bug: a request that is not oneway needs an answer
        if request.code is RequestCode.UPDATE_TOPIC:
            return request.respond({"not": {"encodable"}})  # type: ignore[dict-item]
        if request.code is RequestCode.DESCRIBE_TOPIC:
            return request.respond(body="text, not bytes")  # type: ignore[arg-type]
        if request.code is RequestCode.LIST_TOPICS:
            return "not a response"  # type: ignore[return-value]
        return request.respond()

    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server, await server.connect() as client:
            internal = await client.request(RequestCode.SEND_MESSAGE)
            assert internal.code == ErrorCode.INTERNAL
            assert internal.remark == "internal error (ValueError)"
            with pytest.raises(InvalidArgument, match="bad topic name"):
                await client.call(RequestCode.CREATE_TOPIC)
            assert (await client.request(RequestCode.DELETE_TOPIC)).code == ErrorCode.INTERNAL
            with pytest.raises(TideError, match="could not be sent") as caught:
                await client.call(RequestCode.UPDATE_TOPIC)
            assert caught.value.code is ErrorCode.INTERNAL
            for code in (RequestCode.DESCRIBE_TOPIC, RequestCode.LIST_TOPICS):
                assert (await client.request(code)).code == ErrorCode.INTERNAL
            assert (await client.call(RequestCode.HEARTBEAT)).ok  # still serving
    assert any(record.message == "handler_failed" and record.exc_info
               for record in caplog.records)


async def test_a_request_answered_early_from_another_task_gets_that_one_answer(
        caplog: pytest.LogCaptureFixture) -> None:
    """A parked handler answered by another request's handler (respond_now, as a send
    answers the pulls it wakes) returns None, or even fails, without a second response."""
    parked: dict[int, tuple[Request, ServerConnectionContext, anyio.Event]] = {}
    parked_now = anyio.Event()

    async def handler(request: Request, context: ServerConnectionContext) -> Response | None:
        if request.code is RequestCode.PULL_MESSAGE:
            released = anyio.Event()
            parked[request.fields["n"]] = (request, context, released)  # type: ignore[index]
            parked_now.set()
            await released.wait()
            if request.fields["n"] == 2:
                raise ValueError("failed after answering")
            return None
        if request.code is not RequestCode.SEND_MESSAGE:
            return request.respond()
        waiting, waiting_context, released = parked.pop(request.fields["n"])  # type: ignore[arg-type]
        assert waiting_context.respond_now(waiting.respond({"early": True}))
        released.set()
        return request.respond({"answered": waiting.opaque})

    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server, await server.connect() as client:
            for n in (1, 2):
                answers: list[Response] = []

                async def pull(n: int, answers: list[Response]) -> None:
                    answers.append(await client.request(RequestCode.PULL_MESSAGE, {"n": n}))
                async with anyio.create_task_group() as group:
                    group.start_soon(pull, n, answers)
                    await parked_now.wait()
                    parked_now = anyio.Event()
                    assert (await client.call(RequestCode.SEND_MESSAGE, {"n": n})).ok
                assert [answer.fields for answer in answers] == [{"early": True}]
            assert (await client.call(RequestCode.HEARTBEAT)).ok  # still serving
            assert client.statistics().outstanding_requests == 0
    assert not any(record.message in ("handler_bad_response", "response_not_encodable")
                   for record in caplog.records)


async def test_oneway_requests_get_no_response() -> None:
    received: list[Request] = []
    got_one = anyio.Event()

    async def handler(request: Request, context: ServerConnectionContext) -> Response | None:
        if request.oneway:
            received.append(request)
            got_one.set()
            return None
        return request.respond({"seen": len(received)})

    with anyio.fail_after(GUARD_S):
        async with running_server(handler) as server, await server.connect() as client:
            await client.send_oneway(RequestCode.HEARTBEAT, {"beat": 1})
            await got_one.wait()
            assert received[0].fields == {"beat": 1}
            assert client.statistics().outstanding_requests == 0
            assert (await client.call(RequestCode.HEARTBEAT)).fields == {"seen": 1}


async def test_large_bodies_cross_and_oversize_ones_are_refused_locally() -> None:
    options = ConnectionOptions()
    body = random.Random(7).randbytes(3 * 1024 * 1024)
    with anyio.fail_after(GUARD_S):
        async with running_server(echo, options=options) as server, \
                await server.connect() as client:
            response = await client.call(RequestCode.SEND_BATCH, {}, body)
            assert bytes(response.body) == body
            with pytest.raises(LocalProtocolError, match="over the limit"):
                await client.call(RequestCode.SEND_BATCH, {}, b"x" * (16 * 1024 * 1024))
            assert (await client.call(RequestCode.HEARTBEAT)).ok


async def read_until_closed(stream: anyio.abc.ByteStream) -> bytes:
    received = bytearray()
    while True:
        try:
            received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return bytes(received)


def decode_responses(data: bytes) -> list[Response]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    decoder.receive_data(b"")
    responses: list[Response] = []
    for _ in range(len(data) // 9 + 1):
        event = decoder.next_event()
        if event is PEER_CLOSED:
            return responses
        assert isinstance(event, Response)
        responses.append(event)
    raise AssertionError("more frames than bytes allow")


GARBAGE = {
    "oversize-length": PREFIX.pack(0xFFFF_FFF0, 10) + random.Random(1).randbytes(2000),
    "framed-garbage-header": PREFIX.pack(4 + 50, 50) + random.Random(2).randbytes(50),
    "truncated-frame": PREFIX.pack(1000, 10) + b"0123456789",
    "random-bytes": random.Random(3).randbytes(4096),
    "request-before-hello": encode_request(Request(RequestCode.SEND_MESSAGE, 7)),
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_closes_only_its_own_connection(garbage: bytes) -> None:
    with anyio.fail_after(GUARD_S):
        async with running_server(echo) as server, await server.connect() as neighbour:
            assert (await neighbour.call(RequestCode.HEARTBEAT)).ok
            async with await anyio.connect_tcp(server.host, server.port) as raw:
                await raw.send(garbage)
                await raw.send_eof()
                answer = await read_until_closed(raw)
            responses = decode_responses(answer)
            assert all(response.code == ErrorCode.PROTOCOL_ERROR for response in responses)
            if garbage is GARBAGE["request-before-hello"]:
                assert [response.opaque for response in responses] == [7]
                assert "HELLO" in responses[0].remark
            for index in range(3):
                response = await neighbour.call(RequestCode.HEARTBEAT, {"index": index})
                assert response.fields["index"] == index


async def server_that_answers_hello_then_garbage(stream: anyio.abc.ByteStream) -> None:
    """A hand-made server: a proper HELLO answer, then bytes that are not a frame."""
    connection = Connection(Role.SERVER)
    async with stream:
        while True:
            connection.receive_data(await stream.receive())
            for _ in range(10):  # a few frames per read at most in this test
                event = connection.next_event()
                if not isinstance(event, Request):
                    break
                if event.code is RequestCode.HELLO:
                    await stream.send(connection.send_response(event.respond({"version": 1})))
                    continue
                await stream.send(PREFIX.pack(4 + 3, 3) + b"\xc1\xc1\xc1")
                await read_until_closed(stream)
                return


async def test_client_drops_a_server_that_breaks_the_protocol() -> None:
    with anyio.fail_after(GUARD_S):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as group:
            group.start_soon(listener.serve, server_that_answers_hello_then_garbage)
            async with await connect("127.0.0.1", port, client_id="victim") as client:
                with pytest.raises(ConnectionClosed, match="broke the protocol") as caught:
                    await client.request(RequestCode.HEARTBEAT)
                assert isinstance(caught.value.__cause__, RemoteProtocolError)
                assert client.statistics().closed
            group.cancel_scope.cancel()


async def test_peer_stalling_mid_frame_is_dropped_and_idle_peers_are_not() -> None:
    hello = encode_request(Request(RequestCode.HELLO, 0, {"version": 1, "client_id": "slow"}))
    half_frame = encode_request(Request(RequestCode.SEND_MESSAGE, 1, body=b"x" * 100))[:60]
    options = ConnectionOptions(frame_stall_timeout_ms=100)
    with anyio.fail_after(GUARD_S):
        async with running_server(echo, options=options) as server, \
                await server.connect() as idle_neighbour:
            started = anyio.current_time()
            async with await anyio.connect_tcp(server.host, server.port) as raw:
                await raw.send(hello + half_frame)  # and then nothing, without closing
                answer = await read_until_closed(raw)
            assert anyio.current_time() - started >= 0.1
            assert [response.opaque for response in decode_responses(answer)] == [0]  # HELLO
            # Idle between frames for as long as that took is fine: only a frame in pieces
            # is on the clock.
            assert (await idle_neighbour.call(RequestCode.HEARTBEAT)).ok


async def test_silent_peer_is_dropped_after_the_hello_timeout() -> None:
    with anyio.fail_after(GUARD_S):
        async with running_server(echo, hello_timeout_ms=100) as server:
            async with await anyio.connect_tcp(server.host, server.port) as raw:
                assert await read_until_closed(raw) == b""
            async with await server.connect() as client:  # a prompt HELLO is unaffected
                assert (await client.call(RequestCode.HEARTBEAT)).ok


@pytest.fixture
def self_signed_tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) SSL contexts around a throwaway certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True, timeout=30,
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificate, key)
    client_context = ssl.create_default_context(cafile=str(certificate))
    return server_context, client_context


async def test_tls_seam_carries_the_same_conversation(
    self_signed_tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = self_signed_tls
    with anyio.fail_after(GUARD_S):
        async with running_server(echo, ssl_context=server_context) as server:
            async with await connect(server.host, server.port, client_id="tls",
                                     ssl_context=client_context) as client:
                response = await client.call(RequestCode.SEND_MESSAGE, {"n": 1}, b"secret")
                assert bytes(response.body) == b"secret"
            with pytest.raises(ConnectionClosed):  # plain text to a TLS port: no HELLO answer
                await server.connect()


def test_round_trip_on_asyncio() -> None:
    """The same shell under asyncio (a plain test: pytest-trio leaves it alone)."""

    async def main() -> Response:
        async with anyio.create_task_group() as group:
            addresses = await group.start(partial(serve, echo, "127.0.0.1", 0))
            host, port = addresses[0]
            async with await connect(host, port, client_id="asyncio") as client:
                with anyio.fail_after(GUARD_S):
                    response = await client.call(RequestCode.SEND_MESSAGE, {"n": 1}, b"abc")
                    with pytest.raises(RequestTimeout):
                        await client.request(RequestCode.PULL_MESSAGE, timeout_ms=0)
            group.cancel_scope.cancel()
        return response

    response = asyncio.run(main())
    assert response.fields == {"n": 1, "client_id": "asyncio"}
    assert bytes(response.body) == b"abc"


@pytest.fixture(autouse=True)
def _quiet_expected_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidemq.net")
