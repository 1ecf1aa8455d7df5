"""The server end: ``serve()`` accepts connections and runs a frame pump for each.

A service in the Trio manner: start it with ``await nursery.start(serve, handler, host,
port)`` (or an anyio task group's ``start``); it binds, reports the bound addresses through
``task_status`` (bind port 0 in tests and read the real port there), and serves until
cancelled. Each accepted connection gets its own task, its own sans-IO ``Connection`` and
its own limits, so one misbehaving peer costs only its own connection::

    accept --> connection task: Session.run()                    (see _session)
                 first frame must be HELLO, within hello_timeout_ms, else close
                 HELLO         --> answered here: {version, **hello_fields}
                 other request --> immediate_handler(request, context) on the
                                   reader's task, when given (it may hand on:)
                                   handler(request, context) in a task, at most
                                   max_in_flight_requests at once, else SYSTEM_BUSY
                 bad bytes     --> PROTOCOL_ERROR answer (when possible), then close

The handler returns the ``Response`` (build it with ``request.respond(...)``), or None for
a oneway request or one it answered already with ``context.respond_now``. Raising a
``TideError`` answers with its code and remark; raising anything else answers INTERNAL and
logs the traceback here. Neither ends the connection or the server.

An ``immediate_handler`` (optional) is a plain function offered each request first, on the
connection's reader task: it returns the answer (or None) when it can without waiting, or
``HandleLater()`` to hand the request to ``handler`` in a task, or ``HandleLater(continuation)``
to have a task await the rest of the work it began (see ``_session``). Errors are answered
as for ``handler``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, TypeAlias, final

import anyio
import anyio.abc
from anyio.streams.tls import TLSListener

from tidemq.net._options import ConnectionOptions, ConnectionStatistics
from tidemq.net._session import HANDLE_LATER, HandleLater, Session
from tidemq.protocol.codes import PROTOCOL_VERSION, RequestCode
from tidemq.protocol.connection import Connection, Role
from tidemq.protocol.events import Fields, Request, Response

logger = logging.getLogger("tidemq.net.server")

DEFAULT_HELLO_TIMEOUT_MS: Final = 10_000

Handler: TypeAlias = Callable[[Request, "ServerConnectionContext"], Awaitable[Response | None]]
ImmediateHandler: TypeAlias = Callable[[Request, "ServerConnectionContext"],
                                       Response | HandleLater | None]


@final
class ServerConnectionContext:
    """What a handler knows about the connection a request came on."""

    def __init__(self, session: Session, remote_address: str) -> None:
        self._session = session
        self.remote_address = remote_address
        """``host:port`` of the peer."""

    @property
    def client_id(self) -> str:
        """The client id from the peer's HELLO (handlers only ever run after it)."""
        client_id = self._session.connection.client_id
        assert client_id is not None
        return client_id

    @property
    def protocol_version(self) -> int:
        version = self._session.connection.protocol_version
        assert version is not None
        return version

    def statistics(self) -> ConnectionStatistics:
        return self._session.statistics()

    def respond_now(self, response: Response) -> bool:
        """Answer a request of this connection now, from any task (see
        ``Session.respond_now``); its handler then returns None. False if it could not."""
        return self._session.respond_now(response)

    def close(self) -> None:
        """Drop this connection: the peer's waiting requests fail with ConnectionClosed."""
        self._session.close("connection closed by the server")


async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    options: ConnectionOptions | None = None,
    hello_timeout_ms: int = DEFAULT_HELLO_TIMEOUT_MS,
    hello_fields: Fields | None = None,
    on_closed: Callable[[ServerConnectionContext], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    immediate_handler: ImmediateHandler | None = None,
    task_status: anyio.abc.TaskStatus[list[tuple[str, int]]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TideMQ connections on ``host:port`` until cancelled.

    Args:
        handler: ``async def handler(request, context) -> Response | None``.
        options: per-connection limits (frame sizes, in-flight window, buffers).
        hello_timeout_ms: a peer that has not sent HELLO by then is disconnected.
        hello_fields: what the HELLO answer tells clients besides ``version`` (a broker
            puts its identity here).
        on_closed: called with a connection's context once it has ended (a broker drops
            the consumers that lived on it).
        ssl_context: when given, connections are TLS (the seam for encrypted transport).
        immediate_handler: ``def immediate_handler(request, context)``, offered each request
            first on the reader's task (see the module docstring).
        task_status: receives the bound ``(host, port)`` addresses once accepting.
    """
    options = options or ConnectionOptions()
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    addresses = [_host_and_port(one.extra(anyio.abc.SocketAttribute.local_address))
                 for one in listener.listeners]
    serving: anyio.abc.Listener[anyio.abc.ByteStream] = listener
    if ssl_context is not None:
        serving = TLSListener(listener, ssl_context, standard_compatible=False)
    async with serving:
        logger.info("serving", extra={"addresses": addresses})
        task_status.started(addresses)
        hello_answer = {**(hello_fields or {}), "version": PROTOCOL_VERSION}
        await serving.serve(
            partial(_serve_connection, handler, immediate_handler, options, hello_timeout_ms,
                    hello_answer, on_closed)
        )


async def _serve_connection(
    handler: Handler,
    immediate_handler: ImmediateHandler | None,
    options: ConnectionOptions,
    hello_timeout_ms: int,
    hello_answer: Fields,
    on_closed: Callable[[ServerConnectionContext], None] | None,
    stream: anyio.abc.ByteStream,
) -> None:
    remote_address = _describe_peer(stream)
    hello_received = anyio.Event()

    async def dispatch(request: Request) -> Response | None:
        if request.code is RequestCode.HELLO:
            hello_received.set()
            return request.respond(hello_answer)
        return await handler(request, context)

    def dispatch_now(request: Request) -> Response | HandleLater | None:
        if request.code is RequestCode.HELLO or immediate_handler is None:
            return HANDLE_LATER
        return immediate_handler(request, context)

    session = Session(stream, Connection(Role.SERVER, limits=options.frame_limits),
                      handler=dispatch, options=options, peer_name=remote_address,
                      immediate_handler=dispatch_now if immediate_handler else None)
    context = ServerConnectionContext(session, remote_address)
    async with anyio.create_task_group() as watchdog_group:
        watchdog_group.start_soon(_close_without_hello, session, hello_received,
                                  hello_timeout_ms)
        try:
            await session.run()
        finally:
            watchdog_group.cancel_scope.cancel()
            if on_closed is not None:
                try:
                    on_closed(context)
                except Exception:  # a hook must not take the server down
                    logger.exception("on_closed_failed", extra={"peer": remote_address})


async def _close_without_hello(
    session: Session, hello_received: anyio.Event, hello_timeout_ms: int
) -> None:
    with anyio.move_on_after(hello_timeout_ms / 1000):
        await hello_received.wait()
        return
    logger.info("no_hello", extra={"timeout_ms": hello_timeout_ms})
    session.close(f"no HELLO within {hello_timeout_ms} ms")


def _host_and_port(address: object) -> tuple[str, int]:
    assert isinstance(address, tuple)
    host, port = address[0], address[1]
    assert isinstance(host, str)
    assert isinstance(port, int)
    return host, port


def _describe_peer(stream: anyio.abc.ByteStream) -> str:
    try:
        host, port = _host_and_port(stream.extra(anyio.abc.SocketAttribute.remote_address))
    except anyio.TypedAttributeLookupError:
        return "unknown"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
