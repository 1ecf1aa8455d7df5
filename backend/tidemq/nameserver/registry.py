"""The registry: clusters, broker groups, replicas, topic routes and last heartbeats.

Pure state, no I/O and no clock of its own: every change is a ``Command`` applied with the
caller's ``now`` (seconds, monotonic), and returns the events it caused. Commands are plain
values with a wire form (``command_to_fields`` / ``command_from_fields``), because a name
server cluster in ``primary`` or ``chain`` mode replicates exactly these commands, and each
node applies them with its own clock (a heartbeat's age is measured where it is read)::

    Register(registration)       a broker's start or heartbeat: adds or refreshes a replica
    Unregister(address, reason)  a graceful shutdown, a closed connection, or silence

Routes are derived on demand: a topic's route is every group that has a replica reporting
the topic; the group's queues and permission come from its leader (any replica when there
is no leader). A group's leader is its replica with role "leader" and the highest epoch.

``snapshot()`` / ``load_snapshot()`` carry the whole registry to a name server that
(re)joins a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, final

from tidemq.errors import InvalidArgument
from tidemq.nameserver.events import (
    BrokerEvicted,
    BrokerRegistered,
    LeaderChanged,
    RegistryEvent,
    TopicChanged,
)
from tidemq.protocol import fields as f
from tidemq.protocol.events import FieldValue
from tidemq.protocol.routing import (
    BrokerRegistration,
    ClusterReplica,
    ClusterView,
    RouteGroup,
    RouteReplica,
    TopicQueues,
    TopicRoute,
)

EVICTION_REASONS = ("silent", "disconnected", "unregistered")

_GroupState: TypeAlias = tuple[tuple[str | None, int], dict[str, TopicQueues],
                               tuple[RouteReplica, ...]]
"""A group as routes see it: (leader, epoch), topic queues, replicas."""


@dataclass(frozen=True, slots=True)
class Register:
    registration: BrokerRegistration


@dataclass(frozen=True, slots=True)
class Unregister:
    address: str
    reason: str = "unregistered"


Command: TypeAlias = Register | Unregister


def command_to_fields(command: Command) -> dict[str, FieldValue]:
    if isinstance(command, Register):
        return {"op": "register", "registration": command.registration.to_fields()}
    return {"op": "unregister", "address": command.address, "reason": command.reason}


def command_from_fields(value: Mapping[str, Any]) -> Command:
    """Raises InvalidArgument for anything that is not a well-formed command."""
    op = f.string(value, "op")
    if op == "register":
        registration = value.get("registration")
        if not isinstance(registration, Mapping):
            raise InvalidArgument("field 'registration' must be a map")
        return Register(BrokerRegistration.from_fields(registration))
    if op == "unregister":
        reason = f.string(value, "reason", "unregistered")
        if reason not in EVICTION_REASONS:
            raise InvalidArgument(f"unknown unregister reason {reason!r}")
        return Unregister(f.string(value, "address"), reason)
    raise InvalidArgument(f"unknown registry command {op!r}")


def parse_snapshot(snapshot: Iterable[Mapping[str, Any]]) -> list[BrokerRegistration]:
    """The registrations of a ``Registry.snapshot()`` that travelled as fields.

    Raises:
        InvalidArgument: a malformed snapshot.
    """
    return [BrokerRegistration.from_fields(item) for item in snapshot]


@dataclass(slots=True)
class _Replica:
    registration: BrokerRegistration
    last_heartbeat_s: float


@final
class Registry:
    """See the module docstring."""

    def __init__(self) -> None:
        self._replicas: dict[str, _Replica] = {}
        """By broker address: an address is one replica."""
        self._groups: dict[tuple[str, str], set[str]] = {}
        """(cluster, group) -> addresses of its replicas."""

    # -- changes ---------------------------------------------------------------------------
    def apply(self, command: Command, now_s: float) -> list[RegistryEvent]:
        if isinstance(command, Register):
            return self._register(command.registration, now_s)
        return self._unregister(command.address, command.reason)

    def _register(self, registration: BrokerRegistration, now_s: float) -> list[RegistryEvent]:
        address = registration.address
        old = self._replicas.get(address)
        events: list[RegistryEvent] = []
        key = (registration.cluster, registration.group)
        touched = [key]
        if old is not None:
            if old.registration == registration:  # a plain heartbeat: nothing changed
                old.last_heartbeat_s = now_s
                return events
            touched.insert(0, (old.registration.cluster, old.registration.group))
        before = self._group_states(touched)  # before anything moves
        if old is not None and touched[0] != key:  # it moved to another group
            self._groups[touched[0]].discard(address)
            if not self._groups[touched[0]]:
                del self._groups[touched[0]]
        self._replicas[address] = _Replica(registration, now_s)
        self._groups.setdefault(key, set()).add(address)
        if old is None:
            events.append(BrokerRegistered(registration.cluster, registration.group, address))
        events.extend(self._changes(before, self._group_states(touched)))
        return events

    def _unregister(self, address: str, reason: str) -> list[RegistryEvent]:
        replica = self._replicas.get(address)
        if replica is None:
            return []
        key = (replica.registration.cluster, replica.registration.group)
        before = self._group_states([key])
        del self._replicas[address]
        self._groups[key].discard(address)
        if not self._groups[key]:
            del self._groups[key]
        events: list[RegistryEvent] = [BrokerEvicted(key[0], key[1], address, reason)]
        events.extend(self._changes(before, self._group_states([key])))
        return events

    def touch_all(self, now_s: float) -> None:
        """Count every replica as heard from now (a new writer gives brokers one timeout to
        find it before it evicts anyone)."""
        for replica in self._replicas.values():
            replica.last_heartbeat_s = now_s

    def silent_brokers(self, now_s: float, timeout_s: float) -> list[str]:
        """Addresses whose last heartbeat is older than ``timeout_s``."""
        return [address for address, replica in self._replicas.items()
                if now_s - replica.last_heartbeat_s > timeout_s]

    # -- reads -----------------------------------------------------------------------------
    def __contains__(self, address: object) -> bool:
        return address in self._replicas

    def __len__(self) -> int:
        return len(self._replicas)

    def route(self, topic: str) -> TopicRoute:
        """The groups serving ``topic`` (no groups: nobody has it)."""
        groups = []
        for key in sorted(self._groups):
            group = self._route_group(key, topic)
            if group is not None:
                groups.append(group)
        return TopicRoute(topic, tuple(groups))

    def topics(self) -> set[str]:
        return {name for replica in self._replicas.values()
                for name in replica.registration.topics}

    def cluster_view(self, now_s: float) -> ClusterView:
        groups: dict[tuple[str, str], tuple[ClusterReplica, ...]] = {}
        topics: dict[str, list[str]] = {}
        for key in sorted(self._groups):
            replicas = [self._replicas[a] for a in sorted(self._groups[key])]
            groups[key] = tuple(ClusterReplica(
                r.registration.address, r.registration.replication_address,
                r.registration.role, r.registration.epoch, len(r.registration.topics),
                max(0, int((now_s - r.last_heartbeat_s) * 1000))) for r in replicas)
            names = {name for r in replicas for name in r.registration.topics}
            for name in names:
                topics.setdefault(name, []).append(f"{key[0]}/{key[1]}")
        return ClusterView(groups, {name: tuple(g) for name, g in topics.items()})

    def leader(self, cluster: str, group: str) -> tuple[str | None, int]:
        """The group's leader address (None when none) and its epoch."""
        best: BrokerRegistration | None = None
        for address in sorted(self._groups.get((cluster, group), ())):
            registration = self._replicas[address].registration
            if registration.role == "leader" and (best is None or
                                                  registration.epoch > best.epoch):
                best = registration
        return (best.address, best.epoch) if best is not None else (None, 0)

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self) -> list[FieldValue]:
        return [replica.registration.to_fields() for _, replica in
                sorted(self._replicas.items())]

    def load_snapshot(self, registrations: Iterable[BrokerRegistration], now_s: float
                      ) -> list[RegistryEvent]:
        """Replace the registry with ``registrations`` (see ``parse_snapshot``); the events
        are the differences."""
        registrations = list(registrations)
        events: list[RegistryEvent] = []
        incoming = {registration.address for registration in registrations}
        for address in [a for a in self._replicas if a not in incoming]:
            events.extend(self._unregister(address, "unregistered"))
        for registration in registrations:
            events.extend(self._register(registration, now_s))
            self._replicas[registration.address].last_heartbeat_s = now_s
        return events

    # -- internals -------------------------------------------------------------------------
    def _route_group(self, key: tuple[str, str], topic: str) -> RouteGroup | None:
        replicas = [self._replicas[a].registration for a in sorted(self._groups.get(key, ()))]
        holders = [r for r in replicas if topic in r.topics]
        if not holders:
            return None
        leader, _ = self.leader(*key)
        source = next((r for r in holders if r.address == leader), holders[0])
        return RouteGroup(key[0], key[1], leader,
                          tuple(RouteReplica(r.address, r.role, r.epoch) for r in replicas),
                          source.topics[topic])

    def _group_states(self, keys: Iterable[tuple[str, str]]
                      ) -> dict[tuple[str, str], _GroupState]:
        states = {}
        for key in keys:
            topics: dict[str, TopicQueues] = {}
            leader = self.leader(*key)
            replicas = []
            for address in sorted(self._groups.get(key, ())):
                registration = self._replicas[address].registration
                replicas.append(RouteReplica(address, registration.role, registration.epoch))
                for name, queues in registration.topics.items():
                    if name not in topics or address == leader[0]:
                        topics[name] = queues
            states[key] = (leader, topics, tuple(replicas))
        return states

    @staticmethod
    def _changes(before: Mapping[tuple[str, str], _GroupState],
                 after: Mapping[tuple[str, str], _GroupState]) -> list[RegistryEvent]:
        events: list[RegistryEvent] = []
        changed_topics: set[str] = set()
        for key in dict.fromkeys([*before, *after]):
            old_leader, old_topics, old_replicas = before.get(key, ((None, 0), {}, ()))
            new_leader, new_topics, new_replicas = after.get(key, ((None, 0), {}, ()))
            if old_leader != new_leader:
                events.append(LeaderChanged(key[0], key[1], new_leader[0], new_leader[1]))
            if old_leader != new_leader or old_replicas != new_replicas:
                # Routes name the leader and every replica (role, epoch) of the group.
                changed_topics.update(new_topics)
                changed_topics.update(old_topics)
            for name in old_topics.keys() | new_topics.keys():
                if old_topics.get(name) != new_topics.get(name):
                    changed_topics.add(name)
        events.extend(TopicChanged(name) for name in sorted(changed_topics))
        return events
