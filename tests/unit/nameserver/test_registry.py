"""The registry alone: commands in, events and routes out, time passed in."""

from __future__ import annotations

import pytest

from tidemq.errors import InvalidArgument
from tidemq.nameserver.events import BrokerEvicted, BrokerRegistered, LeaderChanged, TopicChanged
from tidemq.nameserver.registry import (
    Register,
    Registry,
    Unregister,
    command_from_fields,
    command_to_fields,
    parse_snapshot,
)
from tidemq.protocol.routing import BrokerRegistration, TopicQueues


def reg(address: str, *, group: str = "g1", role: str = "leader", epoch: int = 1,
        topics: dict[str, int] | None = None, cluster: str = "c") -> BrokerRegistration:
    queues = {name: TopicQueues(count, count) for name, count in (topics or {}).items()}
    return BrokerRegistration(cluster, group, address, "", role, epoch,  # type: ignore[arg-type]
                              queues)


def test_register_then_heartbeat_then_change() -> None:
    registry = Registry()
    events = registry.apply(Register(reg("h:1", topics={"t": 4})), now_s=0.0)
    assert events == [BrokerRegistered("c", "g1", "h:1"), LeaderChanged("c", "g1", "h:1", 1),
                      TopicChanged("t")]
    assert registry.apply(Register(reg("h:1", topics={"t": 4})), now_s=5.0) == []
    assert registry.silent_brokers(now_s=9.0, timeout_s=3.0) == ["h:1"]
    assert registry.silent_brokers(now_s=7.0, timeout_s=3.0) == []
    events = registry.apply(Register(reg("h:1", topics={"t": 4, "u": 2})), now_s=6.0)
    assert events == [TopicChanged("u")]
    route = registry.route("u")
    assert [(g.group, g.leader, g.queues.write_queue_count) for g in route.groups] == [
        ("g1", "h:1", 2)]
    assert registry.route("nobody").groups == ()


def test_route_takes_queues_from_the_leader_and_lists_every_replica() -> None:
    registry = Registry()
    registry.apply(Register(reg("f:1", role="follower", topics={"t": 2})), 0.0)
    registry.apply(Register(reg("l:1", epoch=3, topics={"t": 8})), 0.0)
    registry.apply(Register(reg("x:1", group="g2", role="follower", topics={"t": 1})), 0.0)
    route = registry.route("t")
    assert [g.group for g in route.groups] == ["g1", "g2"]
    g1, g2 = route.groups
    assert (g1.leader, g1.queues.read_queue_count) == ("l:1", 8)
    assert [(r.address, r.role) for r in g1.replicas] == [("f:1", "follower"),
                                                          ("l:1", "leader")]
    assert g2.leader is None
    assert g2.readable_address == "x:1"


def test_leader_is_the_highest_epoch_leader() -> None:
    registry = Registry()
    registry.apply(Register(reg("a:1", epoch=1)), 0.0)
    events = registry.apply(Register(reg("b:1", epoch=2)), 0.0)
    assert LeaderChanged("c", "g1", "b:1", 2) in events
    assert registry.leader("c", "g1") == ("b:1", 2)
    events = registry.apply(Unregister("b:1", "silent"), 1.0)
    assert events[0] == BrokerEvicted("c", "g1", "b:1", "silent")
    assert LeaderChanged("c", "g1", "a:1", 1) in events
    registry.apply(Unregister("a:1", "disconnected"), 1.0)
    assert registry.leader("c", "g1") == (None, 0)
    assert len(registry) == 0
    assert registry.cluster_view(1.0).groups == {}
    assert registry.apply(Unregister("a:1"), 1.0) == []


def test_a_follower_epoch_change_invalidates_routes() -> None:
    """Routes list each replica's epoch: a change there is a TopicChanged (it was silent,
    so a cached route answer kept the old epoch)."""
    registry = Registry()
    registry.apply(Register(reg("l:1", epoch=2, topics={"t": 4})), 0.0)
    registry.apply(Register(reg("f:1", role="follower", epoch=1, topics={"t": 4})), 0.0)
    events = registry.apply(Register(reg("f:1", role="follower", epoch=2, topics={"t": 4})), 1.0)
    assert events == [TopicChanged("t")]


def test_moving_to_another_group() -> None:
    registry = Registry()
    registry.apply(Register(reg("a:1", topics={"t": 4})), 0.0)
    events = registry.apply(Register(reg("a:1", group="g2", topics={"t": 4})), 1.0)
    assert LeaderChanged("c", "g1", None, 0) in events
    assert LeaderChanged("c", "g2", "a:1", 1) in events
    assert [g.group for g in registry.route("t").groups] == ["g2"]


def test_cluster_view_and_heartbeat_age() -> None:
    registry = Registry()
    registry.apply(Register(reg("a:1", topics={"t": 4, "u": 4})), 10.0)
    view = registry.cluster_view(12.5)
    (replica,) = view.groups[("c", "g1")]
    assert (replica.topic_count, replica.heartbeat_age_ms) == (2, 2500)
    assert view.topics == {"t": ("c/g1",), "u": ("c/g1",)}
    registry.touch_all(20.0)
    assert registry.cluster_view(20.0).groups[("c", "g1")][0].heartbeat_age_ms == 0


def test_snapshot_round_trip_reports_differences() -> None:
    source = Registry()
    source.apply(Register(reg("a:1", topics={"t": 4})), 0.0)
    source.apply(Register(reg("b:1", group="g2", topics={"u": 4})), 0.0)
    target = Registry()
    target.apply(Register(reg("z:1", group="g9", topics={"old": 1})), 0.0)
    events = target.load_snapshot(parse_snapshot(source.snapshot()), now_s=3.0)
    assert BrokerEvicted("c", "g9", "z:1", "unregistered") in events
    assert {e.address for e in events if isinstance(e, BrokerRegistered)} == {"a:1", "b:1"}
    assert target.snapshot() == source.snapshot()
    assert target.silent_brokers(now_s=4.0, timeout_s=2.0) == []


@pytest.mark.parametrize("snapshot", [[{"cluster": "c"}], [{"cluster": "c", "group": "g",
                                                            "address": "nohost"}]])
def test_a_malformed_snapshot_is_refused(snapshot: list[dict[str, object]]) -> None:
    with pytest.raises(InvalidArgument):
        parse_snapshot(snapshot)


def test_commands_round_trip_and_bad_ones_are_refused() -> None:
    for command in (Register(reg("a:1", topics={"t": 4})), Unregister("a:1", "silent")):
        assert command_from_fields(command_to_fields(command)) == command
    for bad in ({"op": "drop"}, {"op": "register", "registration": []},
                {"op": "unregister", "address": "a:1", "reason": "bored"}, {}):
        with pytest.raises(InvalidArgument):
            command_from_fields(bad)
