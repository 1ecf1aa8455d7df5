"""SEND_MESSAGE / SEND_BATCH: split the body into record drafts, store, acknowledge.

The body is record drafts back to back, never re-encoded: each draft's first u32 is its
total size, so splitting is a walk over sizes (memoryview slices, no copies). A send is
acknowledged once stored under the flush mode (DESIGN.md section 5); then parked pulls of
the queue are woken (long polling).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from tidemq.common.ids import encode_message_ids
from tidemq.errors import InvalidArgument, MessageIllegal
from tidemq.protocol import fields
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Body, Request, Response
from tidemq.protocol.record import HEADER_SIZE

if TYPE_CHECKING:
    from tidemq.broker.node import Broker, Processor
    from tidemq.net import ServerConnectionContext

_SIZE: Final = struct.Struct("<I")


def split_drafts(body: Body, max_message_size: int) -> list[memoryview]:
    """Cut a send body into drafts. Raises MessageIllegal on a malformed or oversize one."""
    view = memoryview(body)
    drafts: list[memoryview] = []
    position = 0
    end = len(view)
    if end == 0:
        raise MessageIllegal("a send carries no record")
    while position < end:
        if end - position < HEADER_SIZE:
            raise MessageIllegal("a record is cut short")
        size = _SIZE.unpack_from(view, position)[0]
        if size > max_message_size:
            raise MessageIllegal(f"a record of {size} bytes exceeds the limit of "
                                 f"{max_message_size}")
        if size < HEADER_SIZE or position + size > end:
            raise MessageIllegal("a record's size does not match the body")
        drafts.append(view[position:position + size])
        position += size
    return drafts


async def handle_send(broker: Broker, request: Request, context: ServerConnectionContext
                      ) -> Response | None:
    topic_name = fields.string(request.fields, "topic")
    queue_id = fields.integer(request.fields, "queue_id", -1, minimum=-1)
    config = broker.config.store
    if len(request.body) > config.append_batch_bytes_max:
        raise MessageIllegal(f"a batch of {len(request.body)} bytes exceeds the limit of "
                             f"{config.append_batch_bytes_max}")
    drafts = split_drafts(request.body, config.max_message_size_bytes)
    topic, created = broker.topics.for_send(topic_name)
    if created:
        await broker.persist_topics()
    if queue_id == -1:
        queue_id = broker.next_queue(topic_name, topic.write_queue_count)
    elif queue_id >= topic.write_queue_count:
        raise InvalidArgument(f"queue {queue_id} of {topic_name!r} does not exist "
                              f"({topic.write_queue_count} write queues)")
    try:
        result = await broker.store_service.put_batch(topic_name, queue_id,
                                                      drafts)  # type: ignore[arg-type]
    finally:
        # Also when the fsync wait failed or was cancelled: the records may be stored,
        # and parked pulls must see them now, not at their timeout.
        broker.waiters.notify(topic_name, queue_id)
    if request.oneway:
        return None
    return request.respond({
        "queue_id": queue_id,
        "first_queue_offset": result.first_queue_offset,
        "msg_ids": encode_message_ids(broker.message_id(0), result.commit_offsets),
        "store_timestamp_ms": result.store_timestamp_ms,
    })


PROCESSORS: dict[RequestCode, Processor] = {
    RequestCode.SEND_MESSAGE: handle_send,
    RequestCode.SEND_BATCH: handle_send,
}
