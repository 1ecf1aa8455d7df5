"""Build record drafts for a send: check the message, add the SDK's properties, encode.

Every draft gets the properties the SDK owns: UNIQ_KEY (a fresh uuid4 in hex, the
message's stable id; the broker indexes it, so it is also searchable like a key), KEYS
(space separated) and TAGS (through ``encode_draft``'s ``tag``). User properties may not
use those names. A body over ``max_message_size_bytes`` is refused here, before anything
is sent; the broker enforces its own limit too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from tidemq.client._message import SYSTEM_PROPERTIES
from tidemq.errors import InvalidArgument, MessageIllegal
from tidemq.protocol.record import (
    KEY_SEPARATOR,
    PROPERTY_KEYS,
    PROPERTY_UNIQUE_ID,
    encode_draft,
)

_TAG: Final = re.compile(r"^[^|\s]+$")


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


def build_drafts(
    topic: str,
    bodies: Sequence[bytes],
    spec: DraftSpec,
    *,
    born_timestamp_ms: int,
    max_message_size_bytes: int,
) -> tuple[bytes, list[str]]:
    """The send body (drafts back to back) and each message's unique id.

    Raises:
        InvalidArgument: a bad tag, key or property; a body that is not bytes.
        MessageIllegal: a body over ``max_message_size_bytes``; a bad topic length.
    """
    base = check_spec(spec)
    drafts: list[bytes] = []
    unique_ids: list[str] = []
    for body in bodies:
        if not isinstance(body, bytes | bytearray | memoryview):
            raise InvalidArgument(f"a message body must be bytes, not {type(body).__name__}")
        if len(body) > max_message_size_bytes:
            raise MessageIllegal(f"a body of {len(body)} bytes is over the producer's limit "
                                 f"of {max_message_size_bytes}")
        unique_id = uuid.uuid4().hex
        properties = dict(base)
        properties[PROPERTY_UNIQUE_ID] = unique_id
        drafts.append(encode_draft(topic, bytes(body), properties, tag=spec.tag,
                                   born_timestamp_ms=born_timestamp_ms))
        unique_ids.append(unique_id)
    return b"".join(drafts), unique_ids
