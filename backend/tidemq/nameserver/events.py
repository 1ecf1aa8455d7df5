"""What happens in a name server's registry, as values the event bus carries.

Every registry change yields zero or more of these; the node publishes them to every
handler (route-cache invalidation, the structured log, metrics, and any plug-in found
through the ``tidemq.nameserver.handlers`` entry-point group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class BrokerRegistered:
    """A replica registered for the first time (or again after it was evicted)."""

    cluster: str
    group: str
    address: str


@dataclass(frozen=True, slots=True)
class BrokerEvicted:
    """A replica left the registry: ``reason`` is "silent", "disconnected" or
    "unregistered" (a graceful shutdown)."""

    cluster: str
    group: str
    address: str
    reason: str


@dataclass(frozen=True, slots=True)
class TopicChanged:
    """Which groups serve ``topic``, or its queues or permission there, changed."""

    topic: str


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """The group's leader is now ``leader`` (None: the group has no leader)."""

    cluster: str
    group: str
    leader: str | None
    epoch: int


RegistryEvent: TypeAlias = BrokerRegistered | BrokerEvicted | TopicChanged | LeaderChanged
