"""Client-side rebalance: average allocation over sorted members and queues."""

from __future__ import annotations

from tidemq.client import MessageQueue, allocate_average


def test_runs_are_contiguous_and_the_first_members_take_the_extra_queues() -> None:
    members = ["c", "a", "b"]
    queues = list(range(10))
    assert allocate_average(members, queues, "a") == [0, 1, 2, 3]
    assert allocate_average(members, queues, "b") == [4, 5, 6]
    assert allocate_average(members, queues, "c") == [7, 8, 9]


def test_more_members_than_queues_leaves_some_idle() -> None:
    assert allocate_average(["a", "b", "c"], [0, 1], "a") == [0]
    assert allocate_average(["a", "b", "c"], [0, 1], "b") == [1]
    assert allocate_average(["a", "b", "c"], [0, 1], "c") == []


def test_a_member_not_listed_takes_nothing() -> None:
    assert allocate_average(["a"], [0, 1], "z") == []
    assert allocate_average([], [0, 1], "a") == []


def test_every_queue_goes_to_exactly_one_member_whatever_the_input_order() -> None:
    queues = [MessageQueue(topic, "127.0.0.1:1", q) for topic in ("b", "a") for q in range(5)]
    members = [f"m{i}" for i in range(4)]
    for count in range(1, 5):
        taken = [q for m in members[:count] for q in allocate_average(
            list(reversed(members[:count])), list(reversed(queues)), m)]
        assert sorted(taken) == sorted(queues)
