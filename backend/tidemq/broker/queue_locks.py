"""Queue locks for orderly consumption: one consumer of a group holds a queue at a time.

A lock lasts ``lease_s`` and is renewed by the holder's periodic lock request; a holder that
stops renewing (crashed, partitioned) loses it when the lease runs out, so another member
can take the queue. Locks are in memory: after a broker restart every member re-locks.
"""

from __future__ import annotations

from typing import final

LOCK_LEASE_S = 60.0


@final
class QueueLocks:
    def __init__(self, lease_s: float = LOCK_LEASE_S) -> None:
        self.lease_s = lease_s
        self._holders: dict[tuple[str, str, int], tuple[str, float]] = {}

    def try_lock(self, group: str, topic: str, queue_ids: list[int], client_id: str,
                 now_s: float) -> list[int]:
        """Lock (or renew) what is free or already ours; returns the queues we now hold."""
        held: list[int] = []
        for queue_id in queue_ids:
            key = (group, topic, queue_id)
            holder = self._holders.get(key)
            if holder is None or holder[0] == client_id or now_s >= holder[1]:
                self._holders[key] = (client_id, now_s + self.lease_s)
                held.append(queue_id)
        return held

    def unlock(self, group: str, topic: str, queue_ids: list[int], client_id: str) -> None:
        for queue_id in queue_ids:
            key = (group, topic, queue_id)
            holder = self._holders.get(key)
            if holder is not None and holder[0] == client_id:
                del self._holders[key]

    def release_client(self, group: str, client_id: str) -> None:
        for key in [k for k, (c, _) in self._holders.items() if k[0] == group and c == client_id]:
            del self._holders[key]

    def expire(self, now_s: float) -> None:
        """Forget leases that ran out (holders that stopped renewing)."""
        for key in [k for k, (_, until) in self._holders.items() if now_s >= until]:
            del self._holders[key]

    def holder(self, group: str, topic: str, queue_id: int, now_s: float) -> str | None:
        holder = self._holders.get((group, topic, queue_id))
        if holder is None or now_s >= holder[1]:
            return None
        return holder[0]
