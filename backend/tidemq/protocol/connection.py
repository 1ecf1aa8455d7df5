"""The sans-IO connection: the frame codec plus the rules of a TideMQ conversation.

Bytes in, events out, bytes back, as in h11: ``receive_data(bytes)`` buffers what the socket
gave, ``next_event()`` returns the next ``Request``/``Response``, ``NEED_DATA`` or
``PEER_CLOSED``, and ``send_request``/``send_response`` return the bytes to write. There are
no sockets, no clocks and no awaits here: the shell (``tidemq.net``) owns I/O and timers.

Theory of operation. One object is one end of one connection and knows its role. Everything
that decides what may happen next lives in this module:

1. Hello first. A client's first frame is a HELLO request with ``{version, client_id}``; the
   server speaks only once it has received one, and each side sees exactly one HELLO::

                 client sends HELLO /                send or receive HELLO again,
                 server receives HELLO               any other rule broken
       AWAIT_HELLO ------------------------> OPEN ----------------------------> ERROR
            |                                                                    ^
            +---- anything else first ----------------------------------------- +
                  (peer's fault: ERROR; our own attempt: refused, state unchanged)

2. Request ids (``opaque``) increase strictly in each direction. So a response is matched
   by id, a response to an id never sent is caught, and a late response (its request timed
   out in the shell) is still recognised as plausible and returned for the shell to drop.
3. A response answers one request that came in and is not yet answered (oneway requests
   get none). Once the hello is through, either side may send requests (a broker may ask a
   producer to check a transaction), so the bookkeeping is per direction, not per role.
4. Errors: the peer's ``RemoteProtocolError`` moves the connection to ERROR for good: every
   later call raises ``ConnectionBroken``. Our own ``LocalProtocolError`` changes nothing,
   because no bytes were produced, so the stream is still in step (a handler that builds
   a bad response can be answered with an INTERNAL error instead).

Resource handling: the buffer never holds more than one incomplete frame past what the
caller fed since its last ``next_event()`` call, and a frame's size is checked against the
limit as soon as its 4-byte length has arrived.
"""

from __future__ import annotations

import enum
from typing import Final, final

from tidemq.errors import ProtocolError
from tidemq.protocol.codes import SUPPORTED_PROTOCOL_VERSIONS, RequestCode
from tidemq.protocol.events import PEER_CLOSED, Event, Request, Response, Sentinel
from tidemq.protocol.exceptions import ConnectionBroken, LocalProtocolError, RemoteProtocolError
from tidemq.protocol.frame import (
    DEFAULT_LIMITS,
    FrameDecoder,
    FrameLimits,
    encode_request,
    encode_response,
)

CLIENT_ID_LENGTH_MAX: Final = 255


class Role(enum.Enum):
    CLIENT = "CLIENT"
    SERVER = "SERVER"


class ConnectionState(enum.Enum):
    AWAIT_HELLO = "AWAIT_HELLO"
    OPEN = "OPEN"
    ERROR = "ERROR"


def hello_problem(request: Request) -> str | None:
    """Why ``request`` is not a valid HELLO, or None when it is."""
    if request.oneway:
        return "HELLO must not be oneway"
    version = request.fields.get("version")
    client_id = request.fields.get("client_id")
    if not isinstance(version, int) or isinstance(version, bool):
        return "HELLO needs an int version"
    if version not in SUPPORTED_PROTOCOL_VERSIONS:
        return f"protocol version {version} is not supported"
    if not isinstance(client_id, str) or not 0 < len(client_id) <= CLIENT_ID_LENGTH_MAX:
        return f"HELLO needs a client_id of 1..{CLIENT_ID_LENGTH_MAX} characters"
    return None


@final
class Connection:
    """One end of a TideMQ connection. See the module docstring for the rules."""

    def __init__(self, role: Role, *, limits: FrameLimits = DEFAULT_LIMITS) -> None:
        self.role = role
        self.limits = limits
        self._decoder = FrameDecoder(limits)
        self._state = ConnectionState.AWAIT_HELLO
        self._error: ProtocolError | None = None
        self._peer_closed = False
        self._client_id: str | None = None
        self._protocol_version: int | None = None
        self._opaque_counter = -1
        self._last_sent_request_opaque = -1
        self._last_received_request_opaque = -1
        self._unanswered_opaques: set[int] = set()

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def error(self) -> ProtocolError | None:
        """The error that moved the connection to ERROR, if it is there."""
        return self._error

    @property
    def peer_closed(self) -> bool:
        """True once ``next_event()`` has returned ``PEER_CLOSED``."""
        return self._peer_closed

    @property
    def client_id(self) -> str | None:
        """The client id of the HELLO (sent or received); None before it."""
        return self._client_id

    @property
    def protocol_version(self) -> int | None:
        return self._protocol_version

    @property
    def buffered_size_bytes(self) -> int:
        """Bytes received and not yet returned as events: nonzero means a frame is partly in
        (the shell bounds how long it may stay that way)."""
        return self._decoder.buffered_size_bytes

    @property
    def unanswered_request_count(self) -> int:
        """Requests received that still await our response."""
        return len(self._unanswered_opaques)

    def next_opaque(self) -> int:
        """A fresh request id, larger than every one handed out before."""
        self._opaque_counter = max(self._opaque_counter, self._last_sent_request_opaque) + 1
        return self._opaque_counter

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer ended the stream.

        Raises:
            ConnectionBroken: the connection is in ERROR.
            LocalProtocolError: data after the end of the stream (a caller bug).
        """
        self._refuse_if_broken()
        self._decoder.receive_data(data)

    def next_event(self) -> Event | Sentinel:
        """The next event from the peer, ``NEED_DATA`` or ``PEER_CLOSED``.

        Raises:
            RemoteProtocolError: the peer broke the format or the rules (now in ERROR).
            ConnectionBroken: the connection was already in ERROR.
        """
        self._refuse_if_broken()
        try:
            event = self._decoder.next_event()
            if isinstance(event, Request):
                self._on_request_received(event)
            elif isinstance(event, Response):
                self._on_response_received(event)
            elif event is PEER_CLOSED:
                self._peer_closed = True
        except RemoteProtocolError as exc:
            self._state = ConnectionState.ERROR
            self._error = exc
            raise
        return event

    def send_request(self, request: Request) -> bytes:
        """The bytes that send ``request``. A client's first request must be HELLO.

        Raises:
            LocalProtocolError: the request breaks a rule (nothing changed).
            ConnectionBroken: the connection is in ERROR.
        """
        self._refuse_if_broken()
        is_hello = self._check_outgoing_request(request)
        data = encode_request(request, self.limits)
        self._last_sent_request_opaque = request.opaque
        if is_hello:
            self._open(request)
        return data

    def send_response(self, response: Response) -> bytes:
        """The bytes that send ``response`` to a request received and not yet answered.

        Raises:
            LocalProtocolError: no such request awaits an answer, or the response does not
                encode (nothing changed).
            ConnectionBroken: the connection is in ERROR.
        """
        self._refuse_if_broken()
        if response.opaque not in self._unanswered_opaques:
            raise LocalProtocolError(f"no request {response.opaque} awaits a response")
        data = encode_response(response, self.limits)
        self._unanswered_opaques.discard(response.opaque)
        return data

    def _refuse_if_broken(self) -> None:
        if self._state is ConnectionState.ERROR:
            raise ConnectionBroken("the connection already failed") from self._error

    def _check_outgoing_request(self, request: Request) -> bool:
        """Check ``request`` against the rules; True if it is the (valid) HELLO."""
        is_hello = request.code is RequestCode.HELLO
        if self._state is ConnectionState.AWAIT_HELLO:
            if self.role is Role.SERVER:
                raise LocalProtocolError("a server sends nothing before the client's HELLO")
            if not is_hello:
                raise LocalProtocolError("the first request on a connection must be HELLO")
            problem = hello_problem(request)
            if problem is not None:
                raise LocalProtocolError(problem)
        elif is_hello:
            raise LocalProtocolError("HELLO was already exchanged on this connection")
        if request.opaque <= self._last_sent_request_opaque:
            raise LocalProtocolError(
                f"request id {request.opaque} does not increase (use next_opaque())"
            )
        return is_hello

    def _on_request_received(self, request: Request) -> None:
        is_hello = request.code is RequestCode.HELLO
        if self._state is ConnectionState.AWAIT_HELLO:
            if self.role is Role.CLIENT:
                raise RemoteProtocolError("the server sent a request before our HELLO")
            if not is_hello:
                raise RemoteProtocolError(
                    "the first request on a connection must be HELLO", opaque=request.opaque
                )
            problem = hello_problem(request)
            if problem is not None:
                raise RemoteProtocolError(problem, opaque=request.opaque)
        elif is_hello:
            raise RemoteProtocolError("HELLO was already exchanged", opaque=request.opaque)
        if request.opaque <= self._last_received_request_opaque:
            raise RemoteProtocolError(f"request id {request.opaque} does not increase")
        self._last_received_request_opaque = request.opaque
        if not request.oneway:
            self._unanswered_opaques.add(request.opaque)
        if is_hello:
            self._open(request)

    def _on_response_received(self, response: Response) -> None:
        if response.opaque > self._last_sent_request_opaque:
            raise RemoteProtocolError(f"response to request {response.opaque}, never sent")

    def _open(self, hello: Request) -> None:
        version = hello.fields["version"]
        client_id = hello.fields["client_id"]
        assert isinstance(version, int)  # hello_problem checked both
        assert isinstance(client_id, str)
        self._protocol_version = version
        self._client_id = client_id
        self._state = ConnectionState.OPEN
