"""Topic configuration: queue counts and permissions, persisted in ``topics.json``.

A topic has ``write_queue_count`` queues producers send to and ``read_queue_count`` queues
consumers read (equal unless an operator shrinks a topic in two steps, as in RocketMQ), and
permissions (read, write). Topic names follow ``[A-Za-z0-9_%-]{1,127}``; names starting with
``TIDE_SYS_``, ``%RETRY%`` or ``%DLQ%`` are system topics that users cannot create.
"""

from __future__ import annotations

import enum
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, final

from tidemq.broker.metadata import load_json, save_json
from tidemq.errors import InvalidArgument, MessageIllegal, NoPermission, TopicNotFound
from tidemq.store import check_topic_name

SYSTEM_PREFIXES = ("TIDE_SYS_", "%RETRY%", "%DLQ%")
QUEUE_COUNT_MAX = 1024


class Permission(enum.IntFlag):
    READ = 4
    WRITE = 2
    READ_WRITE = 6


@dataclass(frozen=True, slots=True)
class TopicConfig:
    name: str
    read_queue_count: int
    write_queue_count: int
    permission: int = Permission.READ_WRITE

    @property
    def readable(self) -> bool:
        return bool(self.permission & Permission.READ)

    @property
    def writable(self) -> bool:
        return bool(self.permission & Permission.WRITE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_system_topic(name: str) -> bool:
    return name.startswith(SYSTEM_PREFIXES)


def _check_counts(read_queue_count: int, write_queue_count: int, permission: int) -> None:
    for label, count in (("read_queue_count", read_queue_count),
                         ("write_queue_count", write_queue_count)):
        if not isinstance(count, int) or not 1 <= count <= QUEUE_COUNT_MAX:
            raise InvalidArgument(f"{label} must be 1..{QUEUE_COUNT_MAX}")
    if not isinstance(permission, int) or permission & ~int(Permission.READ_WRITE):
        raise InvalidArgument("permission must be a combination of READ (4) and WRITE (2)")


@final
class TopicManager:
    def __init__(self, directory: str, *, auto_create: bool, default_queue_count: int) -> None:
        self.path = os.path.join(directory, "topics.json")
        self.auto_create = auto_create
        self.default_queue_count = default_queue_count
        self.topics: dict[str, TopicConfig] = {}
        self.version = 0  # bumps on every change (route refresh, name-server heartbeat)

    def load(self) -> None:
        data = load_json(self.path) or {}
        for name, fields in data.items():
            self.topics[name] = TopicConfig(**fields)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """A copy to save (take it on the event loop, save it in a thread)."""
        return {name: topic.to_dict() for name, topic in self.topics.items()}

    def save(self) -> None:
        """Blocking (fsync). Only for single-threaded use: the node saves a snapshot."""
        save_json(self.path, self.snapshot())

    def get(self, name: str) -> TopicConfig | None:
        return self.topics.get(name)

    def require(self, name: str) -> TopicConfig:
        """The topic, or TopicNotFound."""
        topic = self.topics.get(name)
        if topic is None:
            raise TopicNotFound(f"topic {name!r} does not exist")
        return topic

    def for_send(self, name: str) -> tuple[TopicConfig, bool]:
        """The topic a producer sends to, auto-creating it when allowed.

        Returns (topic, created). Raises MessageIllegal, TopicNotFound, NoPermission.
        """
        topic = self.existing_for_send(name)
        if topic is not None:
            return topic, False
        if not self.auto_create or is_system_topic(name):
            raise TopicNotFound(f"topic {name!r} does not exist (auto-creation is off)")
        topic = self.create(name, self.default_queue_count)
        if not topic.writable:
            raise NoPermission(f"topic {name!r} is not writable")
        return topic, True

    def existing_for_send(self, name: str) -> TopicConfig | None:
        """The topic a producer sends to if it exists (None: ``for_send`` may create it).

        Raises MessageIllegal (a bad name), NoPermission.
        """
        check_topic_name(name)
        topic = self.topics.get(name)
        if topic is not None and not topic.writable:
            raise NoPermission(f"topic {name!r} is not writable")
        return topic

    def create(self, name: str, queue_count: int, permission: int = Permission.READ_WRITE,
               *, system: bool = False) -> TopicConfig:
        check_topic_name(name)
        if is_system_topic(name) and not system:
            raise MessageIllegal(f"{name!r} is a system topic name")
        _check_counts(queue_count, queue_count, permission)
        existing = self.topics.get(name)
        if existing is not None:
            return existing
        topic = TopicConfig(name, queue_count, queue_count, permission)
        self.topics[name] = topic
        self.version += 1
        return topic

    def update(self, name: str, *, read_queue_count: int | None = None,
               write_queue_count: int | None = None, permission: int | None = None
               ) -> TopicConfig:
        topic = self.require(name)
        updated = replace(
            topic,
            read_queue_count=topic.read_queue_count if read_queue_count is None
            else read_queue_count,
            write_queue_count=topic.write_queue_count if write_queue_count is None
            else write_queue_count,
            permission=topic.permission if permission is None else permission,
        )
        _check_counts(updated.read_queue_count, updated.write_queue_count, updated.permission)
        self.topics[name] = updated
        self.version += 1
        return updated

    def delete(self, name: str) -> None:
        self.require(name)
        del self.topics[name]
        self.version += 1
