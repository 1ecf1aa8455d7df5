"""Consumer-group membership from client heartbeats.

A consumer heartbeats every few seconds with its group, subscriptions (topic -> tag
expression) and mode (clustering or broadcast). A member silent for longer than the expiry,
or whose connection closes, leaves the group. Each change bumps the group's ``version``:
clients compare versions and re-run their queue allocation (client-side rebalance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import final


@dataclass(slots=True)
class Member:
    client_id: str
    subscriptions: dict[str, str]
    mode: str
    last_heartbeat_s: float
    connection_id: int


@dataclass(slots=True)
class GroupState:
    name: str
    members: dict[str, Member] = field(default_factory=dict)
    version: int = 0

    @property
    def mode(self) -> str:
        for member in self.members.values():
            return member.mode
        return "clustering"

    def subscriptions(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for member in self.members.values():
            merged.update(member.subscriptions)
        return merged


@final
class ConsumerGroups:
    def __init__(self, expiry_s: float) -> None:
        self.expiry_s = expiry_s
        self.groups: dict[str, GroupState] = {}

    def heartbeat(self, group: str, client_id: str, subscriptions: dict[str, str], mode: str,
                  now_s: float, connection_id: int) -> GroupState:
        state = self.groups.setdefault(group, GroupState(group))
        member = state.members.get(client_id)
        if member is None or member.subscriptions != subscriptions or member.mode != mode:
            state.version += 1
        state.members[client_id] = Member(client_id, dict(subscriptions), mode, now_s,
                                          connection_id)
        return state

    def leave(self, group: str, client_id: str) -> bool:
        state = self.groups.get(group)
        if state is None or state.members.pop(client_id, None) is None:
            return False
        state.version += 1
        self._forget_if_empty(state)
        return True

    def _forget_if_empty(self, state: GroupState) -> None:
        """A group without members is forgotten (its committed offsets stay with the
        offsets table), so heartbeats with made-up names cannot grow memory for ever."""
        if not state.members:
            self.groups.pop(state.name, None)

    def connection_closed(self, connection_id: int) -> list[tuple[str, str]]:
        """Members that heartbeated on this connection leave; returns (group, client_id)."""
        removed: list[tuple[str, str]] = []
        for state in self.groups.values():
            gone = [c for c, m in state.members.items() if m.connection_id == connection_id]
            for client_id in gone:
                del state.members[client_id]
                removed.append((state.name, client_id))
            if gone:
                state.version += 1
        for state in list(self.groups.values()):
            self._forget_if_empty(state)
        return removed

    def expire(self, now_s: float) -> list[tuple[str, str]]:
        """Remove members silent past the expiry; returns (group, client_id) removed."""
        removed: list[tuple[str, str]] = []
        for state in self.groups.values():
            stale = [c for c, m in state.members.items()
                     if now_s - m.last_heartbeat_s > self.expiry_s]
            for client_id in stale:
                del state.members[client_id]
                removed.append((state.name, client_id))
            if stale:
                state.version += 1
        for state in list(self.groups.values()):
            self._forget_if_empty(state)
        return removed

    def get(self, group: str) -> GroupState | None:
        return self.groups.get(group)
