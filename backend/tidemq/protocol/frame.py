"""The frame codec: events to bytes and bytes to events, with no state machine and no I/O.

Every message on a TideMQ connection, request or response, is one frame (big-endian u32s)::

    0         4                 8                         8 + H                 4 + L
    +---------+-----------------+-------------------------+---------------------+
    | length  | header_length   | header (H bytes)        | body                |
    | u32 = L | u32 = H         | msgpack map             | raw bytes, L - 4 - H|
    +---------+-----------------+-------------------------+---------------------+
              |<------------------------- length L ------------------------------>|

``length`` counts everything after itself, so a frame is ``4 + length`` bytes. The header is
a msgpack map with these keys (unknown keys are ignored, so later versions can add some)::

    key       type            meaning
    code      int 0..65535    RequestCode of a request; SUCCESS or an error code of a response
    opaque    int 0..2**63-1  request id; a response repeats its request's id
    flags     int, optional   bit 0 RESPONSE, bit 1 ONEWAY (requests only); other bits must be 0
    fields    map, optional   the code's arguments: str keys, msgpack values (see events.py)
    remark    str, optional   a human explanation, used by error responses

The body is never re-encoded: message bodies and commit-log records travel as they are, and
the decoder hands them out as views of the received bytes (see ``_receive_buffer``).

Limits are checked as early as the bytes allow, so a hostile peer cannot make us buffer
much: the frame size as soon as the 4-byte length is in, the header size as soon as the
8-byte prefix is in, the header's shape as soon as the whole frame is in. Anything wrong
raises ``RemoteProtocolError`` (``FrameTooLarge`` for the size); after that the decoder's
position in the stream is lost and it must be discarded. Encoding checks the same rules and
raises ``LocalProtocolError`` before producing any bytes.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeGuard, cast

import msgpack

from tidemq.common.units import KIB, MIB
from tidemq.protocol._receive_buffer import ReceiveBuffer
from tidemq.protocol.codes import CODE_MAX, RequestCode
from tidemq.protocol.events import (
    FIELD_DEPTH_MAX,
    NEED_DATA,
    PEER_CLOSED,
    Event,
    Fields,
    Request,
    Response,
    Sentinel,
)
from tidemq.protocol.exceptions import FrameTooLarge, LocalProtocolError, RemoteProtocolError

PREFIX: Final = struct.Struct(">II")
PREFIX_SIZE: Final = PREFIX.size
LENGTH_SIZE: Final = 4
OPAQUE_MAX: Final = 2**63 - 1

FLAG_RESPONSE: Final = 1 << 0
FLAG_ONEWAY: Final = 1 << 1

DEFAULT_MAX_FRAME_SIZE_BYTES: Final = 16 * MIB
DEFAULT_MAX_HEADER_SIZE_BYTES: Final = 256 * KIB


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Size limits of one frame, both directions.

    ``max_frame_size_bytes`` bounds a whole frame, prefix included. ``max_header_size_bytes``
    bounds the msgpack header, which is parsed into Python objects (the body is not).
    """

    max_frame_size_bytes: int = DEFAULT_MAX_FRAME_SIZE_BYTES
    max_header_size_bytes: int = DEFAULT_MAX_HEADER_SIZE_BYTES

    def __post_init__(self) -> None:
        if not 64 <= self.max_header_size_bytes <= self.max_frame_size_bytes - PREFIX_SIZE:
            raise ValueError("need 64 <= max_header_size_bytes <= max_frame_size_bytes - 8")
        if self.max_frame_size_bytes > 2**32 - 1 + LENGTH_SIZE:
            raise ValueError("a frame's length must fit its u32 prefix")


DEFAULT_LIMITS: Final = FrameLimits()


def encode_request(request: Request, limits: FrameLimits = DEFAULT_LIMITS) -> bytes:
    """The frame for ``request``. Raises ``LocalProtocolError`` if it breaks a rule."""
    flags = FLAG_ONEWAY if request.oneway else 0
    header = _header_map(int(request.code), request.opaque, flags, request.fields, "")
    return _encode_frame(header, request.body, limits)


def encode_response(response: Response, limits: FrameLimits = DEFAULT_LIMITS) -> bytes:
    """The frame for ``response``. Raises ``LocalProtocolError`` if it breaks a rule."""
    if not isinstance(response.remark, str):
        raise LocalProtocolError("remark must be a str")
    header = _header_map(
        response.code, response.opaque, FLAG_RESPONSE, response.fields, response.remark
    )
    return _encode_frame(header, response.body, limits)


def encode_event(event: Event, limits: FrameLimits = DEFAULT_LIMITS) -> bytes:
    if isinstance(event, Request):
        return encode_request(event, limits)
    return encode_response(event, limits)


def _header_map(
    code: int, opaque: int, flags: int, fields: Fields, remark: str
) -> dict[str, object]:
    # `type(x) is int` first: the common case, without the two isinstance calls.
    if not (type(code) is int or _is_int(code)) or not 0 <= code <= CODE_MAX:
        raise LocalProtocolError(f"code must be an int in 0..{CODE_MAX}, not {code!r}")
    if not (type(opaque) is int or _is_int(opaque)) or not 0 <= opaque <= OPAQUE_MAX:
        raise LocalProtocolError(f"opaque must be an int in 0..2**63-1, not {opaque!r}")
    problem = fields_shape_problem(fields)
    if problem is not None:
        raise LocalProtocolError(problem)
    header: dict[str, object] = {"code": code, "opaque": opaque, "flags": flags}
    if fields:
        header["fields"] = fields
    if remark:
        header["remark"] = remark
    return header


def _encode_frame(header: dict[str, object], body: bytes | bytearray | memoryview,
                  limits: FrameLimits) -> bytes:
    try:
        packed_header: bytes = _packer().pack(header)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"header cannot be encoded: {exc}") from exc
    if len(packed_header) > limits.max_header_size_bytes:
        raise LocalProtocolError(
            f"header of {len(packed_header)} bytes is over the limit of "
            f"{limits.max_header_size_bytes}"
        )
    if isinstance(body, memoryview):
        if not body.c_contiguous:
            raise LocalProtocolError("a memoryview body must be contiguous")
        body_size = body.nbytes
    elif isinstance(body, bytes | bytearray):
        body_size = len(body)
    else:
        raise LocalProtocolError(f"body must be bytes, not {type(body).__name__}")
    length = LENGTH_SIZE + len(packed_header) + body_size
    if LENGTH_SIZE + length > limits.max_frame_size_bytes:
        raise LocalProtocolError(
            f"frame of {LENGTH_SIZE + length} bytes is over the limit of "
            f"{limits.max_frame_size_bytes}"
        )
    return b"".join((PREFIX.pack(length, len(packed_header)), packed_header, body))


_PACKERS: Final = threading.local()


def _packer() -> msgpack.Packer:
    # A Packer is reused (building one per frame costs as much as packing a small header);
    # one per thread, since a Packer's buffer is not safe to share.
    try:
        packer: msgpack.Packer = _PACKERS.packer
    except AttributeError:
        packer = _PACKERS.packer = msgpack.Packer(default=_pack_other_containers)
    return packer


def _pack_other_containers(value: object) -> object:
    # msgpack packs dict, list and tuple natively; fields_shape_problem has already allowed
    # only these and read-only Mappings (MappingProxyType and friends), which become dicts.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def fields_shape_problem(fields: object) -> str | None:
    """Why ``fields`` is not a valid fields map (see events.py), or None when it is."""
    if type(fields) is dict:
        # Fast path: the common map of str keys to scalars and flat lists of scalars (a
        # send's message ids), all well inside FIELD_DEPTH_MAX.
        scalar_types = _SCALAR_TYPES
        for key, value in fields.items():
            if type(key) is not str:
                break
            value_type = type(value)
            if value_type in scalar_types:
                continue
            if value_type is not list and value_type is not tuple:
                break
            for item in value:
                if type(item) not in scalar_types:
                    break
            else:
                continue
            break
        else:
            return None
    elif not isinstance(fields, Mapping):
        return f"fields must be a map, not {type(fields).__name__}"
    return _nested_shape_problem(fields)


_SCALAR_TYPES: Final = frozenset({str, int, float, bytes, bool, type(None)})


def _nested_shape_problem(fields: Mapping[object, object]) -> str | None:
    # Iterative, so a deeply nested hostile header cannot exhaust the Python stack. Exact
    # types are checked first (one set lookup) and scalars are never pushed: a name
    # server's route answer is a few hundred nested values, checked on every GET_ROUTE.
    scalar_types = _SCALAR_TYPES
    stack: list[tuple[object, int]] = [(fields, 1)]
    while stack:
        value, depth = stack.pop()
        value_type = type(value)
        if value_type in scalar_types:
            continue
        if value_type is not dict and value_type is not list and value_type is not tuple \
                and isinstance(value, str | int | float | bytes):
            continue  # a subclass of a scalar (an IntEnum member)
        if depth > FIELD_DEPTH_MAX:
            return f"fields nest deeper than {FIELD_DEPTH_MAX} levels"
        if value_type is dict or (value_type is not list and value_type is not tuple
                                  and isinstance(value, Mapping)):
            for key, item in value.items():  # type: ignore[attr-defined]
                if type(key) is not str and not isinstance(key, str):
                    return f"a fields key is {type(key).__name__}, not str"
                if type(item) not in scalar_types:
                    stack.append((item, depth + 1))
        elif value_type is list or value_type is tuple or isinstance(value, list):
            # Exactly tuple: msgpack's ExtType is a namedtuple the wire must not carry.
            stack.extend((item, depth + 1) for item in value  # type: ignore[attr-defined]
                         if type(item) not in scalar_types)
        else:
            return f"a fields value is {type(value).__name__}, which the wire does not carry"
    return None


_REQUEST_CODE_BY_VALUE: Final = {code.value: code for code in RequestCode}
_VALID_FLAGS: Final = (0, FLAG_RESPONSE, FLAG_ONEWAY)


def decode_event(header: bytes | memoryview, body: bytes | memoryview) -> Event:
    """The event for one frame's header and body. Raises ``RemoteProtocolError``."""
    try:
        header_map: object = msgpack.unpackb(header, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"header is not msgpack: {exc}") from exc
    if type(header_map) is not dict:
        raise RemoteProtocolError(f"header is a {type(header_map).__name__}, not a map")
    # msgpack decodes integers as exact ints and booleans as bools, so `type(x) is int`
    # also refuses True/False where a number belongs.
    opaque = header_map.get("opaque")
    if type(opaque) is not int or not 0 <= opaque <= OPAQUE_MAX:
        raise RemoteProtocolError(f"header opaque must be an int in 0..{OPAQUE_MAX}")
    code = header_map.get("code")
    if type(code) is not int or not 0 <= code <= CODE_MAX:
        raise RemoteProtocolError(f"header code must be an int in 0..{CODE_MAX}", opaque=opaque)
    flags = header_map.get("flags", 0)
    if type(flags) is not int or flags not in _VALID_FLAGS:
        raise RemoteProtocolError(f"bad flags {flags!r}", opaque=opaque)
    fields = header_map.get("fields", {})
    problem = fields_shape_problem(fields)
    if problem is not None:
        raise RemoteProtocolError(problem, opaque=opaque)
    remark = header_map.get("remark", "")
    if type(remark) is not str:
        raise RemoteProtocolError("remark must be a str", opaque=opaque)
    checked_fields = cast(Fields, fields)
    if flags == FLAG_RESPONSE:
        return Response(code, opaque, checked_fields, body, remark)
    request_code = _REQUEST_CODE_BY_VALUE.get(code)
    if request_code is None:
        raise RemoteProtocolError(f"unknown request code {code}", opaque=opaque)
    return Request(request_code, opaque, checked_fields, body, flags == FLAG_ONEWAY)


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass in Python but a different type on the wire.
    return isinstance(value, int) and not isinstance(value, bool)


class FrameDecoder:
    """Splits a byte stream into frames and decodes each into an event.

    ``receive_data(b"")`` marks the end of the stream. After ``next_event`` raises, the
    decoder has lost its place in the stream: discard it.
    """

    __slots__ = ("_buffer", "_end_of_stream", "limits")

    def __init__(self, limits: FrameLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buffer = ReceiveBuffer()
        self._end_of_stream = False

    @property
    def buffered_size_bytes(self) -> int:
        return len(self._buffer)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data``; empty ``data`` means the peer ended the stream."""
        if self._end_of_stream:
            raise LocalProtocolError("data after the end of the stream")
        if not data:
            self._end_of_stream = True
            return
        # Keep an immutable copy only when the caller's buffer could change under us.
        self._buffer.append(data if isinstance(data, bytes) else bytes(data))

    def next_event(self) -> Event | Sentinel:
        """The next whole frame's event, ``NEED_DATA``, or ``PEER_CLOSED`` at a clean end."""
        buffer = self._buffer
        buffered = len(buffer)
        if buffered >= PREFIX_SIZE:
            length, header_length = buffer.peek_prefix()
            self._check_length(length)
            self._check_header_length(length, header_length)
            if buffered >= LENGTH_SIZE + length:
                buffer.skip(PREFIX_SIZE)
                header = buffer.take(header_length)
                body = buffer.take(length - LENGTH_SIZE - header_length)
                return decode_event(header, body)
        elif buffered >= LENGTH_SIZE:
            self._check_length(buffer.peek_u32(0))
        if not self._end_of_stream:
            return NEED_DATA
        if buffered:
            raise RemoteProtocolError(f"stream ended inside a frame ({buffered} bytes buffered)")
        return PEER_CLOSED

    def _check_length(self, length: int) -> None:
        # Checked as soon as the 4 length bytes are in: an oversize frame is refused before
        # any of it is buffered.
        if LENGTH_SIZE + length > self.limits.max_frame_size_bytes:
            raise FrameTooLarge(LENGTH_SIZE + length, self.limits.max_frame_size_bytes)
        if length < LENGTH_SIZE:
            raise RemoteProtocolError(f"frame length {length} is shorter than its header length")

    def _check_header_length(self, length: int, header_length: int) -> None:
        if header_length > length - LENGTH_SIZE or header_length == 0:
            raise RemoteProtocolError(f"header length {header_length} does not fit the frame")
        if header_length > self.limits.max_header_size_bytes:
            raise RemoteProtocolError(
                f"header of {header_length} bytes is over the limit of "
                f"{self.limits.max_header_size_bytes}"
            )
