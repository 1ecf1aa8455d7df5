"""The name server's in-process event bus, and the handlers plugged into it.

Handlers are found through the entry-point group ``tidemq.nameserver.handlers``; the
built-in ones (``tidemq.nameserver.handlers``) are declared there too, in pyproject.toml,
so a plug-in is installed exactly like them. An entry point names a *factory*::

    def my_handler(context: HandlerContext) -> Callable[[RegistryEvent], None]: ...

    [project.entry-points."tidemq.nameserver.handlers"]
    my_handler = "my_package.module:my_handler"

``publish`` calls every handler in turn, on the event loop, in the order the events
happened. A handler must be quick and must not block (hand slow work to a task of its
own). A handler that raises is logged and counted; it never stops the others or the node.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Final, TypeAlias, final

from tidemq.nameserver.events import RegistryEvent
from tidemq.protocol.events import FieldValue

logger = logging.getLogger("tidemq.nameserver.events")

ENTRY_POINT_GROUP: Final = "tidemq.nameserver.handlers"

EventHandler: TypeAlias = Callable[[RegistryEvent], None]


@final
class RouteAnswerCache:
    """Encoded GET_ROUTE answers by topic, dropped when the topic's route may change."""

    def __init__(self) -> None:
        self._answers: dict[str, dict[str, FieldValue]] = {}

    def get(self, topic: str) -> dict[str, FieldValue] | None:
        return self._answers.get(topic)

    def put(self, topic: str, answer: dict[str, FieldValue]) -> None:
        self._answers[topic] = answer

    def invalidate(self, topic: str) -> None:
        self._answers.pop(topic, None)

    def clear(self) -> None:
        self._answers.clear()

    def __len__(self) -> int:
        return len(self._answers)


@dataclass(slots=True)
class HandlerContext:
    """What a handler factory may use: the node's route cache, its event counters, its
    address (for logs)."""

    node_address: str
    route_cache: RouteAnswerCache
    event_counts: Counter[str] = field(default_factory=Counter)
    """Events seen, by kind (``BrokerRegistered`` ...): the metrics handler keeps it."""
    handler_errors: Counter[str] = field(default_factory=Counter)


HandlerFactory: TypeAlias = Callable[[HandlerContext], EventHandler]


@final
class EventBus:
    def __init__(self, context: HandlerContext) -> None:
        self.context = context
        self._handlers: list[tuple[str, EventHandler]] = []

    def add(self, name: str, handler: EventHandler) -> None:
        self._handlers.append((name, handler))

    @property
    def handler_names(self) -> list[str]:
        return [name for name, _ in self._handlers]

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Add every handler installed under ``group``. A plug-in that fails to load is
        logged and skipped: a broken plug-in must not keep the name server down."""
        for entry in sorted(entry_points(group=group), key=lambda e: e.name):
            try:
                factory: HandlerFactory = entry.load()
                self.add(entry.name, factory(self.context))
            except Exception:
                logger.exception("event handler %r failed to load", entry.name)
                self.context.handler_errors[entry.name] += 1

    def publish(self, events: Iterable[RegistryEvent]) -> None:
        for event in events:
            for name, handler in self._handlers:
                try:
                    handler(event)
                except Exception:
                    self.context.handler_errors[name] += 1
                    logger.exception("event handler %r failed on %r", name, event)
