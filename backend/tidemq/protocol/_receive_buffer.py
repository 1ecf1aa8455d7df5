"""A receive buffer that hands out frames without copying them when it can.

Received chunks are kept as the ``bytes`` objects they arrived as, in order::

    chunks:  [ chunk 0 .............. ][ chunk 1 ....... ][ chunk 2 ... ]
                  ^ head_offset
             |<------------------------ size ------------------------->|

``take(n)`` returns the next ``n`` bytes. When they lie inside the first chunk (the usual
case for small frames, many of which arrive in one read) it returns a read-only
``memoryview`` of that chunk, or the chunk itself when it is exactly those bytes: no copy.
Only bytes that straddle chunks are joined, once. The price of zero copy is that a view
keeps its whole chunk alive (at most one read's worth, 64 KiB in the shell).
"""

from __future__ import annotations

import collections
import struct
from typing import Final, final

_U32: Final = struct.Struct(">I")
_PREFIX: Final = struct.Struct(">II")
_EMPTY_VIEW: Final = memoryview(b"")


@final
class ReceiveBuffer:
    __slots__ = ("_chunks", "_head_offset", "_head_view", "_head_view_of", "_size")

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head_view = _EMPTY_VIEW
        self._head_view_of: bytes | None = None
        self._head_offset = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, chunk: bytes) -> None:
        if chunk:
            self._chunks.append(chunk)
            self._size += len(chunk)

    def peek_u32(self, position: int) -> int:
        """The big-endian u32 at ``position`` past the read point. Needs ``position + 4``
        buffered bytes (the caller checks)."""
        assert position + 4 <= self._size
        head = self._chunks[0]
        start = self._head_offset + position
        if start + 4 <= len(head):
            value: int = _U32.unpack_from(head, start)[0]
            return value
        # Rare: the four bytes straddle chunks. Join just enough of them.
        value = _U32.unpack(bytes(self._peek(position + 4))[position:])[0]
        return value

    def peek_prefix(self) -> tuple[int, int]:
        """The two big-endian u32s at the read point (a frame's prefix). Needs 8 bytes."""
        head = self._chunks[0]
        if self._head_offset + 8 <= len(head):
            length, header_length = _PREFIX.unpack_from(head, self._head_offset)
        else:
            length, header_length = _PREFIX.unpack(self._peek(8))
        return length, header_length

    def skip(self, count: int) -> None:
        """Drop the next ``count`` bytes."""
        assert 0 <= count <= self._size
        head_left = len(self._chunks[0]) - self._head_offset if count else 0
        if count <= head_left:
            if count:
                self._advance_within_head(count, self._head_offset + head_left)
        else:
            self._consume_across_chunks(count)

    def take(self, count: int) -> bytes | memoryview:
        """Remove and return the next ``count`` bytes (see the module docstring)."""
        assert 0 <= count <= self._size
        if count == 0:
            return b""
        head = self._chunks[0]
        start = self._head_offset
        end = start + count
        if end <= len(head):
            self._advance_within_head(count, len(head))
            if start == 0 and end == len(head):
                return head
            # One view of the head chunk serves every slice taken from it.
            if self._head_view_of is not head:
                self._head_view = memoryview(head)
                self._head_view_of = head
            return self._head_view[start:end]
        joined = self._peek(count)
        self._consume_across_chunks(count)
        return joined

    def _advance_within_head(self, count: int, head_length: int) -> None:
        self._head_offset += count
        self._size -= count
        if self._head_offset == head_length:
            self._chunks.popleft()
            self._head_view_of = None  # slices taken keep the chunk alive, not the buffer
            self._head_view = _EMPTY_VIEW
            self._head_offset = 0

    def _peek(self, count: int) -> bytes:
        parts: list[bytes | memoryview] = []
        needed = count
        offset = self._head_offset
        for chunk in self._chunks:
            piece = memoryview(chunk)[offset : offset + needed]
            parts.append(piece)
            needed -= len(piece)
            offset = 0
            if needed == 0:
                break
        return b"".join(parts)

    def _consume_across_chunks(self, count: int) -> None:
        remaining = count
        while remaining:
            head_left = len(self._chunks[0]) - self._head_offset
            step = min(head_left, remaining)
            self._advance_within_head(step, len(self._chunks[0]))
            remaining -= step
