"""Offsets of one queue in flight in a consumer: what may be committed, what to pull next.

A queue's messages are pulled in offset order but settled in any order (many handlers run
at once). The offset a consumer commits must be the lowest offset *not yet done*: acking
offset 7 while 5 is still being processed must not let a commit skip 5, or a crash would
lose it. So the tracker keeps the delivered offsets in pull order and the set of those not
yet done::

    next_offset = 12                       (where the next pull starts)
    order     [5, 6, 7, 9, 11]             (9: 8 was filtered out by tag; so was 10)
    undone    {5, 9}                       (6, 7 and 11 were acked)
    commit_offset = 5                      (lowest undone; next_offset when none is)

``ack`` removes an offset from ``undone`` and pops done offsets off the front of ``order``,
so each offset is pushed and popped once (amortised O(1)). Offsets a pull skipped (tag
mismatch) never enter: they lie below ``next_offset`` and are passed once everything
before them is done.

Back-pressure reads two numbers: ``undone_count`` (messages in flight) and ``span_count``
(offsets from the commit point to ``next_offset``). A stuck message keeps the commit point
down while later ones finish; the span bounds how far pulling may run ahead of it, which
bounds ``order`` too.

This module is pure (no I/O, no clock), so its rules are unit-tested directly.
"""

from __future__ import annotations

import collections
import operator
from collections.abc import Iterable
from typing import final


@final
class QueueTracker:
    """In-flight offsets of one queue. See the module docstring."""

    def __init__(self, next_offset: int) -> None:
        if next_offset < 0:
            raise ValueError("offsets are never negative")
        self.next_offset = next_offset
        self._order: collections.deque[int] = collections.deque()
        self._undone: set[int] = set()

    @property
    def commit_offset(self) -> int:
        """The lowest offset not yet done: everything below it may be committed."""
        return self._order[0] if self._order else self.next_offset

    @property
    def undone_count(self) -> int:
        return len(self._undone)

    @property
    def span_count(self) -> int:
        return self.next_offset - self.commit_offset

    def add(self, offsets: Iterable[int], next_offset: int) -> None:
        """Record a pull: ``offsets`` were delivered (ascending), the next pull starts at
        ``next_offset``. Offsets below the current ``next_offset`` are ignored (a late
        answer to an old pull)."""
        floor = self.next_offset
        order = self._order
        if isinstance(offsets, list) and offsets and floor <= offsets[0] and \
                offsets[-1] < next_offset and (not order or offsets[0] > order[-1]):
            # the usual pull, all of it new: in bulk
            assert all(map(operator.lt, offsets, offsets[1:])), "offsets must ascend"
            order.extend(offsets)
            self._undone.update(offsets)
        else:
            for offset in offsets:
                if offset < floor or offset >= next_offset:
                    continue
                assert not order or offset > order[-1], "offsets must ascend"
                order.append(offset)
                self._undone.add(offset)
        if next_offset > floor:
            self.next_offset = next_offset

    def ack(self, offset: int) -> bool:
        """Mark ``offset`` done. Returns False when it was not in flight (already done, or
        never delivered by this tracker)."""
        if offset not in self._undone:
            return False
        self._undone.remove(offset)
        order = self._order
        while order and order[0] not in self._undone:
            order.popleft()
        return True

    def is_undone(self, offset: int) -> bool:
        return offset in self._undone

    def reset(self, next_offset: int) -> None:
        """Forget everything in flight and pull from ``next_offset`` (the broker moved the
        queue: retention passed our offset, or it was reset)."""
        self._order.clear()
        self._undone.clear()
        self.next_offset = next_offset
