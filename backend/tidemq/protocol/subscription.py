"""Tag expressions: what a consumer subscribes to within a topic.

``"*"`` (or an empty expression) takes every message; ``"created || paid"`` takes messages
whose tag is one of the listed tags. The broker filters by tag *hash* (the consume-queue
entry holds it, so no record is read to filter); hashes can collide, so the client
confirms the tag itself. Both sides parse expressions here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from tidemq.errors import InvalidArgument
from tidemq.protocol.record import tag_hash

MATCH_ALL: Final = "*"
_TAG: Final = re.compile(r"^[^|\s]+$")


@dataclass(frozen=True, slots=True)
class Subscription:
    expression: str
    tags: frozenset[str] | None  # None = every message

    @property
    def tag_hashes(self) -> frozenset[int] | None:
        if self.tags is None:
            return None
        return frozenset(tag_hash(tag) for tag in self.tags)

    def matches(self, tag: str | None) -> bool:
        return self.tags is None or (tag is not None and tag in self.tags)


def parse_subscription(expression: str | None) -> Subscription:
    """Parse a tag expression. Raises InvalidArgument for a malformed one."""
    text = (expression or "").strip()
    if text in ("", MATCH_ALL):
        return Subscription(MATCH_ALL, None)
    tags = [part.strip() for part in text.split("||")]
    if not all(tags) or not all(_TAG.match(tag) for tag in tags):
        raise InvalidArgument(f"bad tag expression {expression!r}: use * or 'a || b'")
    if MATCH_ALL in tags:
        return Subscription(MATCH_ALL, None)
    return Subscription(" || ".join(sorted(set(tags))), frozenset(tags))
