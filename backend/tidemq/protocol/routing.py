"""What brokers tell name servers and name servers tell clients, as wire fields.

Three shapes travel between the nodes, all sans-IO values here:

* ``BrokerRegistration``: one replica of a broker group (REGISTER_BROKER, sent at start
  and with every heartbeat): cluster, group, address, replication address, role, epoch and
  the broker's topic configuration.
* ``TopicRoute``: which broker groups serve a topic (GET_ROUTE's answer): per group its
  queue counts, permission, leader and replicas.
* ``ClusterView``: every cluster, group and replica a name server knows (GET_CLUSTER_INFO).

``from_fields`` of each checks every type and range, so a bogus registration is the
sender's ``InvalidArgument``, never a crash of the name server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from tidemq.errors import InvalidArgument
from tidemq.protocol import fields as f
from tidemq.protocol.events import Fields, FieldValue

Role: TypeAlias = Literal["leader", "follower"]
ROLES: Final = ("leader", "follower")
PERMISSION_READ: Final = 4
PERMISSION_WRITE: Final = 2
QUEUE_COUNT_MAX: Final = 1024
TOPICS_PER_BROKER_MAX: Final = 100_000
NAME_LENGTH_MAX: Final = 127


@dataclass(frozen=True, slots=True)
class TopicQueues:
    """A topic's queue counts and permission on one broker group."""

    read_queue_count: int
    write_queue_count: int
    permission: int = PERMISSION_READ | PERMISSION_WRITE

    def to_fields(self) -> dict[str, FieldValue]:
        return {"read_queue_count": self.read_queue_count,
                "write_queue_count": self.write_queue_count,
                "permission": self.permission}

    @classmethod
    def from_fields(cls, value: Mapping[str, Any]) -> TopicQueues:
        counts = [f.integer(value, key, minimum=0, maximum=QUEUE_COUNT_MAX)
                  for key in ("read_queue_count", "write_queue_count")]
        permission = f.integer(value, "permission", minimum=0, maximum=7)
        return cls(counts[0], counts[1], permission)


@dataclass(frozen=True, slots=True)
class BrokerRegistration:
    """One broker replica as it registers with a name server."""

    cluster: str
    group: str
    address: str
    replication_address: str
    role: Role
    epoch: int
    topics: Mapping[str, TopicQueues]

    def to_fields(self) -> dict[str, FieldValue]:
        return {"cluster": self.cluster, "group": self.group, "address": self.address,
                "replication_address": self.replication_address, "role": self.role,
                "epoch": self.epoch,
                "topics": {name: queues.to_fields() for name, queues in self.topics.items()}}

    @classmethod
    def from_fields(cls, value: Mapping[str, Any]) -> BrokerRegistration:
        """Raises InvalidArgument naming the first field that is missing or wrong."""
        cluster = _name(value, "cluster")
        group = _name(value, "group")
        address = _address(f.string(value, "address"), "address")
        replication = f.string(value, "replication_address", "")
        if replication:
            _address(replication, "replication_address")
        role = f.string(value, "role", "leader")
        if role not in ROLES:
            raise InvalidArgument(f"field 'role' must be one of {', '.join(ROLES)}")
        epoch = f.integer(value, "epoch", 0, minimum=0, maximum=2**63 - 1)
        raw_topics = value.get("topics", {})
        if not isinstance(raw_topics, Mapping):
            raise InvalidArgument("field 'topics' must be a map of topic name to queues")
        if len(raw_topics) > TOPICS_PER_BROKER_MAX:
            raise InvalidArgument(f"at most {TOPICS_PER_BROKER_MAX} topics per registration")
        topics: dict[str, TopicQueues] = {}
        for name, queues in raw_topics.items():
            if not isinstance(name, str) or not 0 < len(name) <= NAME_LENGTH_MAX:
                raise InvalidArgument("topic names in 'topics' must be 1..127 characters")
            if not isinstance(queues, Mapping):
                raise InvalidArgument(f"topics[{name!r}] must be a map")
            topics[name] = TopicQueues.from_fields(queues)
        return cls(cluster, group, address, replication, role,  # type: ignore[arg-type]
                   epoch, topics)


@dataclass(frozen=True, slots=True)
class RouteReplica:
    address: str
    role: Role
    epoch: int


@dataclass(frozen=True, slots=True)
class RouteGroup:
    """One broker group serving a topic: where to write (the leader) and who holds it."""

    cluster: str
    group: str
    leader: str | None
    replicas: tuple[RouteReplica, ...]
    queues: TopicQueues

    @property
    def readable_address(self) -> str | None:
        """The leader, or (no leader now) any replica: consumers may read from followers."""
        if self.leader is not None:
            return self.leader
        return self.replicas[0].address if self.replicas else None


@dataclass(frozen=True, slots=True)
class TopicRoute:
    topic: str
    groups: tuple[RouteGroup, ...]

    def to_fields(self) -> dict[str, FieldValue]:
        return {"topic": self.topic, "groups": [
            {"cluster": g.cluster, "group": g.group, "leader": g.leader,
             "replicas": [{"address": r.address, "role": r.role, "epoch": r.epoch}
                          for r in g.replicas],
             **g.queues.to_fields()} for g in self.groups]}

    @classmethod
    def from_fields(cls, value: Fields) -> TopicRoute:
        topic = f.string(value, "topic")
        groups: list[RouteGroup] = []
        for raw in f.map_list(value, "groups"):
            leader = raw.get("leader")
            if leader is not None and not isinstance(leader, str):
                raise InvalidArgument("field 'leader' must be an address or null")
            replicas = tuple(
                RouteReplica(f.string(r, "address"), _role(f.string(r, "role")),
                             f.integer(r, "epoch", 0))
                for r in f.map_list(raw, "replicas"))
            groups.append(RouteGroup(f.string(raw, "cluster"), f.string(raw, "group"), leader,
                                     replicas, TopicQueues.from_fields(raw)))
        return cls(topic, tuple(groups))


@dataclass(frozen=True, slots=True)
class ClusterReplica:
    address: str
    replication_address: str
    role: Role
    epoch: int
    topic_count: int
    heartbeat_age_ms: int


@dataclass(frozen=True, slots=True)
class ClusterView:
    """``{cluster: {group: replicas}}`` and the topics each group serves."""

    groups: Mapping[tuple[str, str], tuple[ClusterReplica, ...]]
    topics: Mapping[str, tuple[str, ...]]
    """Topic -> the ``cluster/group`` names serving it."""

    def broker_addresses(self) -> list[str]:
        """The address to talk to in each group: its leader, or (no leader now) its first
        replica, in group order."""
        addresses = []
        for replicas in self.groups.values():
            leaders = [r for r in replicas if r.role == "leader"]
            chosen = max(leaders, key=lambda r: r.epoch) if leaders else \
                (replicas[0] if replicas else None)
            if chosen is not None:
                addresses.append(chosen.address)
        return list(dict.fromkeys(addresses))

    def to_fields(self) -> dict[str, FieldValue]:
        return {
            "groups": [{"cluster": cluster, "group": group, "replicas": [
                {"address": r.address, "replication_address": r.replication_address,
                 "role": r.role, "epoch": r.epoch, "topic_count": r.topic_count,
                 "heartbeat_age_ms": r.heartbeat_age_ms} for r in replicas]}
                for (cluster, group), replicas in sorted(self.groups.items())],
            "topics": {topic: list(groups) for topic, groups in sorted(self.topics.items())},
        }

    @classmethod
    def from_fields(cls, value: Fields) -> ClusterView:
        groups: dict[tuple[str, str], tuple[ClusterReplica, ...]] = {}
        for raw in f.map_list(value, "groups"):
            groups[(f.string(raw, "cluster"), f.string(raw, "group"))] = tuple(
                ClusterReplica(f.string(r, "address"), f.string(r, "replication_address", ""),
                               _role(f.string(r, "role")), f.integer(r, "epoch", 0),
                               f.integer(r, "topic_count", 0),
                               f.integer(r, "heartbeat_age_ms", 0))
                for r in f.map_list(raw, "replicas"))
        raw_topics = value.get("topics", {})
        topics: dict[str, tuple[str, ...]] = {}
        if isinstance(raw_topics, Mapping):
            for topic, names in raw_topics.items():
                if isinstance(names, list | tuple):
                    topics[topic] = tuple(str(name) for name in names)
        return cls(groups, topics)


def _role(value: str) -> Role:
    if value not in ROLES:
        raise InvalidArgument(f"role {value!r} is not one of {', '.join(ROLES)}")
    return value  # type: ignore[return-value]


def _name(value: Mapping[str, Any], key: str) -> str:
    name = f.string(value, key)
    if not 0 < len(name) <= NAME_LENGTH_MAX:
        raise InvalidArgument(f"field {key!r} must be 1..{NAME_LENGTH_MAX} characters")
    return name


def _address(address: str, key: str) -> str:
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"field {key!r} must be host:port, got {address[:64]!r}")
    return address
