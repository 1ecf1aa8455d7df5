"""Message ids.

An offset-based message id names where a message is stored: the store host's address and
the commit-log offset, as upper-case hex (like RocketMQ's ``offsetMsgId``)::

    IPv4:  ip (4 bytes) | port (u16) | commit-log offset (u64)    = 14 bytes, 28 hex digits
    IPv6:  ip (16 bytes) | port (u16) | commit-log offset (u64)   = 26 bytes, 52 hex digits

Decoding gives the broker to ask and the offset to read, so a lookup by id needs no index.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

_TAIL = struct.Struct(">HQ")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*")


@dataclass(frozen=True, slots=True)
class MessageId:
    host: str
    port: int
    commit_offset: int


def host_bytes(host: str) -> bytes:
    """The packed address of ``host`` (an IPv4 or IPv6 literal)."""
    return ipaddress.ip_address(host).packed


def encode_message_id(host_packed: bytes, port: int, commit_offset: int) -> str:
    """Encode an offset-based message id from a packed address (4 or 16 bytes).

    Raises:
        ValueError: the address is not 4 or 16 bytes, or the port or offset is out of range.
    """
    if len(host_packed) not in (4, 16):
        raise ValueError("a host address is 4 (IPv4) or 16 (IPv6) bytes")
    if not 0 <= port <= 0xFFFF or not 0 <= commit_offset < 2**64:
        raise ValueError(f"port {port} or commit offset {commit_offset} out of range")
    return (host_packed + _TAIL.pack(port, commit_offset)).hex().upper()


def message_id_prefix(host_packed: bytes, port: int) -> str:
    """What every message id of one broker starts with: its address and port, as hex (a
    send's answer carries it once, with the records' commit offsets, not one id each).

    Raises:
        ValueError: the address is not 4 or 16 bytes, or the port is out of range.
    """
    return encode_message_id(host_packed, port, 0)[:-_OFFSET_HEX_DIGITS]


def encode_message_ids(prefix: str, commit_offsets: Sequence[int]) -> list[str]:
    """The ids of ``commit_offsets`` on the broker that ``prefix`` (``message_id_prefix``)
    names: one string format per id, not a packing.

    Raises:
        ValueError: an offset is out of range.
        TypeError: an offset is not an integer.
    """
    if commit_offsets and (min(commit_offsets) < 0 or max(commit_offsets) >= 2**64):
        raise ValueError("a commit offset is out of range")
    count = len(commit_offsets)
    if count > 1 and _UPPER_HEX.fullmatch(prefix):
        # The bulk form of the f-string below (a send's answer names up to hundreds of
        # records): pack address-and-port bytes and offsets in one go, hex the lot once
        # with a space between ids, split. One string is made per id, not three.
        address_port = bytes.fromhex(prefix)
        parts: list[bytes | int] = [address_port] * (2 * count)
        parts[1::2] = commit_offsets
        try:
            packed = _ids_struct(len(address_port), count).pack(*parts)
        except struct.error:
            raise TypeError("a commit offset is not an integer") from None
        return packed.hex(" ", len(address_port) + _TAIL_OFFSET.size).upper().split()
    return [f"{prefix}{offset:016X}" for offset in commit_offsets]


_UPPER_HEX = re.compile(r"(?:[0-9A-F]{2})+")
_TAIL_OFFSET = struct.Struct(">Q")


@functools.lru_cache(maxsize=256)
def _ids_struct(prefix_bytes: int, count: int) -> struct.Struct:
    """``count`` times (prefix bytes, big-endian u64 offset)."""
    return struct.Struct(">" + f"{prefix_bytes}sQ" * count)


_OFFSET_HEX_DIGITS = 16


def decode_message_id(text: str) -> MessageId:
    """Decode an offset-based message id. Raises ValueError if ``text`` is not one."""
    if not _HEX.fullmatch(text):  # whole bytes only (bytes.fromhex would take spaces)
        raise ValueError(f"not a message id: {text!r}")
    raw = bytes.fromhex(text)
    if len(raw) == 4 + _TAIL.size:
        address_length = 4
    elif len(raw) == 16 + _TAIL.size:
        address_length = 16
    else:
        raise ValueError(f"not a message id: {text!r} (wrong length)")
    port, commit_offset = _TAIL.unpack(raw[address_length:])
    host = str(ipaddress.ip_address(raw[:address_length]))
    return MessageId(host=host, port=port, commit_offset=commit_offset)
