"""How a registry write reaches every name server: the write path of all three modes.

Every change is a registry ``Command``. ``Replicator.submit`` applies it and, in the
replicated modes, carries it to the other members before the broker is answered::

    peers     apply here; done (brokers register with every name server themselves)
    primary   writer applies, numbers it (stream, seq) and queues it on a ReplicaLink
              per live replica; answers after  async: nothing more
                                               semi-sync: one replica applied it
                                               sync: every live replica applied it
    chain     head applies, numbers it and forwards it to its successor; each node
              applies and forwards in turn; the tail's answer travels back up the calls,
              so the head answers the broker once the tail holds the write

A *stream* is one writer's term (``"host:port#term"``); ``seq`` numbers its writes from 1.
A receiver applies seq == applied + 1, answers a duplicate (seq <= applied) without
applying it again, and asks for a snapshot on a gap or an unknown stream; the sender then
pushes the whole registry (``REPLICATE_SNAPSHOT``) and sends the write again (now a
duplicate). That one rule makes every re-send safe: when a chain node fails, its
predecessor re-sends its in-flight writes to the new successor, and nothing is lost or
applied twice. Writes are serialized by the write lock: registrations are few (one per
broker per heartbeat), and one order per stream keeps the rule simple.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import final

import trio

from tidemq.config import NameServerConfig
from tidemq.errors import InvalidArgument, NotLeader, ReplicaTimeout, TideError
from tidemq.nameserver.event_bus import EventBus
from tidemq.nameserver.membership import Membership
from tidemq.nameserver.registry import (
    Command,
    Registry,
    command_from_fields,
    command_to_fields,
    parse_snapshot,
)
from tidemq.net import ConnectionClosed, PeerConnections, RequestTimeout
from tidemq.protocol import fields as f
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Fields, FieldValue

logger = logging.getLogger("tidemq.nameserver.replication")


@dataclass(slots=True)
class _Write:
    """One numbered write on its way to one member. ``writer``/``term`` are the claim of
    the writer that numbered it (not whoever the sender follows now): a receiver judges the
    write by its origin. ``chain`` (chain mode) is the head's chain when it took the write;
    every node forwards along it, so nodes whose views differ still agree on the order."""

    writer: str
    term: int
    stream: str
    seq: int
    command: dict[str, FieldValue]
    chain: tuple[str, ...] = ()
    done: trio.Event = field(default_factory=trio.Event)
    applied: bool = False
    report: trio.MemorySendChannel[None] | None = None

    def copy(self, report: trio.MemorySendChannel[None] | None = None) -> _Write:
        return _Write(self.writer, self.term, self.stream, self.seq, self.command,
                      self.chain, report=report)

    def finish(self, applied: bool) -> None:
        self.applied = applied
        self.done.set()
        if self.report is not None:
            self.report.send_nowait(None)  # the channel has room for every copy


@final
class ReplicaLink:
    """Primary mode: the writer's ordered queue of writes to one replica."""

    def __init__(self, replicator: Replicator, peer: str) -> None:
        self.peer = peer
        self._replicator = replicator
        self._queue: collections.deque[_Write] = collections.deque()
        self._wakeup = trio.Event()

    def put(self, write: _Write) -> None:
        self._queue.append(write)
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            write = self._queue[0]
            try:
                await self._replicator.deliver(self.peer, write)
            except TideError as error:
                logger.info("replica unreachable",
                            extra={"peer": self.peer, "remark": error.remark})
                self._replicator.membership_suspect(self.peer)
                for failed in self._queue:  # it catches up by snapshot when it is back
                    failed.finish(applied=False)
                self._queue.clear()
                continue
            self._queue.popleft()
            write.finish(applied=True)


@final
class Replicator:
    """Applies registry commands here and carries them to the other name servers."""

    def __init__(self, config: NameServerConfig, registry: Registry, bus: EventBus,
                 membership: Membership, peers: PeerConnections,
                 nursery: trio.Nursery) -> None:
        self._config = config
        self.registry = registry
        self._bus = bus
        self.membership = membership
        self._peers = peers
        self._nursery = nursery
        self._lock = trio.Lock()
        self._links: dict[str, ReplicaLink] = {}
        self._pushing: set[str] = set()
        self.stream = ""
        """The stream this node's registry follows (its own while it is the writer)."""
        self.seq = 0
        self.on_applied: Callable[[], None] = lambda: None

    @property
    def _timeout_s(self) -> float:
        return self._config.replication_timeout_ms / 1000

    def membership_suspect(self, peer: str) -> None:
        self.membership.suspect(peer)

    # -- the writer's side -----------------------------------------------------------------
    def start_term(self) -> None:
        """This node just became the writer: a new stream, fresh heartbeat clocks (brokers
        heartbeat the new writer within an interval), and a snapshot to every live peer."""
        self.stream = f"{self.membership.address}#{self.membership.term}"
        self.seq = 0
        self.registry.touch_all(trio.current_time())
        for peer in self.membership.replicas(trio.current_time()):
            self.push_snapshot_soon(peer)

    async def submit(self, command: Command) -> None:
        """Apply ``command`` with this mode's promise.

        Raises:
            NotLeader: a replicated mode and this node is not the writer.
            ReplicaTimeout: applied here, but not copied as the ack mode asks in time.
        """
        membership = self.membership
        if not membership.replicated:
            self._apply(command)
            return
        if not membership.is_writer:
            raise NotLeader("this name server is not the writer", membership.writer)
        async with self._lock:
            if not membership.is_writer:  # lost the role while waiting
                raise NotLeader("this name server is not the writer", membership.writer)
            self.seq += 1
            chain = tuple(membership.chain(trio.current_time()))
            write = _Write(membership.address, membership.term, self.stream, self.seq,
                           command_to_fields(command), chain)
            self._apply(command)
            if membership.mode == "chain":
                with trio.move_on_after(self._timeout_s) as scope:
                    await self.forward(write)
                if scope.cancelled_caught:
                    raise ReplicaTimeout("the chain did not acknowledge the write in time")
            else:
                await self._replicate_to_replicas(write)

    async def _replicate_to_replicas(self, write: _Write) -> None:
        """Queue ``write`` for every live replica and wait as ``ack`` says.

        Raises:
            ReplicaTimeout: semi-sync and no replica applied it, or sync and a live
                replica neither applied it nor failed within replication_timeout_ms.
        """
        peers = self.membership.replicas(trio.current_time())
        reports, finished = trio.open_memory_channel[None](max(len(peers), 1))
        writes = []
        for peer in peers:
            copy = write.copy(reports)
            self._link(peer).put(copy)
            writes.append(copy)
        ack = self._config.ack
        if ack == "async":
            return
        if not writes:
            if ack == "semi-sync":
                raise ReplicaTimeout("semi-sync: no live replica to copy the write to")
            return  # sync: every live replica (none) has it
        with trio.move_on_after(self._timeout_s):
            for _ in writes:  # each copy reports once, applied or failed, in any order
                await finished.receive()
                if ack == "semi-sync" and any(w.applied for w in writes):
                    return
            # Every replica answered or failed. A failed one is suspected dead now, so for
            # "sync" the live replicas all have the write.
            if ack == "sync":
                return
        applied = sum(w.applied for w in writes)
        raise ReplicaTimeout(f"{ack}: {applied} of {len(writes)} replicas applied the "
                             f"write within {self._config.replication_timeout_ms} ms")

    def _link(self, peer: str) -> ReplicaLink:
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = ReplicaLink(self, peer)
            self._nursery.start_soon(link.run)
        return link

    async def forward(self, write: _Write) -> None:
        """Chain mode: hand ``write`` to the next node of the head's chain until it (and so
        the tail) has it. A successor that fails is suspected and the one after it gets
        the write; nodes this one knows are dead are skipped. Each node goes only forward
        along one shared list, so no two nodes can wait on each other."""
        chain = write.chain
        position = chain.index(self.membership.address) if self.membership.address in chain \
            else len(chain)
        for successor in chain[position + 1:]:
            if not self.membership.is_live(successor, trio.current_time()):
                continue
            try:
                await self.deliver(successor, write)
                return
            except (ConnectionClosed, RequestTimeout) as error:
                logger.info("successor lost", extra={"peer": successor, "remark": error.remark})
                self.membership.suspect(successor)
        # This node is the last live one of the chain: the tail.

    async def deliver(self, peer: str, write: _Write) -> None:
        """Send one write; on a snapshot request push the registry, then send it again."""
        for _ in range(3):
            response = await self._peers.call(peer, RequestCode.REPLICATE_WRITE, {
                "writer": write.writer, "term": write.term, "stream": write.stream,
                "seq": write.seq, "command": write.command, "chain": list(write.chain),
            }, timeout_ms=self._config.replication_timeout_ms)
            if not response.fields.get("need_snapshot"):
                return
            await self.push_snapshot(peer)
        raise ReplicaTimeout(f"{peer} kept asking for a snapshot")

    async def push_snapshot(self, peer: str) -> None:
        # Read on the loop with no await in between: the registry and (stream, seq) agree.
        # The claim sent is the stream's: its writer and term (a stream is "writer#term").
        writer, _, term = self.stream.rpartition("#")
        fields: dict[str, FieldValue] = {
            "writer": writer, "term": int(term) if term.isdigit() else 0,
            "stream": self.stream, "seq": self.seq, "registry": self.registry.snapshot()}
        await self._peers.call(peer, RequestCode.REPLICATE_SNAPSHOT, fields,
                               timeout_ms=self._config.replication_timeout_ms)

    def push_snapshot_soon(self, peer: str) -> None:
        if peer in self._pushing:
            return
        self._pushing.add(peer)

        async def push() -> None:
            try:
                await self.push_snapshot(peer)
            except TideError as error:
                logger.info("snapshot not delivered", extra={"peer": peer,
                                                            "remark": error.remark})
            finally:
                self._pushing.discard(peer)

        self._nursery.start_soon(push)

    # -- the receiver's side ---------------------------------------------------------------
    def _check_sender(self, writer: str, term: int) -> None:
        """Accept replication only from the writer this node follows (or a better claim,
        which it then follows). Called after the payload is known to be well formed, so a
        bogus request cannot move this node's view of the writer."""
        membership = self.membership
        if not membership.replicated:
            raise InvalidArgument(f"a {membership.mode} name server takes no replication")
        if writer == membership.address:
            raise NotLeader("a name server never replicates to itself", membership.writer)
        if not membership.follow(writer, term):
            raise NotLeader(f"{writer} (term {term}) is not the writer", membership.writer)

    async def receive_write(self, request_fields: Fields) -> dict[str, FieldValue]:
        writer = f.string(request_fields, "writer")
        term = f.integer(request_fields, "term", minimum=0)
        stream = f.string(request_fields, "stream")
        seq = f.integer(request_fields, "seq", minimum=1)
        raw = request_fields.get("command")
        if not isinstance(raw, Mapping):
            raise InvalidArgument("field 'command' must be a map")
        command = command_from_fields(raw)
        chain = tuple(_member_list(request_fields, "chain", self.membership.members))
        self._check_sender(writer, term)
        async with self._lock:
            if stream != self.stream or seq > self.seq + 1:
                return {"need_snapshot": True}
            write = _Write(writer, term, stream, seq, dict(raw), chain)
            if seq == self.seq + 1:
                self.seq = seq
                self._apply(command)
            if self.membership.mode == "chain":
                await self.forward(write)
        return {}

    async def receive_snapshot(self, request_fields: Fields) -> None:
        writer = f.string(request_fields, "writer")
        term = f.integer(request_fields, "term", minimum=0)
        stream = f.string(request_fields, "stream")
        seq = f.integer(request_fields, "seq", minimum=0)
        registrations = parse_snapshot(f.map_list(request_fields, "registry"))
        self._check_sender(writer, term)
        async with self._lock:
            if stream == self.stream and seq < self.seq:
                # Older than what this node holds (a snapshot overtaken by the writes after
                # it): loading it would drop acknowledged writes.
                return
            events = self.registry.load_snapshot(registrations, trio.current_time())
            self.stream, self.seq = stream, seq
            self.membership.became_ready()
        self._bus.publish(events)
        self.on_applied()
        logger.info("snapshot loaded", extra={"stream": stream, "seq": seq,
                                              "brokers": len(self.registry)})

    def _apply(self, command: Command) -> None:
        self._bus.publish(self.registry.apply(command, trio.current_time()))
        self.on_applied()


def _member_list(fields: Fields, name: str, members: tuple[str, ...]) -> list[str]:
    value = fields.get(name, [])
    if not isinstance(value, list | tuple) or not all(item in members for item in value):
        raise InvalidArgument(f"field {name!r} must be a list of this cluster's members")
    return list(value)
