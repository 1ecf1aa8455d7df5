"""Membership alone: who is live, who writes, the chain; time passed in, no I/O."""

from __future__ import annotations

import pytest

from tidemq.nameserver.membership import Membership, PeerStatus

A, B, C = "h:1", "h:2", "h:3"
MEMBERS = (A, B, C)
TIMEOUT_S = 2.0


def member(address: str, mode: str = "primary", now_s: float = 0.0) -> Membership:
    return Membership(address, MEMBERS, mode, peer_timeout_s=TIMEOUT_S,  # type: ignore[arg-type]
                      now_s=now_s)


def ready(writer: str | None, term: int) -> PeerStatus:
    return PeerStatus(True, writer, term)


def test_peers_mode_needs_no_writer() -> None:
    node = member(B, "peers")
    assert not node.replicated
    assert node.ready
    assert node.is_writer
    assert node.tick(100.0) is False
    alone = Membership(A, (), "primary", peer_timeout_s=TIMEOUT_S, now_s=0.0)
    assert not alone.replicated
    assert alone.is_writer


def test_a_member_list_without_this_node_is_refused() -> None:
    with pytest.raises(ValueError, match="must list this name server"):
        Membership("h:9", MEMBERS, "primary", peer_timeout_s=TIMEOUT_S, now_s=0.0)


def test_cold_start_the_first_live_member_begins() -> None:
    a, b = member(A), member(B)
    for now in (0.5, 1.0, 1.5):
        a.heard(B, b.status(), now)
        b.heard(A, a.status(), now)
        assert not a.tick(now)
        assert not b.tick(now)
    a.heard(B, b.status(), 2.0)
    b.heard(A, a.status(), 2.0)
    assert b.tick(2.0) is False  # not first in order
    assert a.tick(2.0) is True
    assert a.is_writer
    assert a.ready
    assert (a.writer, a.term) == (A, 1)
    b.heard(A, a.status(), 2.5)
    assert (b.writer, b.term, b.ready) == (A, 1, False)  # follows, joins by snapshot


def test_cold_start_when_the_first_member_is_down() -> None:
    b = member(B)
    assert b.tick(TIMEOUT_S) is True  # nobody else live: B is first of the live ones
    assert (b.writer, b.term) == (B, 1)


def test_failover_goes_to_the_first_live_ready_member_with_a_higher_term() -> None:
    b, c = member(B), member(C)
    for node in (b, c):
        node.became_ready()
        node.heard(A, ready(A, 4), 1.0)
    assert b.tick(2.0) is False
    assert c.tick(2.0) is False
    b.heard(C, c.status(), 3.5)
    c.heard(B, b.status(), 3.5)
    assert c.tick(3.5) is False  # A silent 2.5 s: dead; but B comes first
    assert b.tick(3.5) is True
    assert (b.writer, b.term) == (B, 5)
    c.heard(B, b.status(), 3.6)
    assert (c.writer, c.term) == (B, 5)


def test_the_writer_is_sticky_a_restarted_member_does_not_take_it_back() -> None:
    b = member(B)
    b.became_ready()
    assert b.tick(0.0) is True  # A is down: B, ready, writes
    assert b.is_writer
    assert b.term == 1
    restarted_a = member(A, now_s=10.0)
    restarted_a.heard(B, b.status(), 10.1)
    assert (restarted_a.writer, restarted_a.term) == (B, 1)
    assert restarted_a.tick(10.2) is False
    assert not restarted_a.is_writer
    b.heard(A, restarted_a.status(), 10.2)
    assert b.tick(10.3) is False
    assert b.writer == B
    # Even ready again (after the writer's snapshot), A leaves B the role.
    restarted_a.became_ready()
    restarted_a.heard(B, b.status(), 11.0)
    assert restarted_a.tick(11.0) is False
    assert b.follow(A, 0) is False
    assert b.writer == B


def test_claims_order_by_term_then_configured_position() -> None:
    c = member(C)
    assert c.follow(B, 3) is True
    assert c.writer == B
    assert c.follow(A, 3) is True
    assert c.writer == A
    assert c.follow(B, 3) is False
    assert c.writer == A
    assert c.follow(B, 4) is True
    assert (c.writer, c.term) == (B, 4)
    assert c.follow("h:9", 99) is False  # not a member


def test_a_writer_restarted_within_the_timeout_is_replaced() -> None:
    """A (writer) restarts faster than peer_timeout: it answers pings at once, so B and C
    keep seeing it live. It holds nothing (not ready). Before the fix B and C kept it as
    writer forever and A, adopting the claim in its own name, never pushed a snapshot or
    took a write: the cluster had no writer at all."""
    b, c = member(B), member(C)
    for node in (b, c):
        node.became_ready()
        node.heard(A, ready(A, 1), 1.0)
    b.heard(C, c.status(), 1.0)
    c.heard(B, b.status(), 1.0)
    restarted = member(A, now_s=1.2)
    restarted.heard(B, b.status(), 1.3)  # B says: the writer is A (term 1)
    assert restarted.writer is None  # a claim in its own name it does not hold: refused
    for node in (b, c):
        node.heard(A, restarted.status(), 1.4)  # live, but not ready
    assert c.tick(1.5) is False
    assert b.tick(1.5) is True
    assert (b.writer, b.term) == (B, 2)
    restarted.heard(B, b.status(), 1.6)
    assert (restarted.writer, restarted.term, restarted.is_writer) == (B, 2, False)


def test_a_writer_adopted_second_hand_is_not_judged_by_an_older_answer() -> None:
    """Cold start: B last heard A say "not ready" (before A began), then adopts A's claim
    from A's snapshot push and becomes ready. Judged by that older answer, A looked
    restarted and B took over (term 2), then A took it back (term 3): the chain's order
    churned for a while after every node agreed on it."""
    b = member(B)
    b.heard(A, PeerStatus(False, None, 0), 0.95)  # A, before it began
    b.heard(C, PeerStatus(False, None, 0), 0.95)
    assert b.follow(A, 1)  # A's snapshot push names it writer of term 1
    b.became_ready()
    assert b.tick(1.0) is False  # no answer from A since: it keeps the role
    assert (b.writer, b.term) == (A, 1)
    assert b.chain(1.0) == [A, B]
    b.heard(A, ready(A, 1), 1.05)
    assert b.tick(1.1) is False
    b.heard(A, PeerStatus(False, None, 0), 1.2)  # an answer after the claim: restarted
    assert b.tick(1.25) is True
    assert (b.writer, b.term) == (B, 2)


def test_suspect_makes_a_member_dead_until_it_answers() -> None:
    b = member(B)
    b.heard(C, ready(None, 0), 1.0)
    assert b.is_live(C, 1.5)
    b.suspect(C)
    assert not b.is_live(C, 1.5)
    b.heard(C, ready(None, 0), 1.6)
    assert b.is_live(C, 1.6)
    assert not b.is_live(C, 1.6 + TIMEOUT_S + 0.1)


def test_chain_successor_and_tail() -> None:
    b = member(B, "chain")
    b.became_ready()
    b.heard(A, ready(A, 1), 1.0)
    b.heard(C, ready(A, 1), 1.0)
    assert b.chain(1.0) == [A, B, C]
    assert (b.successor(1.0), b.tail(1.0)) == (C, C)
    b.heard(C, PeerStatus(False, A, 1), 1.1)  # C restarted: not ready, not in the chain
    assert b.chain(1.1) == [A, B]
    assert b.successor(1.1) is None
    assert b.tail(1.1) == B
    assert b.unready_live_peers(1.1) == [C]
    assert b.replicas(1.1) == [A, C]
    # A dies: B takes over; C, ready again, comes after it.
    b.heard(C, ready(A, 1), 2.5)
    assert b.tick(3.5) is True
    assert b.chain(3.5) == [B, C]
    assert b.tail(3.5) == C
    later = member(A, "chain")
    assert later.chain(0.0) == []  # no writer known: no chain
