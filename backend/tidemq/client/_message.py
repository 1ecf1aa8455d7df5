"""What the SDK hands back: ``SendResult`` for a send, ``Message`` for a received message.

A ``Message`` is a frozen value plus a private ``Delivery`` that knows how to settle it.
Settling is one of three outcomes, and only the first one counts (settling twice is a
no-op, so ``async with msg.process():`` around a block that already acked is harmless):

* ``ack()``     done: the consumer may commit past this offset once every lower one is done;
* ``nack()``    failed: redeliver later (through the group's retry topic, ``reconsume_times``
                one higher; orderly consumers redeliver locally, to keep the queue's order);
* release       (internal) the receiver gave up without deciding (it was cancelled): the
                message goes back to the local buffer unchanged, for the next receiver.

How a retried message looks: the broker stores a nacked message again in ``%RETRY%{group}``
with the properties ORIGIN_TOPIC and ORIGIN_MSG_ID. A consumer presents such a copy as the
original: ``topic`` is the origin topic and ``msg_id`` the origin id, so both stay stable
across redeliveries; ``queue_id`` and ``queue_offset`` say where this copy is stored. Admin
queries show records as stored (no such translation).
"""

from __future__ import annotations

import contextlib
import enum
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Protocol, final

import anyio

from tidemq.common.ids import encode_message_id
from tidemq.protocol.record import (
    PROPERTY_KEYS,
    PROPERTY_TAGS,
    PROPERTY_UNIQUE_ID,
    Record,
    compact_host,
)

PROPERTY_ORIGIN_TOPIC: Final = "ORIGIN_TOPIC"
PROPERTY_ORIGIN_MSG_ID: Final = "ORIGIN_MSG_ID"
FIELD_PROPERTIES: Final = frozenset({PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQUE_ID})
"""Properties shown as ``Message`` fields (keys, tag, unique_id), not in ``properties``."""
SYSTEM_PROPERTIES: Final = FIELD_PROPERTIES | {PROPERTY_ORIGIN_TOPIC, PROPERTY_ORIGIN_MSG_ID}
"""Properties the SDK and the broker set: users may not set them. A consumer hides all of
them from ``Message.properties``; an admin query shows ORIGIN_* as stored."""


@dataclass(slots=True, unsafe_hash=True)
class SendResult:
    """A stored message: where it is and how to find it again. (Not frozen: a frozen
    dataclass's ``__init__`` costs twice as much, and one is built per message sent; treat
    it as a value all the same.)"""

    msg_id: str
    """The broker's offset-based id (``Admin.get_message`` finds the message by it)."""
    unique_id: str
    """The id the producer gave the message (property UNIQ_KEY); also searchable as a key."""
    topic: str
    queue_id: int
    queue_offset: int
    broker: str
    """``host:port`` of the broker that stored it."""
    store_timestamp_ms: int


class Outcome(enum.Enum):
    ACK = "ack"
    NACK = "nack"
    RELEASE = "release"


class Settler(Protocol):
    """The consumer side of a delivery (implemented by the consumer's core)."""

    async def settle(self, message: Message, outcome: Outcome) -> None: ...

    def release_nowait(self, message: Message) -> None: ...


@final
class Delivery:
    """The mutable part of one delivery of a message: who settles it, and whether it was."""

    __slots__ = ("outcome", "queue_worker", "settled", "settler", "stored_msg_id",
                 "stored_topic")

    def __init__(self, settler: Settler, queue_worker: object, stored_topic: str,
                 stored_msg_id: str) -> None:
        self.settler = settler
        self.queue_worker = queue_worker
        """The consumer's worker of the queue this copy came from (opaque here)."""
        self.stored_topic = stored_topic
        self.stored_msg_id = stored_msg_id
        self.outcome: Outcome | None = None
        self.settled: anyio.Event | None = None
        """Set once settled, for an orderly worker waiting on its one in-flight message."""


@dataclass(slots=True, eq=False)
class Message:
    """A received message. ``ack()`` or ``nack()`` it (or use ``process()``).

    Treat it as read-only. It is not a frozen dataclass only because building one costs
    an ``object.__setattr__`` call per field, for every message a consumer receives.
    """

    topic: str
    body: bytes
    tag: str | None
    keys: tuple[str, ...]
    msg_id: str
    unique_id: str | None
    queue_id: int
    queue_offset: int
    reconsume_times: int
    born_timestamp_ms: int
    store_timestamp_ms: int
    properties: Mapping[str, str]
    """User properties (the SDK's own, such as KEYS and TAGS, are fields instead)."""
    broker: str
    """``host:port`` of the broker the message was read from."""
    _delivery: Delivery | None = field(default=None, repr=False)

    @property
    def key(self) -> str | None:
        """The first key, or None."""
        return self.keys[0] if self.keys else None

    async def ack(self) -> None:
        """Mark the message consumed. A no-op if it was already settled."""
        delivery = self._delivery
        if delivery is None:
            self._require_delivery()  # raises
        else:
            await delivery.settler.settle(self, Outcome.ACK)

    async def nack(self) -> None:
        """Ask for redelivery later (``reconsume_times`` grows by one). A no-op if settled.

        Broker trouble does not raise here: if the retry topic cannot be reached, the
        consumer redelivers the message itself after a pause.
        """
        await self._settle(Outcome.NACK)

    @contextlib.asynccontextmanager
    async def process(self) -> AsyncIterator[Message]:
        """Ack when the block succeeds; nack and re-raise when it raises.

        Cancellation (or any BaseException that is not an Exception) releases the message
        back to the consumer's buffer unchanged, then propagates.
        """
        try:
            yield self
        except Exception:
            await self.nack()
            raise
        except BaseException:
            self.release_nowait()
            raise
        await self.ack()

    def release_nowait(self) -> None:
        """Give the message back undecided: it is delivered again as it is (internal use by
        ``process()`` and ``Consumer.run()`` when cancelled)."""
        delivery = self._require_delivery()
        if delivery.outcome is None:
            delivery.settler.release_nowait(self)

    async def _settle(self, outcome: Outcome) -> None:
        await self._require_delivery().settler.settle(self, outcome)

    def _require_delivery(self) -> Delivery:
        if self._delivery is None:
            raise RuntimeError("this message was not delivered by a consumer (an Admin query "
                               "result, or built by hand): there is nothing to settle")
        return self._delivery


def stored_message_id(record: Record) -> str:
    """The offset-based id of the record as stored (the broker's SendResult.msg_id)."""
    return stored_id(record.store_host, record.store_port, record.commit_offset)


_ID_PREFIXES: dict[bytes, str] = {}
_ID_PREFIXES_MAX: Final = 1024
_HOST_PORT: Final = struct.Struct("<16sH")


def stored_id(store_host: bytes, store_port: int, commit_offset: int) -> str:
    """``encode_message_id`` of a stored record's address (16 bytes, as in the header)."""
    return stored_id_at(_HOST_PORT.pack(store_host, store_port), commit_offset)


def stored_id_at(store_address: bytes, commit_offset: int) -> str:
    """``stored_id`` from the 18 bytes of store host and port as a record holds them, the
    address part of the id cached: it runs for every message a consumer receives."""
    prefix = _ID_PREFIXES.get(store_address)
    if prefix is None or not 0 <= commit_offset < 2**64:
        host, port = _HOST_PORT.unpack(store_address)
        full = encode_message_id(compact_host(host), port, commit_offset)
        if len(_ID_PREFIXES) >= _ID_PREFIXES_MAX:
            _ID_PREFIXES.clear()
        _ID_PREFIXES[store_address] = full[:-16]
        return full
    return f"{prefix}{commit_offset:016X}"


def redelivery(message: Message, queue_worker: object, reconsume_times: int) -> Message:
    """A copy of a delivered message to deliver again, with a fresh (unsettled) delivery."""
    old = message._delivery
    assert old is not None
    delivery = Delivery(old.settler, queue_worker, old.stored_topic, old.stored_msg_id)
    return replace(message, reconsume_times=reconsume_times, _delivery=delivery)


def message_from_record(record: Record, broker: str, *, present_origin: bool,
                        delivery: Delivery | None = None) -> Message:
    """Build a ``Message``; ``present_origin`` shows a retry copy as its original."""
    properties = record.properties
    topic = record.topic
    msg_id = stored_message_id(record)
    hidden = FIELD_PROPERTIES
    if present_origin:
        topic = properties.get(PROPERTY_ORIGIN_TOPIC, topic)
        msg_id = properties.get(PROPERTY_ORIGIN_MSG_ID, msg_id)
        hidden = SYSTEM_PROPERTIES
    return Message(
        topic=topic, body=record.body, tag=record.tag, keys=tuple(record.keys),
        msg_id=msg_id, unique_id=record.unique_id, queue_id=record.queue_id,
        queue_offset=record.queue_offset, reconsume_times=record.reconsume_times,
        born_timestamp_ms=record.born_timestamp_ms,
        store_timestamp_ms=record.store_timestamp_ms,
        properties={k: v for k, v in properties.items() if k not in hidden},
        broker=broker, _delivery=delivery,
    )
