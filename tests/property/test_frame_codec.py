"""Properties of the frame codec (tidemq.protocol.frame) and the sans-IO connection.

1. Every event round-trips: decode(encode(event)) == event.
2. A stream of several frames, cut at any byte boundaries, decodes to the same events.
3. Arbitrary bytes (random, framed random headers, msgpack maps of the wrong shape) only ever
   yield events, NEED_DATA/PEER_CLOSED, or a ProtocolError: never another exception.

No per-example deadline: examples are small and bounded, and a wall-clock deadline only adds
flakiness on a loaded machine (the suite's total time is the real budget).
"""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq.errors import ProtocolError
from tidemq.protocol.codes import CODE_MAX, RequestCode
from tidemq.protocol.connection import Connection, Role
from tidemq.protocol.events import NEED_DATA, PEER_CLOSED, Event, Request, Response
from tidemq.protocol.frame import (
    OPAQUE_MAX,
    PREFIX,
    FrameDecoder,
    FrameLimits,
    encode_event,
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=16)
    | st.binary(max_size=16)
)


def field_values(depth: int) -> st.SearchStrategy[object]:
    """Values nested at most ``depth`` containers deep (well inside FIELD_DEPTH_MAX)."""
    if depth == 0:
        return SCALARS
    children = field_values(depth - 1)
    return (
        SCALARS
        | st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=8), children, max_size=3)
    )


FIELDS = st.dictionaries(st.text(max_size=12), field_values(3), max_size=5)
BODIES = st.binary(max_size=200)
OPAQUES = st.integers(0, OPAQUE_MAX)
REQUESTS = st.builds(
    Request,
    code=st.sampled_from(RequestCode),
    opaque=OPAQUES,
    fields=FIELDS,
    body=BODIES,
    oneway=st.booleans(),
)
RESPONSES = st.builds(
    Response,
    code=st.integers(0, CODE_MAX),
    opaque=OPAQUES,
    fields=FIELDS,
    body=BODIES,
    remark=st.text(max_size=30),
)
EVENTS = REQUESTS | RESPONSES


def drain(decoder: FrameDecoder, events_max: int) -> list[Event]:
    """Every whole event buffered; fails if more than ``events_max`` come out."""
    decoded: list[Event] = []
    for _ in range(events_max + 1):
        event = decoder.next_event()
        if event is NEED_DATA or event is PEER_CLOSED:
            return decoded
        assert isinstance(event, Request | Response)
        decoded.append(event)
    raise AssertionError(f"more than {events_max} events")


@settings(deadline=None)
@given(EVENTS)
def test_event_round_trips(event: Event) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_event(event))
    decoded = decoder.next_event()
    assert decoded == event
    assert type(decoded) is type(event)
    assert decoder.next_event() is NEED_DATA
    assert decoder.buffered_size_bytes == 0


@settings(deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=6), st.data())
def test_stream_split_anywhere_decodes_the_same(events: list[Event], data: st.DataObject) -> None:
    stream = b"".join(encode_event(event) for event in events)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12).map(sorted))
    decoder = FrameDecoder()
    decoded: list[Event] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        if cut > previous:  # b"" would mean end of stream
            decoder.receive_data(stream[previous:cut])
            decoded += drain(decoder, len(events))
        previous = cut
    decoder.receive_data(b"")
    assert decoder.next_event() is PEER_CLOSED
    assert decoded == events


@settings(deadline=None)
@given(st.lists(EVENTS, min_size=1, max_size=3))
def test_stream_fed_one_byte_at_a_time(events: list[Event]) -> None:
    stream = b"".join(encode_event(event) for event in events)
    decoder = FrameDecoder()
    decoded: list[Event] = []
    for position in range(len(stream)):
        decoder.receive_data(stream[position : position + 1])
        decoded += drain(decoder, len(events))
    assert decoded == events


SMALL_LIMITS = FrameLimits(max_frame_size_bytes=1024, max_header_size_bytes=512)


def decode_everything(data: bytes, limits: FrameLimits) -> None:
    """Feed ``data`` then the end of the stream; only ProtocolError may escape."""
    decoder = FrameDecoder(limits)
    try:
        if data:
            decoder.receive_data(data)
        decoder.receive_data(b"")
        # Every frame takes at least 9 bytes, so this many calls must reach the end.
        for _ in range(len(data) // 9 + 2):
            event = decoder.next_event()
            if event is PEER_CLOSED:
                return
            assert isinstance(event, Request | Response)
        raise AssertionError("the decoder did not reach the end of a finite stream")
    except ProtocolError:
        pass


def framed(header: bytes, body: bytes) -> bytes:
    return PREFIX.pack(4 + len(header) + len(body), len(header)) + header + body


@settings(deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    decode_everything(data, SMALL_LIMITS)
    decode_everything(data, FrameLimits())


@settings(deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=60), st.binary(max_size=20)), max_size=4))
def test_framed_random_headers_raise_only_protocol_error(
    frames: list[tuple[bytes, bytes]],
) -> None:
    decode_everything(b"".join(framed(header, body) for header, body in frames), SMALL_LIMITS)


HEADER_KEYS = st.sampled_from(["code", "opaque", "flags", "fields", "remark", "other"])
ANY_MSGPACK = st.recursive(
    SCALARS | st.integers(-(2**63), 2**64 - 1),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), children, max_size=3),
    max_leaves=8,
)
HEADER_MAPS = st.dictionaries(HEADER_KEYS, ANY_MSGPACK | st.integers(-2, 600), max_size=6)


@settings(deadline=None)
@given(HEADER_MAPS | ANY_MSGPACK, BODIES)
def test_msgpack_headers_of_any_shape_raise_only_protocol_error(
    header: object, body: bytes
) -> None:
    decode_everything(framed(msgpack.packb(header), body), FrameLimits())


@settings(deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_connection_on_garbage_raises_only_protocol_error(data: bytes, as_server: bool) -> None:
    connection = Connection(Role.SERVER if as_server else Role.CLIENT, limits=SMALL_LIMITS)
    try:
        if data:
            connection.receive_data(data)
        connection.receive_data(b"")
        for _ in range(len(data) // 9 + 2):
            if connection.next_event() is PEER_CLOSED:
                return
        raise AssertionError("the connection did not reach the end of a finite stream")
    except ProtocolError:
        pass
