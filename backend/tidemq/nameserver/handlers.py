"""The built-in event handlers, plugged in through the ``tidemq.nameserver.handlers``
entry-point group like any other (see ``event_bus``)."""

from __future__ import annotations

import dataclasses
import logging

from tidemq.nameserver.event_bus import EventHandler, HandlerContext
from tidemq.nameserver.events import (
    BrokerEvicted,
    BrokerRegistered,
    LeaderChanged,
    RegistryEvent,
    TopicChanged,
)

event_log = logging.getLogger("tidemq.nameserver.events")


def route_cache(context: HandlerContext) -> EventHandler:
    """Drop cached route answers a change may have made wrong."""
    cache = context.route_cache

    def invalidate(event: RegistryEvent) -> None:
        if isinstance(event, TopicChanged):
            cache.invalidate(event.topic)
        elif isinstance(event, BrokerEvicted | BrokerRegistered | LeaderChanged):
            cache.clear()  # replica lists in every route of the group changed

    return invalidate


def structured_log(context: HandlerContext) -> EventHandler:
    """One log record per event, its fields as ``extra`` (for JSON log formatters)."""
    node = context.node_address

    def log(event: RegistryEvent) -> None:
        fields = dataclasses.asdict(event)
        event_log.info("%s %s", type(event).__name__,
                       " ".join(f"{k}={v}" for k, v in fields.items()),
                       extra={"event": type(event).__name__, "node": node, **fields})

    return log


def metrics(context: HandlerContext) -> EventHandler:
    """Count events by kind (``tidemq_namesrv_events_total{kind=...}``)."""
    counts = context.event_counts

    def count(event: RegistryEvent) -> None:
        counts[type(event).__name__] += 1

    return count
