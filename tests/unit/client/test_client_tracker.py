"""QueueTracker: the commit point is the lowest offset not yet done, whatever the ack order."""

from __future__ import annotations

import random

import pytest

from tidemq.client._tracker import QueueTracker


def test_commit_offset_waits_for_the_lowest_unacked_offset() -> None:
    tracker = QueueTracker(5)
    tracker.add([5, 6, 7, 9, 11], next_offset=12)  # 8 and 10 were filtered out by tag
    assert tracker.commit_offset == 5
    assert tracker.undone_count == 5
    for offset in (7, 6, 11):
        assert tracker.ack(offset)
    assert tracker.commit_offset == 5  # 5 is still in flight: committing past it loses it
    assert tracker.ack(5)
    assert tracker.commit_offset == 9  # 8 was skipped by the filter, 9 is in flight
    assert tracker.ack(9)
    assert tracker.commit_offset == 12  # everything done: the next pull position
    assert tracker.undone_count == 0
    assert tracker.span_count == 0


def test_ack_is_idempotent_and_ignores_unknown_offsets() -> None:
    tracker = QueueTracker(0)
    tracker.add([0, 1], next_offset=2)
    assert tracker.ack(1)
    assert not tracker.ack(1)
    assert not tracker.ack(42)
    assert tracker.commit_offset == 0


def test_a_late_answer_to_an_old_pull_is_ignored() -> None:
    tracker = QueueTracker(10)
    tracker.add([3, 4], next_offset=5)
    assert tracker.next_offset == 10
    assert tracker.undone_count == 0


def test_span_bounds_how_far_pulling_runs_ahead_of_a_stuck_message() -> None:
    tracker = QueueTracker(0)
    tracker.add(range(100), next_offset=100)
    for offset in range(1, 100):
        tracker.ack(offset)
    assert tracker.undone_count == 1
    assert tracker.span_count == 100


def test_reset_forgets_everything_in_flight() -> None:
    tracker = QueueTracker(0)
    tracker.add([0, 1, 2], next_offset=3)
    tracker.reset(1)
    assert (tracker.commit_offset, tracker.undone_count, tracker.next_offset) == (1, 0, 1)
    with pytest.raises(ValueError, match="negative"):
        QueueTracker(-1)


def test_random_ack_orders_never_commit_past_an_unacked_offset() -> None:
    rng = random.Random(7)
    for _ in range(200):
        tracker = QueueTracker(0)
        offsets = sorted(rng.sample(range(60), 30))
        tracker.add(offsets, next_offset=60)
        pending = list(offsets)
        rng.shuffle(pending)
        acked: set[int] = set()
        for offset in pending:
            tracker.ack(offset)
            acked.add(offset)
            unacked = [o for o in offsets if o not in acked]
            assert tracker.commit_offset == (min(unacked) if unacked else 60)
