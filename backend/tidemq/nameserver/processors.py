"""Request processors of a name server: one async function per request code.

Reads (GET_ROUTE) are served by any ready node, except in ``chain`` mode where the tail
serves them; a node that may not answer says NOT_LEADER with the address that may.
Writes (REGISTER_BROKER, UNREGISTER_BROKER) go through the ``Replicator``: a node that is
not the writer answers NOT_LEADER with the writer's address, and brokers, which send each
registration to every name server, need nothing more to follow a failover.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeAlias

import trio

from tidemq.errors import InvalidArgument, NotLeader, TopicNotFound
from tidemq.nameserver.registry import Register, Unregister
from tidemq.protocol import fields as f
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Request, Response
from tidemq.protocol.routing import NAME_LENGTH_MAX, BrokerRegistration

if TYPE_CHECKING:
    from tidemq.nameserver.node import NameServer
    from tidemq.net import ServerConnectionContext

Processor: TypeAlias = Callable[["NameServer", Request, "ServerConnectionContext"],
                                Awaitable[Response]]


def _check_may_read(node: NameServer) -> None:
    membership = node.membership
    if not membership.ready:
        raise NotLeader("this name server is still joining its cluster", membership.writer)
    if node.config.mode == "chain" and membership.replicated:
        tail = membership.tail(trio.current_time())
        if tail != node.address:
            raise NotLeader("in chain mode the tail serves reads", tail)


async def get_route(node: NameServer, request: Request,
                    context: ServerConnectionContext) -> Response:
    topic = f.string(request.fields, "topic")
    if not 0 < len(topic) <= NAME_LENGTH_MAX:
        raise InvalidArgument(f"field 'topic' must be 1..{NAME_LENGTH_MAX} characters")
    _check_may_read(node)
    answer = node.route_cache.get(topic)
    if answer is None:
        route = node.registry.route(topic)
        answer = route.to_fields()
        node.route_cache.put(topic, answer)
    if not answer["groups"]:
        raise TopicNotFound(f"no broker serves topic {topic!r}")
    return request.respond(answer)


async def register_broker(node: NameServer, request: Request,
                          context: ServerConnectionContext) -> Response:
    raw = request.fields.get("registration")
    if not isinstance(raw, Mapping):
        raise InvalidArgument("field 'registration' must be a map")
    registration = BrokerRegistration.from_fields(raw)
    await node.replicator.submit(Register(registration))
    node.remember_connection(registration.address, context)
    membership = node.membership
    return request.respond({"mode": node.config.mode, "writer": membership.writer,
                            "term": membership.term})


async def unregister_broker(node: NameServer, request: Request,
                            context: ServerConnectionContext) -> Response:
    address = f.string(request.fields, "address")
    if address in node.registry:
        await node.replicator.submit(Unregister(address, "unregistered"))
    return request.respond()


async def get_cluster_info(node: NameServer, request: Request,
                           context: ServerConnectionContext) -> Response:
    fields = node.registry.cluster_view(trio.current_time()).to_fields()
    fields["namesrv"] = node.status(brief=False)
    return request.respond(fields)


async def namesrv_status(node: NameServer, request: Request,
                         context: ServerConnectionContext) -> Response:
    brief = f.boolean(request.fields, "brief", False)
    return request.respond(node.status(brief))


async def replicate_write(node: NameServer, request: Request,
                          context: ServerConnectionContext) -> Response:
    return request.respond(await node.replicator.receive_write(request.fields))


async def replicate_snapshot(node: NameServer, request: Request,
                             context: ServerConnectionContext) -> Response:
    await node.replicator.receive_snapshot(request.fields)
    node.route_cache.clear()
    return request.respond()


PROCESSORS: dict[RequestCode, Processor] = {
    RequestCode.GET_ROUTE: get_route,
    RequestCode.REGISTER_BROKER: register_broker,
    RequestCode.UNREGISTER_BROKER: unregister_broker,
    RequestCode.GET_CLUSTER_INFO: get_cluster_info,
    RequestCode.NAMESRV_STATUS: namesrv_status,
    RequestCode.REPLICATE_WRITE: replicate_write,
    RequestCode.REPLICATE_SNAPSHOT: replicate_snapshot,
}
