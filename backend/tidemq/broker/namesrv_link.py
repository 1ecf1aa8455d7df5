"""The broker's side of the name servers: register at start, heartbeat, deregister.

Every ``namesrv_heartbeat_interval_ms`` (and at once when a topic changes) the broker
sends its registration (cluster, group, address, role, epoch, topic configuration) to
*every* configured name server, concurrently. In ``peers`` mode each one takes it; in
``primary`` and ``chain`` modes only the writer does and the others answer NOT_LEADER, so
the broker needs to know nothing of the mode and follows a failover by itself. The
connections stay open: a name server evicts a broker whose connection closes at once.
On a graceful stop the broker deregisters (UNREGISTER_BROKER) from each name server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import final

import trio

from tidemq.errors import NotLeader, TideError
from tidemq.net import PeerConnections, connect, split_address
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.routing import BrokerRegistration

logger = logging.getLogger("tidemq.broker.namesrv")

REQUEST_TIMEOUT_MS = 3_000
FIRST_REGISTRATION_WAIT_S = 2.0
UNREGISTER_WAIT_S = 1.0


@final
class NameServerLink:
    def __init__(self, addresses: tuple[str, ...], interval_ms: int,
                 registration: Callable[[], BrokerRegistration]) -> None:
        self.addresses = addresses
        self._interval_s = interval_ms / 1000
        self._registration = registration
        self._changed = trio.Event()
        self.accepted_by: set[str] = set()
        """Name servers that took the last registration (for status and tests)."""

    def topics_changed(self) -> None:
        """Send the registration now rather than at the next heartbeat."""
        self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                peers = PeerConnections(nursery, client_id=f"broker-{self._address()}",
                                        connect_timeout_ms=REQUEST_TIMEOUT_MS,
                                        request_timeout_ms=REQUEST_TIMEOUT_MS)
                with trio.move_on_after(FIRST_REGISTRATION_WAIT_S):
                    await self._register_everywhere(peers)
                task_status.started()
                while True:
                    with trio.move_on_after(self._interval_s):
                        await self._changed.wait()
                    self._changed = trio.Event()
                    await self._register_everywhere(peers)
        finally:
            with trio.CancelScope(shield=True):
                await self._unregister_everywhere()

    def _address(self) -> str:
        return self._registration().address

    async def _register_everywhere(self, peers: PeerConnections) -> None:
        fields = {"registration": self._registration().to_fields()}
        accepted: set[str] = set()

        async def register(address: str) -> None:
            try:
                await peers.call(address, RequestCode.REGISTER_BROKER, fields)
                accepted.add(address)
            except NotLeader:
                pass  # a replica, a middle of a chain: the writer has it
            except TideError as error:
                logger.warning("registration failed", extra={"namesrv": address,
                                                             "remark": error.remark})

        async with trio.open_nursery() as nursery:
            for address in self.addresses:
                nursery.start_soon(register, address)
        if not accepted:
            logger.warning("no name server took the registration",
                           extra={"namesrv": list(self.addresses)})
        self.accepted_by = accepted

    async def _unregister_everywhere(self) -> None:
        address = self._address()

        async def unregister(namesrv: str) -> None:
            host, port = split_address(namesrv)
            try:
                connection = await connect(host, port, client_id=f"broker-{address}",
                                           connect_timeout_ms=REQUEST_TIMEOUT_MS)
            except (TideError, OSError):
                return  # the name server will evict it when its timeout passes
            async with connection:
                try:
                    await connection.call(RequestCode.UNREGISTER_BROKER, {"address": address})
                except TideError:
                    pass  # NOT_LEADER (the writer has it) or gone: eviction covers it

        with trio.move_on_after(UNREGISTER_WAIT_S):
            async with trio.open_nursery() as nursery:
                for namesrv in self.addresses:
                    nursery.start_soon(unregister, namesrv)
