"""What ``Admin`` returns: small frozen values, built from the brokers' answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueueInfo:
    broker: str
    queue_id: int
    min_offset: int
    max_offset: int

    @property
    def message_count(self) -> int:
        """Messages stored in the queue now (retention moves ``min_offset`` up)."""
        return self.max_offset - self.min_offset


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    read_queue_count: int
    write_queue_count: int
    permission: int
    """4 = read, 2 = write, 6 = both."""
    brokers: tuple[str, ...]
    """The brokers that have the topic (queue counts are those of the first)."""
    queues: tuple[QueueInfo, ...] = ()
    """Every queue on every broker (``describe_topic`` only; ``list_topics`` leaves it
    empty)."""

    @property
    def message_count(self) -> int:
        return sum(queue.message_count for queue in self.queues)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    client_id: str
    subscriptions: Mapping[str, str]
    """Topic to tag expression (the group's retry topic included)."""
    idle_ms: int
    """Time since the member's last heartbeat."""
    broker: str


@dataclass(frozen=True, slots=True)
class GroupOffset:
    topic: str
    broker: str
    queue_id: int
    committed: int
    """The next offset the group will consume; -1 if it never committed one."""
    max_offset: int
    lag: int


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    mode: str
    members: tuple[MemberInfo, ...]
    offsets: tuple[GroupOffset, ...]
    versions: Mapping[str, int]
    """Membership version on each broker (it changes whenever a member joins or leaves)."""

    @property
    def lag(self) -> int:
        """Messages stored and not yet consumed by the group, over all queues."""
        return sum(offset.lag for offset in self.offsets)

    @property
    def client_ids(self) -> tuple[str, ...]:
        return tuple(sorted({member.client_id for member in self.members}))


@dataclass(frozen=True, slots=True)
class NameServerInfo:
    """One name server as ``Admin.cluster`` found it."""

    address: str
    reachable: bool
    mode: str = ""
    role: str = ""
    """standalone, peer, primary, replica, head, middle, tail, or joining."""
    ready: bool = False
    writer: str | None = None
    term: int = 0
    broker_count: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    address: str
    role: str
    epoch: int
    topic_count: int
    heartbeat_age_ms: int


@dataclass(frozen=True, slots=True)
class BrokerGroupInfo:
    cluster: str
    group: str
    replicas: tuple[ReplicaInfo, ...]


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    namesrvs: tuple[NameServerInfo, ...]
    groups: tuple[BrokerGroupInfo, ...]
    """As the first name server that serves reads sees them."""
    topics: Mapping[str, tuple[str, ...]]
    """Topic -> the ``cluster/group`` names serving it."""
