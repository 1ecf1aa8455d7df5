"""The consumer's control loop: heartbeats, routes, group membership, queue allocation.

Every ``heartbeat_interval_ms`` (or sooner, when kicked)::

    HEARTBEAT to every broker  --> the group's membership version on each
    routes per topic           --> the subscribed topics and, clustering, the group's
                                   retry topic, which appears on the first nack; from the
                                   brokers (DESCRIBE_TOPIC, every round) or the name servers
                                   (GET_ROUTE, every route_refresh_ms and at once after a
                                   broker failed to answer a heartbeat)
    if a version or a route changed:
        clustering: DESCRIBE_GROUP on every broker --> members (union of client ids)
                    target = allocate_average(members, every read queue, this client)
        broadcast:  target = every read queue
    converge: stop workers of queues not in the target (they commit their offset), start
              workers for new ones; orderly: first LOCK_QUEUES (which also renews the
              leases, every lock_renew_interval_ms), and start only what was locked; a
              queue whose lock was lost is stopped.

A version change may also be an operator's offset reset (the broker bumps the version for
it): before converging, running queues whose committed offset was moved by someone else
restart from it (``ConsumerCore.resync_offsets``).

When members disagree for a moment (one saw a join a heartbeat before another), a queue
may be pulled twice or not at all until the next round: at-least-once delivery tolerates
the first, the next heartbeat ends the second. A consumer that cannot learn the members
keeps its current queues.

Errors: a broker that does not answer is skipped for this round (its version is ``None``,
so its return counts as a change). The first round, run inside ``Consumer.__aenter__``,
raises when no broker answers the heartbeat at all, so a wrong address fails fast.
"""

from __future__ import annotations

import logging
from typing import Final, final

import anyio
import anyio.abc

from tidemq.client._allocation import allocate_average
from tidemq.client._core import ConsumerCore
from tidemq.client._namesrv import NameServerRoutes, RouteSource
from tidemq.client._routes import MessageQueue, TopicRoute
from tidemq.errors import TideError
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import FieldValue

logger = logging.getLogger("tidemq.client.rebalance")

UNREGISTER_TIMEOUT_MS: Final = 2_000


@final
class Rebalancer:
    """See the module docstring."""

    def __init__(self, core: ConsumerCore, source: RouteSource, *,
                 route_refresh_ms: int) -> None:
        self._core = core
        self._source = source
        self._route_refresh_s = route_refresh_ms / 1000 if \
            isinstance(source, NameServerRoutes) else 0.0
        self._routes_due_s = 0.0
        self._settings = core.settings
        self._pool = core.pool
        self._versions: dict[str, int | None] = {}
        self._routes: dict[str, TopicRoute] = {}
        self._seen_at_start: set[tuple[str, str]] | None = None
        self._target: set[MessageQueue] = set()
        self._dirty = True
        self._next_lock_renew_s = 0.0
        self._wakeup = anyio.Event()
        self._scope = anyio.CancelScope()
        self._finished = anyio.Event()
        core.on_send_back = self._after_send_back

    def kick(self) -> None:
        """Run a round now rather than at the next interval."""
        self._wakeup.set()

    async def first_round(self) -> None:
        """Join the group and take queues. Raises the last error when no broker answers."""
        await self._source.refresh_brokers()
        error = await self._heartbeat()
        if error is not None:
            raise error
        await self._refresh_routes()
        await self._rebalance()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        interval_s = self._settings.heartbeat_interval_ms / 1000
        try:
            with self._core.owner.guard(), self._scope:
                task_status.started()
                while True:
                    with anyio.move_on_after(interval_s):
                        await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    try:
                        await self._round()
                    except TideError as error:  # a broker failed mid-round: next round
                        logger.warning("rebalance_failed", extra={"error": error.remark})
                        self._dirty = True
        finally:
            self._finished.set()

    async def stop(self) -> None:
        """Stop the loop and wait until it has (a stop in progress finishes, shielded)."""
        self._scope.cancel()
        await self._finished.wait()

    async def unregister(self) -> None:
        """Tell every broker this client left the group (members rebalance at once)."""
        for address in self._pool.addresses:
            try:
                await self._pool.call(address, RequestCode.UNREGISTER_CLIENT, {
                    "client_id": self._pool.client_id, "group": self._settings.group},
                    timeout_ms=UNREGISTER_TIMEOUT_MS)
            except TideError as error:
                logger.info("unregister_failed", extra={"broker": address,
                                                        "error": error.remark})

    async def _round(self) -> None:
        heartbeat_error = await self._heartbeat()
        if heartbeat_error is not None:
            logger.warning("heartbeat_failed", extra={"error": heartbeat_error.remark})
        if self._dirty and self._settings.clustering:
            await self._core.resync_offsets()
        routes_changed = False
        broker_failed = any(version is None for version in self._versions.values())
        if anyio.current_time() >= self._routes_due_s or broker_failed:
            if self._route_refresh_s:
                await self._source.refresh_brokers()
            routes_changed = await self._refresh_routes()
        await self._rebalance(recompute=routes_changed)

    async def _rebalance(self, *, recompute: bool = True) -> None:
        if recompute or self._dirty:
            target = await self._compute_target()
            self._dirty = target is None
            if target is not None:
                self._target = target
        await self._converge()

    async def _heartbeat(self) -> TideError | None:
        """HEARTBEAT every broker; the last error when none answered. Marks a change of
        any broker's group version as dirty."""
        settings = self._settings
        fields: dict[str, FieldValue] = {"client_id": self._pool.client_id, "groups": [{
            "group": settings.group, "mode": settings.mode,
            "subscriptions": settings.heartbeat_subscriptions()}]}
        versions: dict[str, int | None] = {}
        last_error: TideError | None = None
        for address in self._pool.addresses:
            versions[address] = None
            try:
                response = await self._pool.call(address, RequestCode.HEARTBEAT, fields,
                                                 timeout_ms=settings.request_timeout_ms)
            except TideError as error:
                last_error = error
                continue
            groups = response.fields.get("groups")
            version = groups.get(settings.group) if isinstance(groups, dict) else None
            versions[address] = version if isinstance(version, int) else -1
        if versions != self._versions:
            self._versions = versions
            self._dirty = True
        if all(version is None for version in versions.values()):
            return last_error
        return None

    async def _refresh_routes(self) -> bool:
        """The route of every pulled topic; True when a route changed."""
        changed = False
        self._routes_due_s = anyio.current_time() + self._route_refresh_s
        for topic in self._settings.topics:
            try:
                route = await self._source.route(topic)
            except TideError as error:
                logger.info("route_refresh_failed", extra={"topic": topic,
                                                           "error": error.remark})
                continue
            if self._routes.get(topic) != route:
                self._routes[topic] = route
                changed = True
        if self._seen_at_start is None:
            self._seen_at_start = {(queue.topic, queue.broker)
                                   for route in self._routes.values()
                                   for queue in route.read_queues}
        return changed

    async def _compute_target(self) -> set[MessageQueue] | None:
        queues = [queue for topic in self._settings.topics
                  for queue in self._routes.get(topic, _NO_ROUTE).read_queues]
        if not self._settings.clustering:
            return set(queues)
        members = await self._members()
        if members is None or self._pool.client_id not in members:
            return None
        return set(allocate_average(members, queues, self._pool.client_id))

    async def _members(self) -> list[str] | None:
        members: set[str] = set()
        answered = False
        for address in self._pool.addresses:
            try:
                response = await self._pool.call(address, RequestCode.DESCRIBE_GROUP, {
                    "group": self._settings.group},
                    timeout_ms=self._settings.request_timeout_ms)
            except TideError as error:
                logger.info("describe_group_failed", extra={"broker": address,
                                                            "error": error.remark})
                continue
            answered = True
            listed = response.fields.get("members")
            for member in listed if isinstance(listed, list) else []:
                client_id = member.get("client_id") if isinstance(member, dict) else None
                if isinstance(client_id, str):
                    members.add(client_id)
        return sorted(members) if answered else None

    async def _converge(self) -> None:
        core, target = self._core, self._target
        for queue in sorted(set(core.workers) - target):
            await core.stop_queue(queue)
        missing = target - set(core.workers)
        if self._settings.orderly:
            now_s = anyio.current_time()
            if missing or now_s >= self._next_lock_renew_s:
                held = await core.lock(target)
                self._next_lock_renew_s = now_s + self._settings.lock_renew_interval_ms / 1000
                for queue in sorted((set(core.workers) & target) - held):
                    logger.warning("queue_lock_lost", extra={"queue": str(queue)})
                    await core.stop_queue(queue, unlock=False)
                missing &= held
        for queue in sorted(missing):
            try:
                await core.start_queue(queue, discovered_late=self._discovered_late(queue))
            except TideError as error:
                logger.warning("queue_start_failed", extra={"queue": str(queue),
                                                            "error": error.remark})
                self._dirty = True

    def _discovered_late(self, queue: MessageQueue) -> bool:
        return self._seen_at_start is not None and \
            (queue.topic, queue.broker) not in self._seen_at_start

    def _after_send_back(self) -> None:
        route = self._routes.get(self._settings.retry_topic)
        if route is None or not route.read_queues:
            self._routes_due_s = 0.0
            self.kick()


_NO_ROUTE: Final = TopicRoute("", (), ())
