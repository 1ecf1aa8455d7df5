"""Message and offset queries: by message id, by key, by queue offset; offset by time;
a queue's min and max offsets. Records travel raw in the body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tidemq.broker.processors.consume import readable_queue
from tidemq.common.ids import decode_message_id
from tidemq.errors import InvalidArgument, OffsetMoved
from tidemq.protocol import fields
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Request, Response

if TYPE_CHECKING:
    from tidemq.broker.node import Broker, Processor
    from tidemq.net import ServerConnectionContext

KEY_QUERY_LIMIT_MAX: Final = 256


async def handle_by_id(broker: Broker, request: Request,
                       context: ServerConnectionContext) -> Response:
    msg_id = fields.string(request.fields, "msg_id")
    try:
        decoded = decode_message_id(msg_id)
    except ValueError as error:
        raise InvalidArgument(str(error)) from None
    raw = broker.store.read_record(decoded.commit_offset)
    if raw is None:
        raise OffsetMoved(f"message {msg_id} is not stored here")
    return request.respond({"count": 1}, raw)


async def handle_by_key(broker: Broker, request: Request,
                        context: ServerConnectionContext) -> Response:
    f = request.fields
    topic = fields.string(f, "topic")
    broker.topics.require(topic)
    limit = fields.integer(f, "limit", 32, minimum=1, maximum=KEY_QUERY_LIMIT_MAX)
    begin_ms = fields.integer(f, "begin_ms", 0, minimum=0)
    end_ms = fields.integer(f, "end_ms", 2**63 - 1, minimum=0)
    records = broker.store.lookup_by_key(topic, fields.string(f, "key"), limit=limit,
                                         begin_ms=begin_ms, end_ms=end_ms)
    raws = [broker.store.read_record(record.commit_offset) for record in records]
    found = [raw for raw in raws if raw is not None]
    return request.respond({"count": len(found)}, b"".join(found))


async def handle_by_queue_offset(broker: Broker, request: Request,
                                 context: ServerConnectionContext) -> Response:
    topic, queue_id = _queue_of(broker, request)
    offset = fields.integer(request.fields, "offset", minimum=0)
    result = broker.store.get_messages(topic, queue_id, offset, max_count=1)
    if result.count == 0 or result.next_offset != offset + 1:
        raise OffsetMoved(f"no message at {topic}/{queue_id}@{offset} (queue holds "
                          f"[{result.min_offset}, {result.max_offset}))")
    return request.respond({"count": 1}, result.data)


async def handle_offset_by_time(broker: Broker, request: Request,
                                context: ServerConnectionContext) -> Response:
    topic, queue_id = _queue_of(broker, request)
    offset = broker.store.offset_for_timestamp(
        topic, queue_id, fields.integer(request.fields, "timestamp_ms", minimum=0))
    return request.respond({"offset": offset})


async def handle_min_offset(broker: Broker, request: Request,
                            context: ServerConnectionContext) -> Response:
    topic, queue_id = _queue_of(broker, request)
    return request.respond({"offset": broker.store.min_offset(topic, queue_id)})


async def handle_max_offset(broker: Broker, request: Request,
                            context: ServerConnectionContext) -> Response:
    topic, queue_id = _queue_of(broker, request)
    return request.respond({"offset": broker.store.max_offset(topic, queue_id)})


def _queue_of(broker: Broker, request: Request) -> tuple[str, int]:
    topic = fields.string(request.fields, "topic")
    queue_id = fields.integer(request.fields, "queue_id", minimum=0)
    readable_queue(broker, topic, queue_id)
    return topic, queue_id


PROCESSORS: dict[RequestCode, Processor] = {
    RequestCode.QUERY_MESSAGE_BY_ID: handle_by_id,
    RequestCode.QUERY_MESSAGE_BY_KEY: handle_by_key,
    RequestCode.QUERY_BY_QUEUE_OFFSET: handle_by_queue_offset,
    RequestCode.SEARCH_OFFSET_BY_TIME: handle_offset_by_time,
    RequestCode.GET_MIN_OFFSET: handle_min_offset,
    RequestCode.GET_MAX_OFFSET: handle_max_offset,
}
