"""The client end: ``connect()`` dials and says HELLO; ``ClientConnection`` sends requests.

Usage, the same on Trio and on asyncio::

    async with await connect("127.0.0.1", 9876, client_id="producer-1") as connection:
        response = await connection.call(RequestCode.SEND_MESSAGE, {"topic": "t"}, body)

``await connect(...)`` does the TCP (or TLS) handshake and the HELLO exchange inline, so a
refused version or an unreachable server fails right there, with no task left behind.
Entering the connection starts its frame pump (``tidemq.net._session``) in a task group
that ``async with`` owns, as structured concurrency wants; leaving it closes the
connection and fails any request still waiting with ``ConnectionClosed``.

Many requests may be in flight at once, from many tasks; each has its own timeout
(``timeout_ms``, default ``request_timeout_ms`` of ``connect``).
"""

from __future__ import annotations

import contextlib
import ssl
from types import TracebackType
from typing import Final, Self, final

import anyio
import anyio.abc

from tidemq.net._errors import ConnectionClosed, RequestTimeout
from tidemq.net._options import ConnectionOptions, ConnectionStatistics
from tidemq.net._pending import ResponseCallback
from tidemq.net._session import Session
from tidemq.protocol.codes import PROTOCOL_VERSION, RequestCode
from tidemq.protocol.connection import Connection, Role
from tidemq.protocol.events import NEED_DATA, PEER_CLOSED, Body, Fields, Request, Response
from tidemq.protocol.exceptions import RemoteProtocolError, raise_for_response

DEFAULT_CONNECT_TIMEOUT_MS: Final = 10_000
DEFAULT_REQUEST_TIMEOUT_MS: Final = 30_000


async def connect(
    host: str,
    port: int,
    *,
    client_id: str,
    options: ConnectionOptions | None = None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS,
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS,
) -> ClientConnection:
    """Open a connection to a TideMQ node and exchange HELLO.

    Args:
        client_id: who we are (1..255 characters); the server logs it and may check it.
        ssl_context: when given, the connection is TLS (the seam for encrypted transport).

    Raises:
        OSError: the TCP connection could not be made.
        RequestTimeout: connecting and the HELLO exchange took over ``connect_timeout_ms``.
        ConnectionClosed: the server closed the connection during the HELLO exchange.
        TideError: the server refused the HELLO (the error it answered, typed).
    """
    options = options or ConnectionOptions()
    try:
        with anyio.fail_after(connect_timeout_ms / 1000):
            stream = await _open_stream(host, port, ssl_context)
            connection = Connection(Role.CLIENT, limits=options.frame_limits)
            try:
                hello_response = await _say_hello(stream, connection, client_id)
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
    except TimeoutError:
        raise RequestTimeout(
            f"connecting to {host}:{port} took over {connect_timeout_ms} ms"
        ) from None
    # No server-to-client requests are defined yet: any the server sends is answered with
    # an error (a handler parameter goes here when transaction check-backs arrive).
    session = Session(stream, connection, handler=None, options=options,
                      peer_name=f"{host}:{port}")
    return ClientConnection(session, hello_response, request_timeout_ms=request_timeout_ms)


async def _open_stream(
    host: str, port: int, ssl_context: ssl.SSLContext | None
) -> anyio.abc.ByteStream:
    if ssl_context is None:
        return await anyio.connect_tcp(host, port)
    return await anyio.connect_tcp(host, port, ssl_context=ssl_context,
                                   tls_standard_compatible=False)


async def _say_hello(
    stream: anyio.abc.ByteStream, connection: Connection, client_id: str
) -> Response:
    hello = Request(RequestCode.HELLO, connection.next_opaque(),
                    {"version": PROTOCOL_VERSION, "client_id": client_id})
    try:
        await stream.send(connection.send_request(hello))
        while True:
            event = connection.next_event()
            if event is NEED_DATA:
                try:
                    connection.receive_data(await stream.receive(64 * 1024))
                except anyio.EndOfStream:
                    connection.receive_data(b"")
                continue
            if event is PEER_CLOSED:
                raise ConnectionClosed("the server closed the connection during HELLO")
            if isinstance(event, Response) and event.opaque == hello.opaque:
                return raise_for_response(event)
            raise RemoteProtocolError("the server sent something else before its HELLO answer")
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
        raise ConnectionClosed("the connection broke during HELLO") from exc


@final
class ClientConnection:
    """A connection to a TideMQ node, after HELLO. Use it with ``async with``."""

    def __init__(
        self, session: Session, hello_response: Response, *, request_timeout_ms: int
    ) -> None:
        self._session = session
        self._hello_response = hello_response
        self._request_timeout_ms = request_timeout_ms
        self._exit_stack: contextlib.AsyncExitStack | None = None

    @property
    def client_id(self) -> str:
        client_id = self._session.connection.client_id
        assert client_id is not None  # set by the HELLO that connect() sent
        return client_id

    @property
    def server_fields(self) -> Fields:
        """The fields of the server's HELLO answer (its protocol version, at least)."""
        return self._hello_response.fields

    def statistics(self) -> ConnectionStatistics:
        return self._session.statistics()

    @property
    def closed(self) -> bool:
        """Whether the conversation is over (``statistics().closed``, without building
        the statistics)."""
        return self._session.closed

    async def __aenter__(self) -> Self:
        if self._exit_stack is not None:
            raise RuntimeError("a ClientConnection can be entered once")
        async with contextlib.AsyncExitStack() as stack:
            task_group = await stack.enter_async_context(anyio.create_task_group())
            await task_group.start(self._session.run)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if exc_type is None:
            await self._session.drain()  # queued oneway requests still go out
        self._session.close()
        assert self._exit_stack is not None
        return await self._exit_stack.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        """Close the connection; requests still waiting fail with ``ConnectionClosed``."""
        await self._session.aclose()

    async def request(
        self,
        code: RequestCode,
        fields: Fields | None = None,
        body: Body = b"",
        *,
        timeout_ms: int | None = None,
    ) -> Response:
        """Send a request and return its response, success or error alike.

        Raises:
            RequestTimeout: no response within ``timeout_ms``.
            ConnectionClosed: the connection closed first (or was closed already).
            LocalProtocolError: the request cannot be encoded (bad fields, too large).
        """
        self._check_entered()
        return await self._session.request(
            code, {} if fields is None else fields, body,
            timeout_ms=self._request_timeout_ms if timeout_ms is None else timeout_ms,
        )

    async def call(
        self,
        code: RequestCode,
        fields: Fields | None = None,
        body: Body = b"",
        *,
        timeout_ms: int | None = None,
    ) -> Response:
        """Like ``request``, but an error response raises its typed ``TideError``."""
        return raise_for_response(await self.request(code, fields, body, timeout_ms=timeout_ms))

    def request_nowait(
        self,
        code: RequestCode,
        fields: Fields,
        body: Body,
        callback: ResponseCallback,
        *,
        timeout_ms: int | None = None,
    ) -> int | None:
        """Send a request now, without waiting: ``callback(response, None)`` gets its
        response, success or error alike, or ``callback(None, error)`` the
        ``RequestTimeout`` / ``ConnectionClosed`` that failed it; it is called on the
        connection's reader (or timer) task, so it must not block. Returns the request's
        opaque (for ``forget``), or None, with nothing sent, when the request cannot go
        at once (no free slot or room to send, the connection closed): use ``request``.

        Raises:
            LocalProtocolError: the request cannot be encoded (bad fields, too large).
        """
        self._check_entered()
        return self._session.request_nowait(
            code, fields, body, callback=callback,
            timeout_ms=self._request_timeout_ms if timeout_ms is None else timeout_ms,
        )

    def forget(self, opaque: int) -> bool:
        """Withdraw a ``request_nowait`` still waiting for its response: its callback is
        never called. False if it was completed already."""
        return self._session.forget(opaque)

    async def send_oneway(
        self,
        code: RequestCode,
        fields: Fields | None = None,
        body: Body = b"",
        *,
        timeout_ms: int | None = None,
    ) -> None:
        """Send a request that gets no response. Returns once it is queued for sending."""
        self._check_entered()
        await self._session.send_oneway(
            code, {} if fields is None else fields, body,
            timeout_ms=self._request_timeout_ms if timeout_ms is None else timeout_ms,
        )

    def _check_entered(self) -> None:
        if self._exit_stack is None:
            raise RuntimeError("use 'async with await connect(...)' before sending requests")
