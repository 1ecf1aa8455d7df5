"""Where a consumer starts each queue, and where it records progress.

Clustering: offsets live on the broker that owns the queue, per group. A queue starts at
the group's committed offset (QUERY_OFFSET); when the group never committed one (-1), at
``start_from``, and that starting point is committed at once, so every member and every
later restart agrees on it (otherwise a member taking the queue over with
``start_from="latest"`` could skip what arrived in between).

Two cases always start from the earliest offset whatever ``start_from`` says, because every
message in them arrived after the consumer subscribed: the group's retry topic, and a topic
(on a broker) that did not exist yet when the consumer started.

Broadcast: every consumer reads everything, so offsets are this consumer's own, kept in
memory (``start_from`` applies on each start; a queue given up and taken again resumes).
"""

from __future__ import annotations

import logging
from typing import final

from tidemq.client._pool import BrokerPool
from tidemq.client._routes import MessageQueue
from tidemq.client._settings import ConsumerSettings
from tidemq.errors import TideError
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Fields

logger = logging.getLogger("tidemq.client.offsets")


@final
class OffsetKeeper:
    def __init__(self, pool: BrokerPool, settings: ConsumerSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._local: dict[MessageQueue, int] = {}

    async def resolve(self, queue: MessageQueue, *, discovered_late: bool) -> int:
        """The offset to start ``queue`` at. Raises TideError (the broker's)."""
        if not self._settings.clustering:
            local = self._local.get(queue)
            if local is not None:
                return local
            offset = await self._initial(queue, discovered_late=discovered_late)
            self._local[queue] = offset
            return offset
        committed = await self.committed(queue)
        if committed >= 0:
            return committed
        offset = await self._initial(queue, discovered_late=discovered_late)
        await self.commit(queue, offset)
        return offset

    async def committed(self, queue: MessageQueue) -> int:
        """The group's committed offset of ``queue`` on its broker; -1 when none."""
        return await self._offset_request(RequestCode.QUERY_OFFSET, queue, {
            "group": self._settings.group})

    async def commit(self, queue: MessageQueue, offset: int) -> bool:
        """Record ``offset`` as the next one to consume. False when the broker could not be
        told (logged; the next commit tries again)."""
        if not self._settings.clustering:
            self._local[queue] = offset
            return True
        try:
            await self._pool.call(queue.broker, RequestCode.COMMIT_OFFSET, {
                "group": self._settings.group, "topic": queue.topic,
                "queue_id": queue.queue_id, "offset": offset},
                timeout_ms=self._settings.request_timeout_ms)
        except TideError as error:
            logger.warning("commit_failed", extra={"queue": str(queue), "offset": offset,
                                                    "error": error.remark})
            return False
        return True

    async def _initial(self, queue: MessageQueue, *, discovered_late: bool) -> int:
        start_from = self._settings.start_from
        if start_from == "earliest" or discovered_late or \
                queue.topic == self._settings.retry_topic:
            return await self._offset_request(RequestCode.GET_MIN_OFFSET, queue, {})
        if start_from == "latest":
            return await self._offset_request(RequestCode.GET_MAX_OFFSET, queue, {})
        return await self._offset_request(RequestCode.SEARCH_OFFSET_BY_TIME, queue, {
            "timestamp_ms": start_from})

    async def _offset_request(self, code: RequestCode, queue: MessageQueue,
                              extra: Fields) -> int:
        fields = {"topic": queue.topic, "queue_id": queue.queue_id, **extra}
        response = await self._pool.call(queue.broker, code, fields,
                                         timeout_ms=self._settings.request_timeout_ms)
        offset = response.fields.get("offset")
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise TideError(f"the broker answered {code.name} without an offset")
        return offset
