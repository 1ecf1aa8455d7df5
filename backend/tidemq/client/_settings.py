"""A consumer's settings: one frozen, validated value built from ``Consumer``'s arguments.

Units are in the names. The defaults follow RocketMQ's push consumer where it has one:
long polls of 15 s, offsets committed every second, a per-queue prefetch of 256 messages
in flight and a span of 2,000 offsets. The heartbeat runs every second: a queue given to a
joining member is still pulled by its previous owner until that one's next heartbeat (the
broker cannot push a membership change), so the interval bounds that overlap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from tidemq.errors import InvalidArgument
from tidemq.protocol.subscription import Subscription, parse_subscription

Mode: TypeAlias = Literal["clustering", "broadcast"]
StartFrom: TypeAlias = Literal["earliest", "latest"] | int
"""Where a queue with no committed offset starts: its oldest message, the next message
stored, or the first message stored at or after this Unix time in milliseconds."""

MODES: tuple[Mode, ...] = ("clustering", "broadcast")
RETRY_PREFIX = "%RETRY%"


def retry_topic(group: str) -> str:
    return f"{RETRY_PREFIX}{group}"


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    group: str
    client_id: str
    subscriptions: Mapping[str, Subscription]
    """Subscribed topics and their tag filters (the retry topic is implied: ``topics``)."""
    mode: Mode = "clustering"
    orderly: bool = False
    start_from: StartFrom = "latest"
    heartbeat_interval_ms: int = 1_000
    pull_batch_size: int = 32
    prefetch_per_queue: int = 256
    span_per_queue_max: int = 2_000
    suspend_ms: int = 15_000
    commit_interval_ms: int = 1_000
    lock_renew_interval_ms: int = 20_000
    retry_delay_ms: int = 1_000
    """Pause before a local redelivery (orderly nack, or a nack the broker did not take)."""
    max_reconsume_times: int = 16
    pull_backoff_ms: int = 1_000
    drain_timeout_ms: int = 3_000
    """Orderly only: how long losing a queue waits for its in-flight message to settle."""
    close_timeout_ms: int = 5_000
    request_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if not self.group or not isinstance(self.group, str):
            raise InvalidArgument("group must be a non-empty string")
        if self.mode not in MODES:
            raise InvalidArgument(f"mode must be one of {MODES}")
        if not (self.start_from in ("earliest", "latest") or (
                isinstance(self.start_from, int) and not isinstance(self.start_from, bool)
                and self.start_from >= 0)):
            raise InvalidArgument("start_from must be 'earliest', 'latest' or a timestamp in "
                                  "milliseconds")
        for name in ("heartbeat_interval_ms", "pull_batch_size", "prefetch_per_queue",
                     "span_per_queue_max", "commit_interval_ms", "lock_renew_interval_ms",
                     "pull_backoff_ms", "close_timeout_ms", "request_timeout_ms"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1")
        for name in ("suspend_ms", "retry_delay_ms", "drain_timeout_ms",
                     "max_reconsume_times"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must not be negative")

    @property
    def clustering(self) -> bool:
        return self.mode == "clustering"

    @property
    def retry_topic(self) -> str:
        return retry_topic(self.group)

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic pulled: the subscribed ones, plus the group's retry topic when
        clustering (nacked messages come back through it)."""
        topics = tuple(sorted(self.subscriptions))
        return (*topics, self.retry_topic) if self.clustering else topics

    def heartbeat_subscriptions(self) -> dict[str, str]:
        subscriptions = {topic: s.expression for topic, s in self.subscriptions.items()}
        if self.clustering:
            subscriptions[self.retry_topic] = "*"
        return subscriptions

    @property
    def pull_timeout_ms(self) -> int:
        """A long poll is answered within ``suspend_ms``; allow the round trip on top."""
        return self.suspend_ms + self.request_timeout_ms


def parse_topics(topics: Mapping[str, str] | Sequence[str] | str) -> dict[str, Subscription]:
    """``{"orders": "created || paid"}``, ``["orders", "refunds"]`` or ``"orders"`` (all tags)
    to subscriptions. Raises InvalidArgument."""
    if isinstance(topics, str):
        pairs: list[tuple[str, str]] = [(topics, "*")]
    elif isinstance(topics, Mapping):
        pairs = [(str(topic), str(expression)) for topic, expression in topics.items()]
    else:
        pairs = [(str(topic), "*") for topic in topics]
    if not pairs:
        raise InvalidArgument("subscribe to at least one topic")
    subscriptions: dict[str, Subscription] = {}
    for topic, expression in pairs:
        if not topic or topic.startswith(RETRY_PREFIX):
            raise InvalidArgument(f"cannot subscribe to {topic!r}")
        subscriptions[topic] = parse_subscription(expression)
    return subscriptions
