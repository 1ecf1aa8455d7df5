"""Connections to brokers: one per address, opened on first use, kept, replaced when lost.

Every client object (Producer, Consumer, Admin) owns one ``BrokerPool``, and the pool lives
in the object's task group::

    client task group
      ├── keeper(address A):  async with connection A: wait until told to close
      ├── keeper(address B):  ...
      └── (the client's own tasks)

A ``ClientConnection`` must be entered and exited by the same task (it owns a task group of
its own), so a connection is never entered by whichever task happened to need it first:
``connection()`` asks the client's task group to *start* a keeper task, which connects,
enters the connection, reports it through ``task_status`` and parks until the pool retires
it. Callers share the connection; the session under it multiplexes their requests.

Liveness: a failed connect, or a connection that closes under a request, marks the address
*down* for ``down_for_ms``. Down addresses are still usable (the caller decides); a
producer uses ``is_down`` to route around them. The next request to a retired connection's
address dials again.

Requests are awaited (``call``), or answered through a callback (``call_nowait``: sent at
once from the calling task when the connection is open and has room, the answer handed over
by the connection's reader task, with no task waiting and no task switch on the way).

Errors: every failure to reach a broker surfaces as ``ConnectionClosed`` (a connect refused
or unreachable, wrapped, with the ``OSError`` as ``__cause__``) or ``RequestTimeout``, both
``TideError`` subclasses with the retryable code SERVICE_UNAVAILABLE, so callers catch one
family. An error response raises its typed ``TideError`` (``TopicNotFound``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import cast, final

import anyio
import anyio.abc

from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.errors import InvalidArgument, TideError
from tidemq.net import ClientConnection, ConnectionClosed, RequestTimeout, connect
from tidemq.protocol.codes import RequestCode, ResponseCode
from tidemq.protocol.events import Body, Fields, Response
from tidemq.protocol.exceptions import exception_from_response

logger = logging.getLogger("tidemq.client.pool")

CallOutcome = Callable[[Response | None, TideError | None], None]
"""``call_nowait``'s callback: the SUCCESS response and None, or None and the error (the
broker's error answer, typed; ``ConnectionClosed``; ``RequestTimeout``)."""


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (IPv6 as ``"[::1]:port"``). Raises InvalidArgument."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise InvalidArgument(f"broker address {address!r} is not host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise InvalidArgument(f"broker address {address!r} has no valid port")
    return host.strip("[]"), port


def check_brokers(brokers: Sequence[str] | str | None, *, namesrv_given: bool
                  ) -> tuple[str, ...]:
    """Validate the ``brokers=`` argument every client takes: required unless name
    servers are given (then the brokers come from them; any listed here are used too)."""
    if isinstance(brokers, str):
        brokers = [brokers]
    if not brokers:
        if namesrv_given:
            return ()
        raise InvalidArgument("pass brokers=['host:port', ...] or namesrv='host:port'")
    unique = tuple(dict.fromkeys(brokers))
    for address in unique:
        parse_address(address)
    return unique


@dataclass(slots=True)
class _Entry:
    connection: ClientConnection
    retire: anyio.Event


@final
class BrokerPool:
    """Connections to a fixed list of broker addresses. See the module docstring."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        client_id: str,
        connect_timeout_ms: int,
        request_timeout_ms: int,
        down_for_ms: int,
    ) -> None:
        self.addresses: tuple[str, ...] = tuple(addresses)
        self.client_id = client_id
        self._connect_timeout_ms = connect_timeout_ms
        self._request_timeout_ms = request_timeout_ms
        self._down_for_s = down_for_ms / 1000
        self._entries: dict[str, _Entry] = {}
        self._dial_locks: dict[str, anyio.Lock] = {}
        self.down_until_s: dict[str, float] = {}
        """Addresses marked down, until when; empty is ``any_down() == False`` (read it,
        never change it from outside)."""
        self._owner: OwnedTaskGroup | None = None

    def bind(self, owner: OwnedTaskGroup) -> None:
        """Give the pool the task group its keeper tasks run in (the client's)."""
        self._owner = owner

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """Replace the known addresses (name-server discovery). Connections to addresses
        dropped here are retired."""
        new = tuple(dict.fromkeys(addresses))
        for address in set(self.addresses) - set(new):
            entry = self._entries.pop(address, None)
            if entry is not None:
                entry.retire.set()
        self.addresses = new

    def add_addresses(self, addresses: Iterable[str]) -> None:
        self.addresses = tuple(dict.fromkeys([*self.addresses, *sorted(addresses)]))

    def is_down(self, address: str) -> bool:
        until = self.down_until_s.get(address)
        if until is None:
            return False
        if anyio.current_time() < until:
            return True
        del self.down_until_s[address]  # the down period is over
        return False

    def any_down(self) -> bool:
        """Whether some address was marked down and has not been dialled again since (a
        cheap test that lets the common case skip per-queue checks)."""
        return bool(self.down_until_s)

    def mark_down(self, address: str) -> None:
        self.down_until_s[address] = anyio.current_time() + self._down_for_s

    def live_addresses(self) -> list[str]:
        """Addresses not marked down, in configured order; all of them if every one is."""
        live = [address for address in self.addresses if not self.is_down(address)]
        return live or list(self.addresses)

    async def call(
        self,
        address: str,
        code: RequestCode,
        fields: Fields,
        body: Body = b"",
        *,
        timeout_ms: int | None = None,
    ) -> Response:
        """Send a request to ``address`` and return its SUCCESS response.

        Raises:
            ConnectionClosed: the broker cannot be reached or the connection was lost.
            RequestTimeout: no answer within ``timeout_ms`` (default: the pool's).
            TideError: the broker's error answer, typed.
        """
        connection = await self.connection(address)
        try:
            return await connection.call(code, fields, body, timeout_ms=timeout_ms)
        except ConnectionClosed:
            self._retire(address, connection)
            self.mark_down(address)
            raise

    def call_nowait(self, address: str, code: RequestCode, fields: Fields, body: Body,
                    on_outcome: CallOutcome, *, timeout_ms: int | None = None
                    ) -> tuple[ClientConnection, int] | None:
        """``call`` without a waiting task, when the request can go at once: sent from the
        calling task, its outcome handed to ``on_outcome`` (once, on the connection's
        reader or timer task; it must not block) with the errors ``call`` raises. Returns
        the connection and the request's opaque (``forget`` withdraws it), or None, and
        nothing sent, when the request would have to wait (no open connection yet, no
        room on it): the caller then uses ``call``.

        Raises LocalProtocolError if the request cannot be encoded.
        """
        entry = self._entries.get(address)
        if entry is None:
            return None
        connection = entry.connection

        def outcome(response: Response | None, error: TideError | None) -> None:
            if response is not None:
                if response.code == ResponseCode.SUCCESS:
                    on_outcome(response, None)
                    return
                error = exception_from_response(response)
            elif isinstance(error, ConnectionClosed):
                self._retire(address, connection)
                self.mark_down(address)
            on_outcome(None, error)

        opaque = connection.request_nowait(code, fields, body, outcome, timeout_ms=timeout_ms)
        return None if opaque is None else (connection, opaque)

    async def send_oneway(self, address: str, code: RequestCode, fields: Fields,
                          body: Body = b"") -> None:
        """Queue a oneway request to ``address`` (no answer). Raises as ``call`` does."""
        connection = await self.connection(address)
        try:
            await connection.send_oneway(code, fields, body)
        except ConnectionClosed:
            self._retire(address, connection)
            self.mark_down(address)
            raise

    async def connection(self, address: str) -> ClientConnection:
        """The open connection to ``address``, dialling it if needed."""
        entry = self._entries.get(address)
        if entry is not None and not entry.connection.closed:
            return entry.connection
        lock = self._dial_locks.setdefault(address, anyio.Lock())
        async with lock:
            entry = self._entries.get(address)
            if entry is not None and not entry.connection.statistics().closed:
                return entry.connection
            if entry is not None:
                self._retire(address, entry.connection)
            entry = await self._dial(address)
            self._entries[address] = entry
            return entry.connection

    def close(self) -> None:
        """Retire every connection (their keepers exit; the task group then finishes)."""
        for entry in self._entries.values():
            entry.retire.set()
        self._entries.clear()

    async def _dial(self, address: str) -> _Entry:
        if self._owner is None:
            raise RuntimeError("use the client with 'async with' before sending requests")
        try:
            entry = await self._owner.task_group.start(
                self._keep, address, name=f"tidemq.client.keeper {address}")
        except OSError as error:
            self.mark_down(address)
            raise ConnectionClosed(f"cannot connect to broker {address}: {error}") from error
        except (ConnectionClosed, RequestTimeout):
            self.mark_down(address)
            raise
        self.down_until_s.pop(address, None)
        return cast(_Entry, entry)

    async def _keep(self, address: str, *,
                    task_status: anyio.abc.TaskStatus[_Entry] = anyio.TASK_STATUS_IGNORED,
                    ) -> None:
        assert self._owner is not None
        host, port = parse_address(address)
        # Dialling is cancellable by whoever asked for the connection; once connected, only
        # the pool (retire) or the client's close ends the connection (see _lifecycle).
        connection = await connect(host, port, client_id=self.client_id,
                                   connect_timeout_ms=self._connect_timeout_ms,
                                   request_timeout_ms=self._request_timeout_ms)
        with self._owner.guard():
            async with connection:
                entry = _Entry(connection, anyio.Event())
                task_status.started(entry)
                await entry.retire.wait()
        logger.debug("connection_retired", extra={"broker": address})

    def _retire(self, address: str, connection: ClientConnection) -> None:
        entry = self._entries.get(address)
        if entry is not None and entry.connection is connection:
            entry.retire.set()
            del self._entries[address]

