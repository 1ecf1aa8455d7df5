"""Request processors: one async function per request code, grouped by area; some codes
also have an immediate processor, a plain function the connection's reader calls first
(``net.serve``'s ``immediate_handler``) that answers without a task when nothing has to
wait."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidemq.broker.processors import admin, consume, pull, query, send

if TYPE_CHECKING:
    from tidemq.broker.node import ImmediateProcessor, Processor
    from tidemq.protocol.codes import RequestCode


def register_all(table: dict[RequestCode, Processor],
                 immediate: dict[RequestCode, ImmediateProcessor]) -> None:
    for module in (send, pull, consume, admin, query):
        table.update(module.PROCESSORS)
    immediate.update(send.IMMEDIATE_PROCESSORS)
