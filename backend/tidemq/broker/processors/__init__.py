"""Request processors: one async function per request code, grouped by area."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidemq.broker.processors import admin, consume, pull, query, send

if TYPE_CHECKING:
    from tidemq.broker.node import Processor
    from tidemq.protocol.codes import RequestCode


def register_all(table: dict[RequestCode, Processor]) -> None:
    for module in (send, pull, consume, admin, query):
        table.update(module.PROCESSORS)
