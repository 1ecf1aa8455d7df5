"""Node-to-node connections: one per address, dialled on first use, replaced when lost.

A name server talks to the other name servers, a broker to its name servers. Each keeps a
``PeerConnections`` whose keeper tasks live in the node's own task group (a connection
must be entered and left by one task; see ``_client``)::

    node task group
      ├── keeper(peer A): async with connection: wait until retired
      └── keeper(peer B): ...

``call`` dials when needed (at most one dial per address at a time) and retires a
connection that closed, so the next call dials again. Failures surface as the typed
``ConnectionClosed`` / ``RequestTimeout`` (both SERVICE_UNAVAILABLE) or the peer's error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast, final

import anyio
import anyio.abc

from tidemq.net._client import ClientConnection, connect
from tidemq.net._errors import ConnectionClosed, RequestTimeout
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Fields, Response

logger = logging.getLogger("tidemq.net.peers")


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` -> (host, port); ValueError when it is not one."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


class TaskStarter(Protocol):
    """An anyio task group or a Trio nursery: where keeper tasks run."""

    async def start(self, func: Callable[..., Awaitable[Any]], *args: Any,
                    name: Any = None) -> Any: ...


@dataclass(slots=True)
class _Entry:
    connection: ClientConnection
    retire: anyio.Event


@final
class PeerConnections:
    def __init__(self, task_group: TaskStarter, *, client_id: str,
                 connect_timeout_ms: int = 2_000, request_timeout_ms: int = 5_000) -> None:
        self._task_group = task_group
        self._client_id = client_id
        self._connect_timeout_ms = connect_timeout_ms
        self._request_timeout_ms = request_timeout_ms
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def call(self, address: str, code: RequestCode, fields: Fields, *,
                   timeout_ms: int | None = None) -> Response:
        """Send a request and return its SUCCESS response (typed errors otherwise)."""
        connection = await self._connection(address)
        try:
            return await connection.call(code, fields, timeout_ms=timeout_ms)
        except ConnectionClosed:
            self.retire(address)
            raise

    def retire(self, address: str) -> None:
        """Close the connection to ``address`` (the next call dials again)."""
        entry = self._entries.pop(address, None)
        if entry is not None:
            entry.retire.set()

    def close(self) -> None:
        for address in list(self._entries):
            self.retire(address)

    async def _connection(self, address: str) -> ClientConnection:
        entry = self._entries.get(address)
        if entry is not None and not entry.connection.statistics().closed:
            return entry.connection
        async with self._locks.setdefault(address, anyio.Lock()):
            entry = self._entries.get(address)
            if entry is not None and not entry.connection.statistics().closed:
                return entry.connection
            self.retire(address)
            try:
                started = await self._task_group.start(self._keep, address)
            except OSError as error:
                raise ConnectionClosed(f"cannot connect to {address}: {error}") from error
            except (ConnectionClosed, RequestTimeout):
                raise
            entry = cast(_Entry, started)
            self._entries[address] = entry
            return entry.connection

    async def _keep(self, address: str, *,
                    task_status: anyio.abc.TaskStatus[_Entry] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
        host, port = split_address(address)
        connection = await connect(host, port, client_id=self._client_id,
                                   connect_timeout_ms=self._connect_timeout_ms,
                                   request_timeout_ms=self._request_timeout_ms)
        async with connection:
            entry = _Entry(connection, anyio.Event())
            task_status.started(entry)
            await entry.retire.wait()
