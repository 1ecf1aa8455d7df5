"""Topic administration: create, update (queue counts, permission), delete, describe, list.

Changes are saved (atomically) before they are acknowledged. Deleting a topic removes its
configuration and the groups' offsets for it; its records stay in the commit log until
retention removes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidemq.broker.topics import Permission, is_system_topic
from tidemq.protocol import fields
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Request, Response

if TYPE_CHECKING:
    from tidemq.broker.node import Broker, Processor
    from tidemq.net import ServerConnectionContext


async def handle_create(broker: Broker, request: Request,
                        context: ServerConnectionContext) -> Response:
    f = request.fields
    topic = broker.topics.create(
        fields.string(f, "topic"),
        fields.integer(f, "queue_count", broker.config.broker.default_queue_count),
        fields.integer(f, "permission", int(Permission.READ_WRITE)))
    await broker.persist_topics()
    return request.respond({"topic": topic.to_dict()})


async def handle_update(broker: Broker, request: Request,
                        context: ServerConnectionContext) -> Response:
    f = request.fields
    topic = broker.topics.update(
        fields.string(f, "topic"),
        read_queue_count=fields.optional_integer(f, "read_queue_count"),
        write_queue_count=fields.optional_integer(f, "write_queue_count"),
        permission=fields.optional_integer(f, "permission"))
    await broker.persist_topics()
    return request.respond({"topic": topic.to_dict()})


async def handle_delete(broker: Broker, request: Request,
                        context: ServerConnectionContext) -> Response:
    name = fields.string(request.fields, "topic")
    broker.topics.delete(name)
    broker.offsets.forget_topic(name)
    await broker.persist_topics()
    return request.respond()


async def handle_describe(broker: Broker, request: Request,
                          context: ServerConnectionContext) -> Response:
    name = fields.string(request.fields, "topic")
    topic = broker.topics.require(name)
    queues = [{"queue_id": q, "min_offset": broker.store.min_offset(name, q),
               "max_offset": broker.store.max_offset(name, q)}
              for q in range(max(topic.read_queue_count, topic.write_queue_count))]
    return request.respond({"topic": topic.to_dict(), "queues": queues})


async def handle_list(broker: Broker, request: Request,
                      context: ServerConnectionContext) -> Response:
    include_system = fields.boolean(request.fields, "include_system", False)
    topics = [topic.to_dict() for name, topic in sorted(broker.topics.topics.items())
              if include_system or not is_system_topic(name)]
    return request.respond({"topics": topics})


PROCESSORS: dict[RequestCode, Processor] = {
    RequestCode.CREATE_TOPIC: handle_create,
    RequestCode.UPDATE_TOPIC: handle_update,
    RequestCode.DELETE_TOPIC: handle_delete,
    RequestCode.DESCRIBE_TOPIC: handle_describe,
    RequestCode.LIST_TOPICS: handle_list,
}
