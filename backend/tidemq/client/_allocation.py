"""Client-side rebalance: which queues each member of a consumer group takes.

Every member computes the same answer from the same inputs, with no coordinator: the
group's member ids (sorted) and the subscribed queues (sorted ``(topic, broker, queue_id)``)
are cut into contiguous runs, as even as possible, the first ``len(queues) % len(members)``
members taking one extra (RocketMQ's "average" strategy)::

    10 queues, 3 members:   m0: q0 q1 q2 q3    m1: q4 q5 q6    m2: q7 q8 q9
     2 queues, 3 members:   m0: q0    m1: q1    m2: (none)

Members that see different inputs for a moment (one heartbeat behind) may both hold a
queue, or neither: delivery is at least once, and the next heartbeat converges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


T = TypeVar("T", bound=_Ordered)


def allocate_average(members: Sequence[str], queues: Sequence[T], member: str) -> list[T]:
    """The queues ``member`` takes. Inputs need not be sorted; ``member`` not among
    ``members`` takes nothing."""
    ordered_members = sorted(set(members))
    if member not in ordered_members or not queues:
        return []
    ordered_queues = sorted(queues)
    index = ordered_members.index(member)
    base, extra = divmod(len(ordered_queues), len(ordered_members))
    start = index * base + min(index, extra)
    size = base + (1 if index < extra else 0)
    return ordered_queues[start:start + size]
