"""Build record drafts for a send: check the message, add the SDK's properties, encode.

Every draft gets the properties the SDK owns: UNIQ_KEY (32 hex digits unique to the client, the
message's stable id; the broker indexes it, so it is also searchable like a key), KEYS
(space separated) and TAGS (through ``encode_draft``'s ``tag``). User properties may not
use those names. A body over ``max_message_size_bytes`` is refused here, before anything
is sent; the broker enforces its own limit too.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from tidemq.client._message import SYSTEM_PROPERTIES
from tidemq.errors import InvalidArgument, MessageIllegal
from tidemq.protocol.record import KEY_SEPARATOR, PROPERTY_KEYS, DraftTemplate

_TAG: Final = re.compile(r"^[^|\s]+$")


class UniqueIds:
    """A random per-process prefix (80 bits, drawn again in a forked child) and a counter:
    32 hex digits like a uuid4 in hex, at a fraction of the cost of ``uuid.uuid4()``.

    Made 256 at a time: formatting a number as hex costs more than the rest of a send's
    id, so a block shares one formatted prefix (id prefix and the counter's upper 10 hex
    digits) and each id of it is that prefix plus one of 256 precomputed low digit pairs,
    one C-level concatenation each. The ids are those of a plain counter:
    ``f"{prefix}{n:012x}"`` for n = 0, 1, 2, ... (wrapping after 2**48)."""

    __slots__ = ("blocks", "current", "prefix")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = os.urandom(10).hex()
        self.blocks = itertools.count()
        self.current: Iterator[str] = iter(())
        """The rest of the block being handed out."""

    def refill(self) -> Iterator[str]:
        """Start the next block (the current one is used up) and return it."""
        base = f"{self.prefix}{next(self.blocks) & _ID_BLOCK_MASK:010x}"
        self.current = block = map(base.__add__, _LOW_DIGITS)
        return block

    def next(self) -> str:
        return next(self.current, None) or next(self.refill())

    def take(self, count: int) -> list[str]:
        """The next ``count`` ids, in order."""
        ids = list(itertools.islice(self.current, count))
        while len(ids) < count:
            ids += itertools.islice(self.refill(), count - len(ids))
        return ids


_LOW_DIGITS: Final = tuple(f"{low:02x}" for low in range(256))
_ID_BLOCK_MASK: Final = (1 << 40) - 1
"""The counter's upper 10 hex digits: ids wrap after 2**48 per process."""
UNIQUE_IDS: Final = UniqueIds()
os.register_at_fork(after_in_child=UNIQUE_IDS.reset)


def next_unique_id() -> str:
    """A client-unique message id (see ``_UniqueIds``)."""
    return UNIQUE_IDS.next()


@dataclass(frozen=True, slots=True)
class DraftSpec:
    """What every message of one send shares."""

    tag: str | None
    keys: tuple[str, ...]
    properties: Mapping[str, str]


def check_spec(spec: DraftSpec) -> dict[str, str]:
    """Validate tag, keys and properties; return the base properties. Raises
    InvalidArgument."""
    if spec.tag is not None and not _TAG.match(spec.tag):
        raise InvalidArgument(f"tag {spec.tag!r} must be non-empty, without spaces or '|'")
    for key in spec.keys:
        if not isinstance(key, str) or not key or KEY_SEPARATOR in key:
            raise InvalidArgument(f"key {key!r} must be a non-empty string without spaces")
    properties: dict[str, str] = {}
    for name, value in spec.properties.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidArgument("properties must map strings to strings")
        if name in SYSTEM_PROPERTIES:
            raise InvalidArgument(f"property name {name!r} is reserved")
        properties[name] = value
    if spec.keys:
        properties[PROPERTY_KEYS] = KEY_SEPARATOR.join(spec.keys)
    return properties


def draft_template(topic: str, spec: DraftSpec) -> DraftTemplate:
    """The template every message of ``spec`` to ``topic`` is encoded with. Raises
    InvalidArgument (bad tag, key or property) or MessageIllegal (bad topic length)."""
    return DraftTemplate(topic, check_spec(spec), tag=spec.tag)


TEMPLATES_CACHED_MAX: Final = 1024


class DraftTemplates:
    """A producer's templates by (topic, tag, keys), for sends without user properties
    (the common case; a send with properties builds its own)."""

    def __init__(self) -> None:
        self._templates: dict[tuple[str, str | None, tuple[str, ...]], DraftTemplate] = {}

    def get(self, topic: str, spec: DraftSpec) -> DraftTemplate:
        if spec.properties:
            return draft_template(topic, spec)
        key = (topic, spec.tag, spec.keys)
        template = self._templates.get(key)
        if template is None:
            template = draft_template(topic, spec)  # validates: only good specs are kept
            if len(self._templates) >= TEMPLATES_CACHED_MAX:
                self._templates.clear()
            self._templates[key] = template
        return template


def build_drafts(
    topic: str,
    bodies: Sequence[bytes],
    spec: DraftSpec,
    *,
    born_timestamp_ms: int,
    max_message_size_bytes: int,
    template: DraftTemplate | None = None,
) -> tuple[bytes, list[str]]:
    """The send body (drafts back to back) and each message's unique id. ``template``
    (``DraftTemplates.get``) saves validating and encoding what the messages share.

    Raises:
        InvalidArgument: a bad tag, key or property; a body that is not bytes.
        MessageIllegal: a body over ``max_message_size_bytes``; a bad topic length.
    """
    if template is None:
        template = draft_template(topic, spec)
    if len(bodies) == 1 and type(bodies[0]) is bytes:  # a lone send(): the hot path
        draft, unique_id = build_draft(bodies[0], template, born_timestamp_ms,
                                       max_message_size_bytes)
        return draft, [unique_id]
    if set(map(type, bodies)) == {bytes} and max(map(len, bodies)) <= max_message_size_bytes:
        unique_ids = UNIQUE_IDS.take(len(bodies))  # a batch of plain bytes: one pass
        return template.encode_many(bodies, unique_ids, born_timestamp_ms), unique_ids
    drafts: list[bytes] = []
    unique_ids = []
    for body in bodies:
        if not isinstance(body, bytes | bytearray | memoryview):
            raise InvalidArgument(f"a message body must be bytes, not {type(body).__name__}")
        if len(body) > max_message_size_bytes:
            raise body_too_large(len(body), max_message_size_bytes)
        unique_id = UNIQUE_IDS.next()
        drafts.append(template.encode(body if type(body) is bytes else bytes(body),
                                      unique_id, born_timestamp_ms))
        unique_ids.append(unique_id)
    return drafts[0] if len(drafts) == 1 else b"".join(drafts), unique_ids


def build_draft(body: bytes, template: DraftTemplate, born_timestamp_ms: int,
                max_message_size_bytes: int) -> tuple[bytes, str]:
    """One message's draft and unique id (``build_drafts`` for one ``bytes`` body).

    Raises:
        MessageIllegal: the body is over ``max_message_size_bytes``.
    """
    if len(body) > max_message_size_bytes:
        raise body_too_large(len(body), max_message_size_bytes)
    ids = UNIQUE_IDS
    unique_id = next(ids.current, None) or next(ids.refill())  # ids.next(), inlined
    return template.encode(body, unique_id, born_timestamp_ms), unique_id


def body_too_large(size: int, max_message_size_bytes: int) -> MessageIllegal:
    return MessageIllegal(f"a body of {size} bytes is over the producer's limit "
                          f"of {max_message_size_bytes}")
