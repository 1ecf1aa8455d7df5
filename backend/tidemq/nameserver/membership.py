"""Who is alive among the name servers, and who writes: pure logic, time passed in.

Every name server pings the other configured members (NAMESRV_STATUS) every
``ping_interval_ms``; a member not heard from for ``peer_timeout_ms`` is dead. A status
answer says whether the member is *ready* (holds the registry) and which writer it follows
under which *term*.

Modes:

* ``peers``: no writer. Every node is ready and takes every write itself.
* ``primary`` and ``chain``: one writer (the primary; the chain's head). The writer is
  *sticky*: it keeps the role while it lives, so a restarted node never takes the role back.
  When the writer dies (or restarts: it answers pings again, but not ready), the first
  live ready member in configured order takes over with
  ``term + 1``; claims are ordered by (term, earlier configured position wins), and every
  node follows the highest claim it has heard of. A writer is judged "not ready" only by
  an answer it gave after this node adopted its claim: an older one (a cold-start writer
  said "not ready" until it began) would make a needless takeover.
* A node starts not ready (empty registry) and becomes ready when the writer pushes it a
  snapshot. On a cold start, when no live member is ready after ``peer_timeout_ms``, the
  first live member in configured order becomes ready (empty) and writer.

The chain (``chain`` mode) is the writer followed by the other live ready members in
configured order; the tail is its last node and serves reads.

This view is what each node believes; views agree once pings have gone round. A network
partition can give two writers for a while: the registry is soft state that brokers
re-send every heartbeat, so it heals within one heartbeat interval (docs/nameserver.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from tidemq.config import NameServerMode


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What a member said of itself in its last NAMESRV_STATUS answer."""

    ready: bool
    writer: str | None
    term: int


@final
class Membership:
    def __init__(self, address: str, members: tuple[str, ...], mode: NameServerMode,
                 *, peer_timeout_s: float, now_s: float) -> None:
        self.address = address
        self.members = members if members else (address,)
        if address not in self.members:
            raise ValueError(f"namesrv.members must list this name server ({address})")
        self.mode = mode
        self.peers = tuple(m for m in self.members if m != address)
        self._timeout_s = peer_timeout_s
        self._started_s = now_s
        self._last_seen: dict[str, float] = {}
        self._status: dict[str, PeerStatus] = {}
        self.replicated = mode != "peers" and bool(self.peers)
        self.ready = not self.replicated
        self.term = 0
        self.writer: str | None = None if self.replicated else address

    # -- what pings tell -------------------------------------------------------------------
    def heard(self, peer: str, status: PeerStatus, now_s: float) -> None:
        self._last_seen[peer] = now_s
        if status.writer is not None:
            self.follow(status.writer, status.term)
        self._status[peer] = status  # after follow(), which forgets a new writer's status

    def follow(self, writer: str, term: int) -> bool:
        """Adopt ``writer`` if its claim beats the one followed now. Returns whether the
        claim is at least as good as ours (the caller may accept its writes).

        A claim in this node's own name that it does not hold (it made it in a previous
        life, before a restart) is refused: adopting it would name a writer that is not
        ready, and nobody would ever take over."""
        if writer not in self.members:
            return False
        if writer == self.address and not (self.writer == writer and self.term == term
                                           and self.ready):
            return False
        if self.writer is None or self._claim(writer, term) > self._claim(self.writer,
                                                                           self.term):
            self.writer, self.term = writer, term
            # What we last heard from the new writer itself may predate its claim (a
            # cold-start writer said "not ready" until it began): judged by that, it would
            # look restarted and be replaced at once. Its next answer tells.
            self._status.pop(writer, None)
            return True
        return self._claim(writer, term) >= self._claim(self.writer, self.term)

    def _claim(self, writer: str, term: int) -> tuple[int, int]:
        return term, -self.members.index(writer)

    def suspect(self, peer: str) -> None:
        """A call to ``peer`` failed: dead until it answers a ping again."""
        self._last_seen.pop(peer, None)

    def is_live(self, member: str, now_s: float) -> bool:
        if member == self.address:
            return True
        seen = self._last_seen.get(member)
        return seen is not None and now_s - seen <= self._timeout_s

    def is_ready(self, member: str) -> bool:
        if member == self.address:
            return self.ready
        status = self._status.get(member)
        return status is not None and status.ready

    def _known_unready(self, member: str) -> bool:
        """``member`` said it is not ready since we last adopted a claim of it (or is this
        node, not ready). No answer yet is not "unready"."""
        if member == self.address:
            return not self.ready
        status = self._status.get(member)
        return status is not None and not status.ready

    def status(self) -> PeerStatus:
        return PeerStatus(self.ready, self.writer, self.term)

    def became_ready(self) -> None:
        self.ready = True

    # -- decisions -------------------------------------------------------------------------
    def tick(self, now_s: float) -> bool:
        """Re-decide the writer. Returns True when this node just became the writer (the
        caller starts a new replication stream and re-times every broker's heartbeat)."""
        if not self.replicated:
            return False
        if self.writer is not None and self.is_live(self.writer, now_s) \
                and not self._known_unready(self.writer):
            return False  # sticky: a live writer keeps the role
        # The writer is dead, or alive but not ready: it restarted (empty) and answers
        # pings, yet holds nothing; waiting for it would leave the cluster without one.
        live = [m for m in self.members if self.is_live(m, now_s)]
        ready = [m for m in live if self.is_ready(m)]
        if not ready and not self.ready and now_s - self._started_s >= self._timeout_s \
                and live and live[0] == self.address:
            self.ready = True  # cold start: nobody holds a registry, the first one begins
            ready = [self.address]
        if self.ready and ready and ready[0] == self.address:
            self.term += 1
            self.writer = self.address
            return True
        return False

    @property
    def is_writer(self) -> bool:
        return self.writer == self.address and self.ready

    def chain(self, now_s: float) -> list[str]:
        """The writer, then every other live ready member in configured order."""
        if self.writer is None:
            return []
        rest = [m for m in self.members if m != self.writer and self.is_live(m, now_s)
                and self.is_ready(m)]
        return [self.writer, *rest]

    def successor(self, now_s: float) -> str | None:
        chain = self.chain(now_s)
        if self.address not in chain:
            return None
        index = chain.index(self.address)
        return chain[index + 1] if index + 1 < len(chain) else None

    def tail(self, now_s: float) -> str | None:
        chain = self.chain(now_s)
        return chain[-1] if chain else None

    def replicas(self, now_s: float) -> list[str]:
        """Primary mode: the live peers the writer copies to (ready or not: one that is not
        ready answers the first write with a snapshot request)."""
        return [m for m in self.peers if self.is_live(m, now_s)]

    def unready_live_peers(self, now_s: float) -> list[str]:
        return [m for m in self.peers if self.is_live(m, now_s) and not self.is_ready(m)]
