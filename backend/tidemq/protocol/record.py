"""The record format: the one home of the bytes a message is stored and carried as.

The store writes records into the commit log, the wire carries them unchanged in pull
responses, and the client decodes them. This module is pure: no I/O, no store, no trio.

Layout (little endian, 116-byte fixed header, then three variable parts)::

    offset size field
    0      4    total_size          whole record, header included
    4      4    magic               RECORD_MAGIC (END_OF_SEGMENT_MAGIC closes a segment)
    8      4    crc                 CRC32C of bytes [12, total_size)
    12     4    flags               transaction state (bits 0-1), FLAG_INDEXED (bit 8)
    ---- stamped by the store at append (STAMP, offsets 16..66) ----
    16     4    queue_id
    20     4    leader_epoch
    24     8    queue_offset
    32     8    commit_offset       global byte offset of this record in the commit log
    40     8    store_timestamp_ms
    48     16   store_host          IPv6 or IPv4-mapped address
    64     2    store_port
    ---- set by the producer ----
    66     2    born_port
    68     16   born_host
    84     4    reconsume_times
    88     8    born_timestamp_ms
    96     8    tag_hash            tag_hash(tag), 0 when untagged (the consume-queue filter)
    104    4    body_length
    108    4    properties_length
    112    2    topic_length
    114    2    reserved (0)
    116    .    topic (UTF-8) | properties (msgpack map str -> str) | body

An end-of-segment marker is ``total_size | END_OF_SEGMENT_MAGIC`` (8 bytes) filling the rest
of a segment; records never span segments.

A *draft* is a full record whose store-stamped fields are still zero and whose crc is not
yet computed: the producer side builds drafts, the store copies each into place, stamps it
and computes the crc over the stamped bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Final

import msgpack

from tidemq.common.buffers import Buffer
from tidemq.common.crc import crc32c
from tidemq.errors import MessageIllegal, ProtocolError

RECORD_MAGIC: Final = 0x54494445  # "TIDE"
END_OF_SEGMENT_MAGIC: Final = 0x454F5345  # "ESOE"
HEADER: Final = struct.Struct("<IIII" "IIQQQ16sH" "H16sIQQIIHH")
HEADER_SIZE: Final = HEADER.size
STAMP: Final = struct.Struct("<IIQQQ16sH")
STAMP_OFFSET: Final = 16
CRC: Final = struct.Struct("<I")
CRC_OFFSET: Final = 8
CRC_START: Final = 12
SIZE_MAGIC: Final = struct.Struct("<II")
FLAGS: Final = struct.Struct("<I")
FLAGS_OFFSET: Final = 12
TAG_HASH: Final = struct.Struct("<Q")
TAG_HASH_OFFSET: Final = 96
STORE_TIMESTAMP: Final = struct.Struct("<Q")
STORE_TIMESTAMP_OFFSET: Final = 40
QUEUE_ID: Final = struct.Struct("<I")
QUEUE_ID_OFFSET: Final = 16
END_OF_SEGMENT_SIZE: Final = SIZE_MAGIC.size

TRANSACTION_MASK: Final = 0b11
TRANSACTION_NONE: Final = 0
TRANSACTION_PREPARED: Final = 1
TRANSACTION_COMMIT: Final = 2
TRANSACTION_ROLLBACK: Final = 3
FLAG_INDEXED: Final = 1 << 8  # properties carry KEYS or UNIQ_KEY: the index must read them

PROPERTY_KEYS: Final = "KEYS"  # user keys, space separated
PROPERTY_TAGS: Final = "TAGS"
PROPERTY_UNIQUE_ID: Final = "UNIQ_KEY"  # client-generated unique id
KEY_SEPARATOR: Final = " "

TOPIC_LENGTH_MAX: Final = 127
NO_HOST: Final = bytes(16)

assert HEADER_SIZE == 116
assert STAMP.size == 50


def tag_hash(tag: str | None) -> int:
    """The 64-bit slot value a tag is filtered by in consume queues (0 = no tag).

    A hash, not the tag: two tags may share one, so clients confirm the tag itself.
    """
    if not tag:
        return 0
    return crc32c(tag.encode()) | (len(tag) << 32) or 1


def pack_host(host: str) -> bytes:
    """16-byte form of an address: IPv6 as is, IPv4 mapped (::ffff:a.b.c.d)."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(f"::ffff:{address}").packed
    return address.packed


def unpack_host(packed: bytes) -> str:
    address = ipaddress.IPv6Address(packed)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


_IPV4_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"


def compact_host(packed: bytes) -> bytes:
    """4 bytes for an IPv4-mapped address, else the 16 bytes (the message-id form).

    A byte-prefix test, not ``ipaddress``: it runs for every message a consumer receives.
    """
    if len(packed) == 16 and packed[:12] == _IPV4_MAPPED_PREFIX:
        return packed[12:]
    return packed


def encode_properties(properties: Mapping[str, str]) -> bytes:
    if not properties:
        return b""
    return bytes(msgpack.packb(dict(properties), use_bin_type=True))


def decode_properties(data: Buffer) -> dict[str, str]:
    """Decode a properties block. Raises ProtocolError if it is not a str -> str map."""
    if not len(data):
        return {}
    try:
        value = _unpackb(data)  # msgpack >= 1.0: raw=False, strict_map_key=True
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"properties are not msgpack: {error}") from None
    # msgpack makes exact ``str`` and ``dict`` objects: identity tests, no isinstance calls
    if type(value) is not dict:
        raise ProtocolError("properties must be a map of strings to strings")
    for key, item in value.items():
        if type(key) is not str or type(item) is not str:
            raise ProtocolError("properties must be a map of strings to strings")
    return value


_unpackb: Final = msgpack.unpackb


class DraftTemplate:
    """Drafts that share topic, tag and properties and differ in body, unique id and birth
    time: ``encode_draft``'s bytes at a fraction of its cost (the topic, the tag hash and
    the shared properties are encoded once, not per message; a producer keeps one per
    topic and send options).

    ``encode(body, unique_id, born_timestamp_ms)`` equals
    ``encode_draft(topic, body, {**properties, UNIQ_KEY: unique_id}, tag=tag, ...)``.

    Raises (at construction): MessageIllegal for a bad topic length or born_host.
    """

    __slots__ = ("_born_host", "_born_port", "_count", "_entries", "_fixed_size", "_layout",
                 "_middle", "_tag_hash", "_tag_hash_bytes", "_tail", "_topic")

    def __init__(self, topic: str, properties: Mapping[str, str] | None = None, *,
                 tag: str | None = None, born_host: bytes = NO_HOST,
                 born_port: int = 0) -> None:
        topic_bytes = topic.encode()
        if not topic_bytes or len(topic_bytes) > TOPIC_LENGTH_MAX:
            raise MessageIllegal(f"topic length must be 1..{TOPIC_LENGTH_MAX} bytes")
        if len(born_host) != len(NO_HOST):
            raise MessageIllegal("born_host must be 16 bytes (use pack_host)")
        props = {k: v for k, v in (properties or {}).items() if k != PROPERTY_UNIQUE_ID}
        if tag:
            props[PROPERTY_TAGS] = tag
        self._topic = topic_bytes
        self._born_host = born_host
        self._born_port = born_port
        self._count = count = len(props) + 1
        self._entries = b"".join(_packb(k) + _packb(v) for k, v in props.items()) + \
            _packb(PROPERTY_UNIQUE_ID)
        self._tag_hash = tag_hash(props.get(PROPERTY_TAGS))
        # The fast layout, for unique ids of FAST_UNIQUE_ID_BYTES (the SDK's): everything
        # but total_size, born_timestamp_ms, body_length, the id and the body is constant.
        map_header = bytes((0x80 | count,)) if count < 16 else b"\xde" + count.to_bytes(2, "big")
        id_header = bytes(msgpack.packb("x" * FAST_UNIQUE_ID_BYTES, use_bin_type=True)
                          )[:-FAST_UNIQUE_ID_BYTES]
        prefix = map_header + self._entries + id_header
        properties_length = len(prefix) + FAST_UNIQUE_ID_BYTES
        self._fixed_size = HEADER_SIZE + len(topic_bytes) + properties_length
        fixed = HEADER.pack(0, RECORD_MAGIC, 0, FLAG_INDEXED, 0, 0, 0, 0, 0, NO_HOST, 0,
                            born_port, born_host, 0, 0, self._tag_hash, 0, properties_length,
                            len(topic_bytes), 0)
        self._middle = fixed[4:_BORN_TIMESTAMP_AT]
        self._tag_hash_bytes = fixed[_TAG_HASH_AT:_BODY_LENGTH_AT]
        self._tail = fixed[_BODY_LENGTH_AT + 4:] + topic_bytes + prefix
        self._layout = struct.Struct(f"<I{len(self._middle)}sQ{len(self._tag_hash_bytes)}sI"
                                     f"{len(self._tail)}s{FAST_UNIQUE_ID_BYTES}s")

    def encode(self, body: bytes, unique_id: str, born_timestamp_ms: int) -> bytes:
        unique_id_bytes = unique_id.encode()
        if len(unique_id_bytes) == FAST_UNIQUE_ID_BYTES:  # one pack, one concatenation
            try:
                return self._layout.pack(self._fixed_size + len(body), self._middle,
                                         born_timestamp_ms, self._tag_hash_bytes, len(body),
                                         self._tail, unique_id_bytes) + body
            except struct.error as error:
                raise MessageIllegal(f"a record field is out of range: {error}") from None
        count = self._count
        header = bytes((0x80 | count,)) if count < 16 else b"\xde" + count.to_bytes(2, "big")
        properties_bytes = b"".join((header, self._entries, _packb(unique_id)))
        topic = self._topic
        try:
            record_header = HEADER.pack(
                HEADER_SIZE + len(topic) + len(properties_bytes) + len(body), RECORD_MAGIC,
                0, FLAG_INDEXED, 0, 0, 0, 0, 0, NO_HOST, 0, self._born_port, self._born_host,
                0, born_timestamp_ms, self._tag_hash, len(body), len(properties_bytes),
                len(topic), 0)
        except struct.error as error:
            raise MessageIllegal(f"a record field is out of range: {error}") from None
        return b"".join((record_header, topic, properties_bytes, body))


    def encode_many(self, bodies: Sequence[bytes], unique_ids: Sequence[str],
                    born_timestamp_ms: int) -> bytes:
        """The drafts of ``bodies`` (with ``unique_ids``, pairwise) back to back: what
        joining ``encode`` of each gives, in one pass and one final copy."""
        count = len(bodies)
        if count != len(unique_ids):
            raise ValueError("one unique id per body")
        if not count:
            return b""
        encoded_ids = list(map(str.encode, unique_ids))
        if set(map(len, encoded_ids)) != {FAST_UNIQUE_ID_BYTES}:
            return b"".join([self.encode(body, unique_id, born_timestamp_ms)
                             for body, unique_id in zip(bodies, unique_ids, strict=True)])
        # Every header in one C-level pass (map over struct.pack), then headers and bodies
        # interleaved in the one final copy: no Python-level step per message.
        body_lengths = list(map(len, bodies))
        try:
            headers = list(map(self._layout.pack, map(self._fixed_size.__add__, body_lengths),
                               repeat(self._middle, count), repeat(born_timestamp_ms, count),
                               repeat(self._tag_hash_bytes, count), body_lengths,
                               repeat(self._tail, count), encoded_ids))
        except struct.error as error:
            raise MessageIllegal(f"a record field is out of range: {error}") from None
        return b"".join(chain.from_iterable(zip(headers, bodies, strict=True)))


FAST_UNIQUE_ID_BYTES: Final = 32
"""The length of the SDK's unique ids (32 hex digits), which templates encode fastest."""
_BORN_TIMESTAMP_AT: Final = 88
_TAG_HASH_AT: Final = 96
_BODY_LENGTH_AT: Final = 104


def _packb(value: str) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def encode_draft(
    topic: str,
    body: bytes,
    properties: Mapping[str, str] | None = None,
    *,
    tag: str | None = None,
    flags: int = 0,
    born_timestamp_ms: int = 0,
    born_host: bytes = NO_HOST,
    born_port: int = 0,
    reconsume_times: int = 0,
) -> bytes:
    """Encode a draft record (store fields zero, crc unset).

    ``tag`` is stored as the TAGS property and as the header's tag hash (a TAGS property
    given without ``tag`` is hashed too, so consume-queue filtering sees it).
    ``FLAG_INDEXED`` is set when the properties carry keys or a unique id.

    Raises:
        MessageIllegal: the topic is empty or too long, ``born_host`` is not 16 bytes (see
            ``pack_host``), or a number does not fit its field.
    """
    topic_bytes = topic.encode()
    if not topic_bytes or len(topic_bytes) > TOPIC_LENGTH_MAX:
        raise MessageIllegal(f"topic length must be 1..{TOPIC_LENGTH_MAX} bytes")
    if len(born_host) != len(NO_HOST):
        raise MessageIllegal("born_host must be 16 bytes (use pack_host)")
    props = dict(properties) if properties else {}
    if tag:
        props[PROPERTY_TAGS] = tag
    if PROPERTY_KEYS in props or PROPERTY_UNIQUE_ID in props:
        flags |= FLAG_INDEXED
    properties_bytes = encode_properties(props)
    total_size = HEADER_SIZE + len(topic_bytes) + len(properties_bytes) + len(body)
    try:
        header = HEADER.pack(
            total_size, RECORD_MAGIC, 0, flags,
            0, 0, 0, 0, 0, NO_HOST, 0,
            born_port, born_host, reconsume_times, born_timestamp_ms,
            tag_hash(props.get(PROPERTY_TAGS)),
            len(body), len(properties_bytes), len(topic_bytes), 0,
        )
    except struct.error as error:  # a negative or too large number
        raise MessageIllegal(f"a record field is out of range: {error}") from None
    return b"".join((header, topic_bytes, properties_bytes, body))


def seal(record: bytearray | memoryview, position: int = 0) -> None:
    """Compute and write the crc of the record at ``position`` (in place)."""
    total_size = SIZE_MAGIC.unpack_from(record, position)[0]
    view = memoryview(record)
    CRC.pack_into(record, position + CRC_OFFSET,
                  crc32c(view[position + CRC_START:position + total_size]))


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded record."""

    total_size: int
    flags: int
    queue_id: int
    leader_epoch: int
    queue_offset: int
    commit_offset: int
    store_timestamp_ms: int
    store_host: bytes
    store_port: int
    born_port: int
    born_host: bytes
    reconsume_times: int
    born_timestamp_ms: int
    tag_hash: int
    topic: str
    properties: dict[str, str]
    body: bytes

    @property
    def tag(self) -> str | None:
        return self.properties.get(PROPERTY_TAGS)

    @property
    def keys(self) -> list[str]:
        keys = self.properties.get(PROPERTY_KEYS, "")
        return [key for key in keys.split(KEY_SEPARATOR) if key]

    @property
    def unique_id(self) -> str | None:
        return self.properties.get(PROPERTY_UNIQUE_ID)


def check_record(data: Buffer, position: int = 0, limit: int | None = None) -> int:
    """Validate the record at ``position``: magic, size bounds and crc. Returns its size.

    Raises:
        ProtocolError: the bytes are not a whole valid record.
    """
    view = memoryview(data)
    end = len(view) if limit is None else limit
    header = _check_header(view, position, end)
    if _crc32c(view[position + CRC_START:position + header[0]]) != header[2]:
        raise ProtocolError(f"crc mismatch at {position}")
    return int(header[0])


RecordHeader = tuple[int, int, int, int, int, int, int, int, int, bytes, int, int, bytes, int,
                     int, int, int, int, int, int]
"""``HEADER.unpack`` of a record: total_size, magic, crc, flags, queue_id, leader_epoch,
queue_offset, commit_offset, store_timestamp_ms, store_host, store_port, born_port,
born_host, reconsume_times, born_timestamp_ms, tag_hash, body_length, properties_length,
topic_length, reserved."""

_unpack_header: Final = HEADER.unpack_from
_crc32c: Final = crc32c


def _check_header(view: memoryview, position: int, end: int) -> RecordHeader:
    """The header of the record at ``position`` once its magic, size bounds (within
    ``end``) and part lengths are checked (not the crc)."""
    if end - position < HEADER_SIZE:
        raise ProtocolError(f"truncated record at {position}: {end - position} bytes left")
    header: RecordHeader = _unpack_header(view, position)
    total_size = header[0]
    if header[1] != RECORD_MAGIC:
        raise ProtocolError(f"bad magic {header[1]:#x} at {position}")
    if total_size < HEADER_SIZE or position + total_size > end:
        raise ProtocolError(f"bad record size {total_size} at {position}")
    if HEADER_SIZE + header[16] + header[17] + header[18] != total_size:
        raise ProtocolError(f"record parts do not add up to its size at {position}")
    return header


PartsHeader = tuple[int, int, int, int, int, int, int, bytes, int, int, int, int, int]
"""The header fields ``iter_record_parts`` gives: total_size, magic, crc, queue_id,
queue_offset, commit_offset, store_timestamp_ms, store address (store_host then store_port,
18 bytes as stored), reconsume_times, born_timestamp_ms, body_length, properties_length,
topic_length."""

PARTS_HEADER: Final = struct.Struct("<III4xI4xQQQ18s18xIQ8xIIH2x")
"""``HEADER`` without the fields a consumer never reads (fewer objects to make)."""
assert PARTS_HEADER.size == HEADER_SIZE
_unpack_parts_header: Final = PARTS_HEADER.unpack_from


def iter_record_parts(data: Buffer, *, verify: bool = True
                      ) -> Iterator[tuple[PartsHeader, str, dict[str, str], bytes]]:
    """Like ``iter_records``, without building ``Record`` objects: yields ``(header, topic,
    properties, body)`` per record, ``header`` as ``PartsHeader`` describes it. The same
    checks, in one pass with few calls (the consumer's hot path)."""
    view = memoryview(data)
    end = len(view)
    position = 0
    while position < end:
        # _check_header and decode_properties, inlined: this loop runs once per message
        # a consumer receives
        if end - position < HEADER_SIZE:
            raise ProtocolError(f"truncated record at {position}: {end - position} bytes left")
        header: PartsHeader = _unpack_parts_header(view, position)
        total_size = header[0]
        if header[1] != RECORD_MAGIC:
            raise ProtocolError(f"bad magic {header[1]:#x} at {position}")
        if total_size < HEADER_SIZE or position + total_size > end:
            raise ProtocolError(f"bad record size {total_size} at {position}")
        body_length, properties_length, topic_length = header[10], header[11], header[12]
        if HEADER_SIZE + body_length + properties_length + topic_length != total_size:
            raise ProtocolError(f"record parts do not add up to its size at {position}")
        next_position = position + total_size
        if verify and _crc32c(view[position + CRC_START:next_position]) != header[2]:
            raise ProtocolError(f"crc mismatch at {position}")
        start = position + HEADER_SIZE
        try:
            topic = str(view[start:start + topic_length], "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"topic is not UTF-8 at {position}") from None
        start += topic_length
        if properties_length:
            try:
                properties = _unpackb(view[start:start + properties_length])
            except Exception as error:  # msgpack raises several unrelated types
                raise ProtocolError(f"properties are not msgpack: {error}") from None
            if type(properties) is not dict:
                raise ProtocolError("properties must be a map of strings to strings")
            for key, item in properties.items():
                if type(key) is not str or type(item) is not str:
                    raise ProtocolError("properties must be a map of strings to strings")
        else:
            properties = {}
        yield header, topic, properties, view[start + properties_length:next_position].tobytes()
        position = next_position


def _decode_parts(view: memoryview, position: int, verify: bool
                  ) -> tuple[RecordHeader, str, dict[str, str], bytes]:
    header = _check_header(view, position, len(view))
    total_size = header[0]
    if verify and _crc32c(view[position + CRC_START:position + total_size]) != header[2]:
        raise ProtocolError(f"crc mismatch at {position}")
    start = position + HEADER_SIZE
    topic_length, properties_length = header[18], header[17]
    try:
        topic = str(view[start:start + topic_length], "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"topic is not UTF-8 at {position}") from None
    start += topic_length
    properties = decode_properties(view[start:start + properties_length]) \
        if properties_length else {}
    return header, topic, properties, view[start + properties_length:
                                            position + total_size].tobytes()


def _record(header: RecordHeader, topic: str, properties: dict[str, str], body: bytes
            ) -> Record:
    (total_size, _magic, _crc, flags, queue_id, leader_epoch, queue_offset, commit_offset,
     store_timestamp_ms, store_host, store_port, born_port, born_host, reconsume_times,
     born_timestamp_ms, tag_hash_value, _body_length, _properties_length, _topic_length,
     _reserved) = header
    return Record(
        total_size=total_size, flags=flags, queue_id=queue_id, leader_epoch=leader_epoch,
        queue_offset=queue_offset, commit_offset=commit_offset,
        store_timestamp_ms=store_timestamp_ms, store_host=store_host, store_port=store_port,
        born_port=born_port, born_host=born_host, reconsume_times=reconsume_times,
        born_timestamp_ms=born_timestamp_ms, tag_hash=tag_hash_value, topic=topic,
        properties=properties, body=body,
    )


def decode_record(data: Buffer, position: int = 0, *, verify: bool = True) -> Record:
    """Decode the record at ``position``. ``verify=False`` skips only the crc: the size,
    magic and lengths are always checked, so a lying size can never stall ``iter_records``.

    Raises:
        ProtocolError: bad magic, size, crc (when ``verify``), topic or properties.
    """
    return _record(*_decode_parts(memoryview(data), position, verify))


def iter_records(data: Buffer, *, verify: bool = True) -> Iterator[Record]:
    """Decode back-to-back records (a pull response body)."""
    view = memoryview(data)
    position = 0
    while position < len(view):
        parts = _decode_parts(view, position, verify)
        yield _record(*parts)
        position += parts[0][0]


def draft_topic(draft: Buffer) -> str:
    """The topic a draft names. Raises ProtocolError on a malformed draft."""
    view = memoryview(draft)
    if len(view) < HEADER_SIZE:
        raise ProtocolError("draft shorter than a record header")
    topic_length = struct.unpack_from("<H", view, 112)[0]
    try:
        return bytes(view[HEADER_SIZE:HEADER_SIZE + topic_length]).decode()
    except UnicodeDecodeError:
        raise ProtocolError("topic is not UTF-8") from None
