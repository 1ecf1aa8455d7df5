"""The sans-IO connection: hello rules, limits, header validation, the sticky ERROR state."""

from __future__ import annotations

import array
import dataclasses
from collections.abc import Callable

import msgpack
import pytest

from tidemq.errors import ProtocolError
from tidemq.protocol.codes import PROTOCOL_VERSION, RequestCode
from tidemq.protocol.connection import Connection, ConnectionState, Role
from tidemq.protocol.events import NEED_DATA, PEER_CLOSED, Fields, FieldValue, Request, Response
from tidemq.protocol.exceptions import (
    ConnectionBroken,
    FrameTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
)
from tidemq.protocol.frame import PREFIX, FrameLimits, encode_request

HELLO_FIELDS: Fields = {"version": PROTOCOL_VERSION, "client_id": "client-1"}


def hello(opaque: int = 0, **fields: FieldValue) -> Request:
    return Request(RequestCode.HELLO, opaque, {**HELLO_FIELDS, **fields})


def framed(header: object, body: bytes = b"") -> bytes:
    packed: bytes = msgpack.packb(header)
    return PREFIX.pack(4 + len(packed) + len(body), len(packed)) + packed + body


def open_pair(limits: FrameLimits | None = None) -> tuple[Connection, Connection]:
    """A client and a server connection, back to back, past the HELLO exchange."""
    client = Connection(Role.CLIENT, limits=limits or FrameLimits())
    server = Connection(Role.SERVER, limits=limits or FrameLimits())
    server.receive_data(client.send_request(hello(client.next_opaque())))
    request = server.next_event()
    assert isinstance(request, Request)
    client.receive_data(server.send_response(request.respond({"version": PROTOCOL_VERSION})))
    assert isinstance(client.next_event(), Response)
    return client, server


def deliver(source_bytes: bytes, target: Connection) -> Request | Response:
    target.receive_data(source_bytes)
    event = target.next_event()
    assert isinstance(event, Request | Response)
    return event


def test_hello_opens_both_ends() -> None:
    client, server = open_pair()
    for connection in (client, server):
        assert connection.state is ConnectionState.OPEN
        assert connection.client_id == "client-1"
        assert connection.protocol_version == PROTOCOL_VERSION
    request = Request(RequestCode.SEND_MESSAGE, client.next_opaque(), {"topic": "t"}, b"body")
    received = deliver(client.send_request(request), server)
    assert received == request
    assert server.unanswered_request_count == 1
    response = deliver(server.send_response(request.respond({"offset": 7})), client)
    assert response == Response(0, request.opaque, {"offset": 7})
    assert server.unanswered_request_count == 0


def test_server_refuses_a_first_request_that_is_not_hello() -> None:
    server = Connection(Role.SERVER)
    # Even with a HELLO's fields, a request of another code is no HELLO.
    server.receive_data(encode_request(Request(RequestCode.SEND_MESSAGE, 5, HELLO_FIELDS)))
    with pytest.raises(RemoteProtocolError, match="first request") as caught:
        server.next_event()
    assert caught.value.opaque == 5  # so the shell can answer that request
    assert server.state is ConnectionState.ERROR


def test_client_must_send_hello_first_and_a_refusal_changes_nothing() -> None:
    client = Connection(Role.CLIENT)
    states = [client.state]
    with pytest.raises(LocalProtocolError, match="HELLO"):
        client.send_request(Request(RequestCode.SEND_MESSAGE, client.next_opaque()))
    states.append(client.state)
    client.send_request(hello(client.next_opaque()))
    states.append(client.state)
    assert states == [ConnectionState.AWAIT_HELLO, ConnectionState.AWAIT_HELLO,
                      ConnectionState.OPEN]


def test_server_speaks_only_after_hello() -> None:
    server = Connection(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        server.send_request(Request(RequestCode.HEARTBEAT, 0))
    with pytest.raises(LocalProtocolError):
        server.send_response(Response(0, 0))


def test_client_refuses_anything_before_its_hello() -> None:
    client = Connection(Role.CLIENT)
    client.receive_data(encode_request(Request(RequestCode.HEARTBEAT, 0)))
    with pytest.raises(RemoteProtocolError):
        client.next_event()


@pytest.mark.parametrize(
    ("fields", "oneway"),
    [
        pytest.param({"client_id": "c"}, False, id="no-version"),
        pytest.param({"version": True, "client_id": "c"}, False, id="bool-version"),
        pytest.param({"version": "1", "client_id": "c"}, False, id="str-version"),
        pytest.param({"version": 999, "client_id": "c"}, False, id="unsupported-version"),
        pytest.param({"version": PROTOCOL_VERSION}, False, id="no-client-id"),
        pytest.param({"version": PROTOCOL_VERSION, "client_id": ""}, False, id="empty-id"),
        pytest.param({"version": PROTOCOL_VERSION, "client_id": "x" * 256}, False, id="long-id"),
        pytest.param({"version": PROTOCOL_VERSION, "client_id": 7}, False, id="int-id"),
        pytest.param(HELLO_FIELDS, True, id="oneway"),
    ],
)
def test_bad_hello_is_refused_on_both_ends(fields: Fields, oneway: bool) -> None:
    bad_hello = Request(RequestCode.HELLO, 0, fields, oneway=oneway)
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send_request(bad_hello)
    server = Connection(Role.SERVER)
    server.receive_data(encode_request(bad_hello))
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    assert server.state is ConnectionState.ERROR


def test_hello_happens_once() -> None:
    client, server = open_pair()
    with pytest.raises(LocalProtocolError, match="already"):
        client.send_request(hello(client.next_opaque()))
    server.receive_data(encode_request(hello(99)))
    with pytest.raises(RemoteProtocolError, match="already"):
        server.next_event()


def test_oversize_frame_is_refused_from_its_length_alone() -> None:
    server = Connection(Role.SERVER)  # default limit: 16 MiB
    server.receive_data(PREFIX.pack(16 * 1024 * 1024, 10)[:4])  # four bytes, nothing more
    with pytest.raises(FrameTooLarge) as caught:
        server.next_event()
    assert caught.value.size_bytes == 16 * 1024 * 1024 + 4
    assert caught.value.max_size_bytes == 16 * 1024 * 1024
    assert server.state is ConnectionState.ERROR


def test_frame_at_the_limit_passes_and_one_byte_more_does_not() -> None:
    limits = FrameLimits(max_frame_size_bytes=1024, max_header_size_bytes=512)
    client, server = open_pair(limits)
    probe = Request(RequestCode.SEND_MESSAGE, client.next_opaque())
    body = b"x" * (1024 - len(encode_request(probe)))
    fitting = dataclasses.replace(probe, body=body)
    data = client.send_request(fitting)
    assert len(data) == 1024
    assert deliver(data, server) == fitting
    with pytest.raises(LocalProtocolError, match="over the limit"):
        client.send_request(Request(RequestCode.SEND_MESSAGE, client.next_opaque(),
                                    body=body + b"x"))
    assert client.state is ConnectionState.OPEN  # our own refusal changes nothing
    server.receive_data(PREFIX.pack(1021, 10))  # 1025 bytes announced
    with pytest.raises(FrameTooLarge):
        server.next_event()


def test_oversize_header_is_refused_from_the_prefix() -> None:
    limits = FrameLimits(max_frame_size_bytes=4096, max_header_size_bytes=100)
    _, server = open_pair(limits)
    server.receive_data(PREFIX.pack(2000, 101))
    with pytest.raises(RemoteProtocolError, match="header of 101 bytes"):
        server.next_event()


GOOD = {"code": int(RequestCode.HEARTBEAT), "opaque": 1, "flags": 0}


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({**GOOD, "code": "2"}, id="code-str"),
        pytest.param({**GOOD, "code": True}, id="code-bool"),
        pytest.param({**GOOD, "code": -1}, id="code-negative"),
        pytest.param({**GOOD, "code": 70000}, id="code-too-big"),
        pytest.param({**GOOD, "code": 2.0}, id="code-float"),
        pytest.param({"code": 2, "flags": 0}, id="opaque-missing"),
        pytest.param({**GOOD, "opaque": "1"}, id="opaque-str"),
        pytest.param({**GOOD, "opaque": -1}, id="opaque-negative"),
        pytest.param({**GOOD, "flags": 3}, id="flags-response-and-oneway"),
        pytest.param({**GOOD, "flags": 4}, id="flags-unknown-bit"),
        pytest.param({**GOOD, "flags": "0"}, id="flags-str"),
        pytest.param({**GOOD, "fields": [1, 2]}, id="fields-list"),
        pytest.param({**GOOD, "fields": "x"}, id="fields-str"),
        pytest.param({**GOOD, "fields": {1: "x"}}, id="fields-int-key"),
        pytest.param({**GOOD, "fields": {"a": {b"k": 1}}}, id="fields-bytes-key-nested"),
        pytest.param({**GOOD, "fields": {"a": msgpack.ExtType(1, b"x")}}, id="fields-ext"),
        pytest.param({**GOOD, "fields": {"a": msgpack.Timestamp(1)}}, id="fields-timestamp"),
        pytest.param({**GOOD, "fields": {"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}},
                     id="fields-too-deep"),
        pytest.param({**GOOD, "remark": 5}, id="remark-int"),
        pytest.param({**GOOD, "code": 9999}, id="unknown-request-code"),
        pytest.param([2, 1, 0], id="header-list"),
        pytest.param(7, id="header-int"),
    ],
)
def test_header_of_the_wrong_shape_breaks_the_connection(header: object) -> None:
    _, server = open_pair()
    server.receive_data(framed(header))
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    assert server.state is ConnectionState.ERROR


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(PREFIX.pack(5, 1) + b"\xc1", id="not-msgpack"),
        pytest.param(PREFIX.pack(6, 1) + b"\x80\x80", id="empty-map-header"),
        pytest.param(PREFIX.pack(3, 0), id="length-below-header-length"),
        pytest.param(PREFIX.pack(10, 0) + b"x" * 6, id="empty-header"),
        pytest.param(PREFIX.pack(10, 7) + b"x" * 6, id="header-longer-than-frame"),
    ],
)
def test_malformed_frames_break_the_connection(data: bytes) -> None:
    _, server = open_pair()
    server.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_unknown_request_code_names_the_request() -> None:
    _, server = open_pair()
    server.receive_data(framed({**GOOD, "code": 9999, "opaque": 42}))
    with pytest.raises(RemoteProtocolError, match="unknown request code 9999") as caught:
        server.next_event()
    assert caught.value.opaque == 42


def test_unknown_header_keys_are_ignored() -> None:
    _, server = open_pair()
    event = deliver(framed({**GOOD, "trace_id": "abc"}), server)
    assert event == Request(RequestCode.HEARTBEAT, 1)


def test_error_state_is_sticky() -> None:
    _, server = open_pair()
    server.receive_data(framed({**GOOD, "code": "nope"}))
    with pytest.raises(RemoteProtocolError) as original:
        server.next_event()
    calls: list[Callable[[], object]] = [
        server.next_event,
        lambda: server.receive_data(b"more"),
        lambda: server.send_request(Request(RequestCode.HEARTBEAT, 100)),
        lambda: server.send_response(Response(0, 0)),
    ]
    for call in calls:
        for _ in range(2):
            with pytest.raises(ConnectionBroken) as caught:
                call()
            assert isinstance(caught.value, ProtocolError)
            assert caught.value.__cause__ is original.value
    assert server.error is original.value
    assert server.state is ConnectionState.ERROR


def test_local_encoding_error_leaves_the_connection_usable() -> None:
    client, server = open_pair()
    with pytest.raises(LocalProtocolError, match="object"):
        client.send_request(Request(RequestCode.SEND_MESSAGE, client.next_opaque(),
                                    {"bad": object()}))  # type: ignore[dict-item]
    with pytest.raises(LocalProtocolError):
        client.send_request(Request(RequestCode.SEND_MESSAGE, client.next_opaque(),
                                    {"big": 2**64}))
    request = Request(RequestCode.SEND_MESSAGE, client.next_opaque(), {"ok": 1})
    assert deliver(client.send_request(request), server) == request
    with pytest.raises(LocalProtocolError):
        server.send_response(request.respond({"bad": {1, 2}}))  # type: ignore[dict-item]
    assert server.unanswered_request_count == 1  # still owed, can still be answered
    assert deliver(server.send_response(request.respond()), client).opaque == request.opaque


def test_bodies_must_be_contiguous_bytes() -> None:
    client, server = open_pair()
    with pytest.raises(LocalProtocolError, match="body must be bytes"):
        client.send_request(Request(RequestCode.SEND_MESSAGE, client.next_opaque(),
                                    body="text"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="contiguous"):
        client.send_request(Request(RequestCode.SEND_MESSAGE, client.next_opaque(),
                                    body=memoryview(b"abcdef")[::2]))
    words = memoryview(array.array("I", [1, 2, 3]))  # 3 items, 12 bytes
    request = Request(RequestCode.SEND_MESSAGE, client.next_opaque(), body=words)
    received = deliver(client.send_request(request), server)
    assert bytes(received.body) == words.tobytes()


def test_request_ids_must_increase_in_each_direction() -> None:
    client, server = open_pair()
    first = Request(RequestCode.HEARTBEAT, client.next_opaque())
    deliver(client.send_request(first), server)
    with pytest.raises(LocalProtocolError, match="does not increase"):
        client.send_request(first)
    server.receive_data(encode_request(first))  # a replayed id
    with pytest.raises(RemoteProtocolError, match="does not increase"):
        server.next_event()


def framed_response(opaque: int) -> bytes:
    return framed({"code": 0, "opaque": opaque, "flags": 1})


def test_response_to_a_request_never_sent_breaks_the_connection() -> None:
    client, server = open_pair()
    request = Request(RequestCode.HEARTBEAT, client.next_opaque())
    deliver(client.send_request(request), server)
    assert deliver(server.send_response(request.respond()), client).opaque == request.opaque
    # A second answer to an id we did send (late, after a timeout) passes, for the shell to drop.
    assert deliver(framed_response(request.opaque), client) == Response(0, request.opaque)
    client.receive_data(framed_response(request.opaque + 1))
    with pytest.raises(RemoteProtocolError, match="never sent"):
        client.next_event()


def test_responses_only_answer_requests_awaiting_one() -> None:
    client, server = open_pair()
    with pytest.raises(LocalProtocolError, match="awaits"):
        server.send_response(Response(0, 12345))
    oneway = Request(RequestCode.HEARTBEAT, client.next_opaque(), oneway=True)
    deliver(client.send_request(oneway), server)
    assert server.unanswered_request_count == 0
    with pytest.raises(LocalProtocolError):
        server.send_response(oneway.respond())


def test_either_side_may_send_requests_after_hello() -> None:
    client, server = open_pair()
    check = Request(RequestCode.QUERY_OFFSET, server.next_opaque(), {"group": "g"})
    assert deliver(server.send_request(check), client) == check
    answer = deliver(client.send_response(check.respond({"offset": 3})), server)
    assert answer == Response(0, check.opaque, {"offset": 3})


def test_end_of_stream_between_frames_and_inside_one() -> None:
    client, server = open_pair()
    server.receive_data(b"")
    assert server.next_event() is PEER_CLOSED
    assert server.next_event() is PEER_CLOSED
    assert server.peer_closed
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"late")
    data = client.send_request(Request(RequestCode.HEARTBEAT, client.next_opaque()))
    client_side = Connection(Role.SERVER)
    client_side.receive_data(data[:-1])
    assert client_side.next_event() is NEED_DATA
    client_side.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        client_side.next_event()


def test_body_of_a_frame_received_whole_is_not_copied() -> None:
    client, server = open_pair()
    body = b"b" * 100
    chunk = client.send_request(Request(RequestCode.SEND_MESSAGE, client.next_opaque(),
                                        body=body))
    chunk += client.send_request(Request(RequestCode.SEND_MESSAGE, client.next_opaque(),
                                         body=body))
    server.receive_data(chunk)
    for _ in range(2):
        event = server.next_event()
        assert isinstance(event, Request)
        assert isinstance(event.body, memoryview)
        assert event.body.obj is chunk  # a view of the received bytes
        assert event.body.readonly
        assert event.body == body
