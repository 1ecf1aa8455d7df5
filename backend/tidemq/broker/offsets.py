"""Committed consumer offsets per (group, topic, queue), persisted in ``offsets.json``.

Commits land in memory at once and reach the file on the broker's persist interval and at
shutdown (atomic replace). An offset is "the next message the group will consume".
A committed offset survives a broker restart to within one persist interval; consumers
re-read at most that window again (delivery is at least once).
"""

from __future__ import annotations

import os
from typing import final

from tidemq.broker.metadata import load_json, save_json


@final
class ConsumerOffsets:
    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "offsets.json")
        self._offsets: dict[str, dict[str, dict[int, int]]] = {}  # group -> topic -> q -> n
        self.dirty = False

    def load(self) -> None:
        data = load_json(self.path) or {}
        for group, topics in data.items():
            for topic, queues in topics.items():
                for queue_id, offset in queues.items():
                    self._offsets.setdefault(group, {}).setdefault(topic, {})[
                        int(queue_id)] = int(offset)

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        """A copy to save (take it on the event loop, save it in a thread)."""
        return {group: {topic: {str(q): n for q, n in queues.items()}
                        for topic, queues in topics.items()}
                for group, topics in self._offsets.items()}

    def save(self) -> None:
        """Blocking (fsync). Only for single-threaded use: the node saves a snapshot."""
        snapshot = self.snapshot()
        self.dirty = False
        save_json(self.path, snapshot)

    def commit(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        self._offsets.setdefault(group, {}).setdefault(topic, {})[queue_id] = offset
        self.dirty = True

    def get(self, group: str, topic: str, queue_id: int) -> int | None:
        return self._offsets.get(group, {}).get(topic, {}).get(queue_id)

    def groups(self) -> list[str]:
        return sorted(self._offsets)

    def of_group(self, group: str) -> dict[str, dict[int, int]]:
        return {topic: dict(queues) for topic, queues in self._offsets.get(group, {}).items()}

    def forget_topic(self, topic: str) -> None:
        for topics in self._offsets.values():
            if topics.pop(topic, None) is not None:
                self.dirty = True
