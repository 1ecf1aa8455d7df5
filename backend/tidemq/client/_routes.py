"""Topic routes: which (broker, queue) pairs a topic has, learned with DESCRIBE_TOPIC.

A topic may live on several brokers; its queues are then the pairs of every broker that
has it. ``describe_route`` asks each broker in turn (a broker without the topic answers
TOPIC_NOT_EXIST and contributes nothing; one that cannot be reached is skipped, unless none
answers at all). Write queues come from brokers whose topic permission allows writing,
read queues from those allowing reading.

``RouteCache`` is the producer's view: a route per topic, fetched on first use (from the
brokers as above, or from the name servers: ``_namesrv``), refreshed
after ``ttl_ms`` or when a send finds it stale (``invalidate``). Concurrent first uses of a
topic share one fetch (a lock per topic), so a burst of sends does not become a burst of
DESCRIBE_TOPIC requests. The consumer refreshes its routes itself, on its heartbeat.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, final

import anyio

from tidemq.client._pool import BrokerPool
from tidemq.errors import TideError, TopicNotFound
from tidemq.protocol.codes import RequestCode

PERMISSION_READ: Final = 4
PERMISSION_WRITE: Final = 2


@dataclass(frozen=True, slots=True, order=True)
class MessageQueue:
    """One queue of a topic on one broker: the unit of ordering and of allocation."""

    topic: str
    broker: str
    queue_id: int
    _hash: int = field(init=False, repr=False, compare=False)
    """Computed once: a queue is a dict key on every send (lanes, sticky choice)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.topic, self.broker, self.queue_id)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """Where a topic's queues are. Both tuples are sorted; both empty: no broker has it."""

    topic: str
    write_queues: tuple[MessageQueue, ...]
    read_queues: tuple[MessageQueue, ...]

    @property
    def exists(self) -> bool:
        return bool(self.write_queues or self.read_queues)


async def describe_route(pool: BrokerPool, topic: str) -> TopicRoute:
    """The topic's queues on every broker of the pool.

    Raises:
        TideError: no broker answered at all (the last error seen); a topic that no broker
            has is not an error: the route is empty.
    """
    write: list[MessageQueue] = []
    read: list[MessageQueue] = []
    answered = False
    last_error: TideError | None = None
    for address in pool.addresses:
        try:
            response = await pool.call(address, RequestCode.DESCRIBE_TOPIC, {"topic": topic})
        except TopicNotFound:
            answered = True
            continue
        except TideError as error:
            last_error = error
            continue
        answered = True
        config = response.fields.get("topic")
        if not isinstance(config, dict):
            continue
        permission = _int(config.get("permission"))
        if permission & PERMISSION_WRITE:
            write.extend(MessageQueue(topic, address, queue_id)
                         for queue_id in range(_int(config.get("write_queue_count"))))
        if permission & PERMISSION_READ:
            read.extend(MessageQueue(topic, address, queue_id)
                        for queue_id in range(_int(config.get("read_queue_count"))))
    if not answered and last_error is not None:
        raise last_error
    return TopicRoute(topic, tuple(sorted(write)), tuple(sorted(read)))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class _CachedRoute:
    route: TopicRoute
    fetched_at_s: float


@final
class RouteCache:
    """Routes by topic with a time to live. See the module docstring."""

    def __init__(self, fetch: Callable[[str], Awaitable[TopicRoute]], *, ttl_ms: int) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_ms / 1000
        self._routes: dict[str, _CachedRoute] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def get(self, topic: str) -> TopicRoute:
        """The route of ``topic``, fetched when missing or older than the time to live."""
        cached = self._fresh(topic)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(topic, anyio.Lock())
        async with lock:
            cached = self._fresh(topic)
            if cached is not None:
                return cached
            route = await self._fetch(topic)
            self._routes[topic] = _CachedRoute(route, time.monotonic())
            return route

    def cached(self, topic: str) -> TopicRoute | None:
        """The route if it is cached and fresh, without waiting (None: call ``get``)."""
        return self._fresh(topic)

    def invalidate(self, topic: str) -> None:
        """Forget the route: the next ``get`` fetches it again."""
        self._routes.pop(topic, None)

    def _fresh(self, topic: str) -> TopicRoute | None:
        cached = self._routes.get(topic)
        # time.monotonic, not the event loop's clock: this runs on every send, and asking
        # anyio for the loop's time costs several times more.
        if cached is None or time.monotonic() - cached.fetched_at_s > self._ttl_s:
            return None
        return cached.route
