"""The events a connection turns bytes into, and back: ``Request`` and ``Response``.

Events are frozen, slotted dataclasses: plain values that carry no I/O and no connection
state, so tests build them by hand and compare them with ``==``.

* ``fields`` is the code's own arguments: a msgpack-able map with ``str`` keys. Values are
  ``None``, ``bool``, ``int`` (-2**63 .. 2**64-1), ``float``, ``str``, ``bytes``, lists of
  values and maps from ``str`` to values, nested at most ``FIELD_DEPTH_MAX`` deep. Fields
  decoded from the wire have been checked against exactly this shape, so a handler can
  narrow them with ``isinstance`` and nothing else.
* ``body`` is raw bytes that are never re-encoded: message bodies and commit-log records
  travel as they are. A decoded body is ``bytes`` or a read-only ``memoryview`` of the bytes
  as they were received (no copy when a frame arrived inside one read).

Besides events, ``Connection.next_event()`` returns one of two sentinels: ``NEED_DATA``
(feed more bytes) and ``PEER_CLOSED`` (the peer ended the stream between frames).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from tidemq.protocol.codes import RequestCode, ResponseCode, describe_response_code

FieldValue: TypeAlias = (
    bool | int | float | str | bytes | Sequence["FieldValue"] | Mapping[str, "FieldValue"] | None
)
Fields: TypeAlias = Mapping[str, FieldValue]
Body: TypeAlias = bytes | bytearray | memoryview

FIELD_DEPTH_MAX: Final = 16
"""How deep maps and lists may nest inside ``fields`` (the fields map itself is depth 1)."""


@dataclass(frozen=True, slots=True, repr=False)
class Request:
    """A request: ``code`` says what is asked; ``opaque`` is its id on this connection.

    Request ids increase strictly along a connection in each direction (see
    ``tidemq.protocol.connection``). A ``oneway`` request gets no response.
    """

    code: RequestCode
    opaque: int
    fields: Fields = field(default_factory=dict)
    body: Body = b""
    oneway: bool = False

    def respond(
        self,
        fields: Fields | None = None,
        body: Body = b"",
        *,
        code: int = ResponseCode.SUCCESS,
        remark: str = "",
    ) -> Response:
        """Build the response to this request (same ``opaque``); SUCCESS unless told."""
        return Response(code, self.opaque, {} if fields is None else fields, body, remark)

    def __repr__(self) -> str:
        return (f"Request(code={self.code.name}, opaque={self.opaque}, fields={self.fields!r}, "
                f"body={_body_repr(self.body)}, oneway={self.oneway})")


@dataclass(frozen=True, slots=True, repr=False)
class Response:
    """A response to the request with the same ``opaque``.

    ``code`` is ``ResponseCode.SUCCESS`` or an error code (an ``ErrorCode`` value, or one this
    version does not know). ``remark`` is a human explanation, mostly for errors.
    """

    code: int
    opaque: int
    fields: Fields = field(default_factory=dict)
    body: Body = b""
    remark: str = ""

    @property
    def ok(self) -> bool:
        """True for a SUCCESS response."""
        return self.code == ResponseCode.SUCCESS

    def __repr__(self) -> str:
        return (f"Response(code={describe_response_code(self.code)}, opaque={self.opaque}, "
                f"fields={self.fields!r}, body={_body_repr(self.body)}, remark={self.remark!r})")


_BODY_REPR_BYTES_MAX: Final = 32


def _body_repr(body: Body) -> str:
    # A memoryview's default repr shows an address, not bytes; show a bounded prefix.
    size = body.nbytes if isinstance(body, memoryview) else len(body)
    head = bytes(body[:_BODY_REPR_BYTES_MAX])
    return repr(head) if size <= _BODY_REPR_BYTES_MAX else f"{head!r}...({size} bytes)"


Event: TypeAlias = Request | Response


class Sentinel(enum.Enum):
    """Non-event results of ``Connection.next_event()``."""

    NEED_DATA = "NEED_DATA"
    PEER_CLOSED = "PEER_CLOSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
"""No whole frame is buffered yet: call ``receive_data`` with more bytes."""

PEER_CLOSED: Final = Sentinel.PEER_CLOSED
"""The peer ended the stream cleanly between two frames. Returned again on every call."""
