"""Consumer-side requests: heartbeats and membership, offsets, queue locks, send-back.

SEND_BACK implements ``msg.nack()``: the broker copies the record into the group's retry
topic ``%RETRY%{group}`` (original topic and id kept in properties, reconsume count + 1),
which every clustering consumer of the group also pulls; past the group's maximum
reconsume count it goes to ``%DLQ%{group}`` instead, which nobody consumes automatically.
Growing retry delays arrive with the timing wheel; until then a retry is redelivered at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import trio

from tidemq.errors import GroupNotFound, InvalidArgument
from tidemq.protocol import fields
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Request, Response
from tidemq.protocol.record import encode_draft
from tidemq.protocol.subscription import parse_subscription

if TYPE_CHECKING:
    from tidemq.broker.node import Broker, Processor
    from tidemq.net import ServerConnectionContext

RECONSUME_TIMES_MAX: Final = 16
PROPERTY_ORIGIN_TOPIC: Final = "ORIGIN_TOPIC"
PROPERTY_ORIGIN_MSG_ID: Final = "ORIGIN_MSG_ID"
MODES: Final = ("clustering", "broadcast")


def retry_topic(group: str) -> str:
    return f"%RETRY%{group}"


def dead_letter_topic(group: str) -> str:
    return f"%DLQ%{group}"


async def handle_heartbeat(broker: Broker, request: Request,
                           context: ServerConnectionContext) -> Response:
    client_id = fields.string(request.fields, "client_id")
    versions: dict[str, int] = {}
    for entry in fields.map_list(request.fields, "groups"):
        group = fields.string(entry, "group")
        mode = fields.string(entry, "mode", "clustering")
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {MODES}")
        subscriptions = fields.string_map(entry, "subscriptions")
        for expression in subscriptions.values():
            parse_subscription(expression)
        state = broker.groups.heartbeat(group, client_id, subscriptions, mode,
                                        trio.current_time(), id(context))
        versions[group] = state.version
    return request.respond({"groups": versions})


async def handle_unregister(broker: Broker, request: Request,
                            context: ServerConnectionContext) -> Response:
    group = fields.string(request.fields, "group")
    client_id = fields.string(request.fields, "client_id")
    broker.groups.leave(group, client_id)
    broker.queue_locks.release_client(group, client_id)
    return request.respond()


def readable_queue(broker: Broker, topic_name: str, queue_id: int) -> None:
    """Raises TopicNotFound / InvalidArgument unless the topic has that read queue."""
    topic = broker.topics.require(topic_name)
    if queue_id >= topic.read_queue_count:
        raise InvalidArgument(f"queue {queue_id} of {topic_name!r} does not exist "
                              f"({topic.read_queue_count} read queues)")


async def handle_commit_offset(broker: Broker, request: Request,
                               context: ServerConnectionContext) -> Response | None:
    f = request.fields
    group, topic = fields.string(f, "group"), fields.string(f, "topic")
    queue_id = fields.integer(f, "queue_id", minimum=0)
    readable_queue(broker, topic, queue_id)
    broker.offsets.commit(group, topic, queue_id, fields.integer(f, "offset", minimum=0))
    return None if request.oneway else request.respond()


async def handle_query_offset(broker: Broker, request: Request,
                              context: ServerConnectionContext) -> Response:
    f = request.fields
    offset = broker.offsets.get(fields.string(f, "group"), fields.string(f, "topic"),
                                fields.integer(f, "queue_id", minimum=0))
    return request.respond({"offset": -1 if offset is None else offset})


async def handle_reset_offset(broker: Broker, request: Request,
                              context: ServerConnectionContext) -> Response:
    f = request.fields
    group, topic_name = fields.string(f, "group"), fields.string(f, "topic")
    to = fields.string(f, "to")
    topic = broker.topics.require(topic_name)
    offsets: dict[str, int] = {}
    for queue_id in range(topic.read_queue_count):
        if to == "earliest":
            offset = broker.store.min_offset(topic_name, queue_id)
        elif to == "latest":
            offset = broker.store.max_offset(topic_name, queue_id)
        elif to == "timestamp":
            offset = broker.store.offset_for_timestamp(
                topic_name, queue_id, fields.integer(f, "timestamp_ms", minimum=0))
        else:
            raise InvalidArgument("to must be earliest, latest or timestamp")
        broker.offsets.commit(group, topic_name, queue_id, offset)
        offsets[str(queue_id)] = offset
    state = broker.groups.get(group)
    if state is not None:
        state.version += 1  # members re-read committed offsets when they rebalance
    return request.respond({"offsets": offsets})


async def handle_lock(broker: Broker, request: Request,
                      context: ServerConnectionContext) -> Response:
    f = request.fields
    topic = fields.string(f, "topic")
    queue_ids = fields.integer_list(f, "queue_ids")
    for queue_id in set(queue_ids):
        readable_queue(broker, topic, queue_id)
    locked = broker.queue_locks.try_lock(
        fields.string(f, "group"), topic, queue_ids, fields.string(f, "client_id"),
        trio.current_time())
    return request.respond({"locked": locked})


async def handle_unlock(broker: Broker, request: Request,
                        context: ServerConnectionContext) -> Response:
    f = request.fields
    broker.queue_locks.unlock(fields.string(f, "group"), fields.string(f, "topic"),
                              fields.integer_list(f, "queue_ids"),
                              fields.string(f, "client_id"))
    return request.respond()


async def handle_send_back(broker: Broker, request: Request,
                           context: ServerConnectionContext) -> Response:
    f = request.fields
    group, msg_id = fields.string(f, "group"), fields.string(f, "msg_id")
    if broker.groups.get(group) is None and not broker.offsets.of_group(group):
        # Each group gets its own retry topic: only groups that exist may create one.
        raise GroupNotFound(f"group {group!r} is unknown (no member, no committed offset)")
    record = broker.store.lookup_by_message_id(msg_id)
    if record is None:
        raise InvalidArgument(f"message {msg_id} is not stored here")
    # The consumer's count may be ahead of the stored copy's (an orderly consumer redelivers
    # locally before sending back): the higher one decides between retry and dead letters.
    reconsume_times = max(record.reconsume_times,
                          fields.integer(f, "reconsume_times", 0, minimum=0)) + 1
    properties = dict(record.properties)
    properties.setdefault(PROPERTY_ORIGIN_TOPIC, record.topic)
    properties.setdefault(PROPERTY_ORIGIN_MSG_ID, msg_id)
    target = retry_topic(group) if reconsume_times <= RECONSUME_TIMES_MAX \
        else dead_letter_topic(group)
    if broker.topics.get(target) is None:
        broker.topics.create(target, 1, system=True)
        await broker.persist_topics()
    tag = properties.pop("TAGS", None)
    draft = encode_draft(target, record.body, properties, tag=tag,
                         born_timestamp_ms=record.born_timestamp_ms,
                         born_host=record.born_host, born_port=record.born_port,
                         reconsume_times=reconsume_times)
    try:
        await broker.store_service.put_batch(target, 0, [draft])
    finally:
        broker.waiters.notify(target, 0)
    return request.respond({"retry_topic": target, "reconsume_times": reconsume_times})


async def handle_list_groups(broker: Broker, request: Request,
                             context: ServerConnectionContext) -> Response:
    names = set(broker.groups.groups) | set(broker.offsets.groups())
    return request.respond({"groups": sorted(names)})


async def handle_describe_group(broker: Broker, request: Request,
                                context: ServerConnectionContext) -> Response:
    group = fields.string(request.fields, "group")
    state = broker.groups.get(group)
    committed = broker.offsets.of_group(group)
    if state is None and not committed:
        raise GroupNotFound(f"group {group!r} is unknown")
    now = trio.current_time()
    members: list[Any] = [] if state is None else [
        {"client_id": m.client_id, "subscriptions": m.subscriptions, "mode": m.mode,
         "idle_ms": int((now - m.last_heartbeat_s) * 1000)}
        for m in sorted(state.members.values(), key=lambda m: m.client_id)]
    topics = set(committed) | (set(state.subscriptions()) if state else set())
    offsets: list[Any] = []
    for topic_name in sorted(topics):
        topic = broker.topics.get(topic_name)
        if topic is None:
            continue
        for queue_id in range(topic.read_queue_count):
            maximum = broker.store.max_offset(topic_name, queue_id)
            done = committed.get(topic_name, {}).get(queue_id, -1)
            minimum = broker.store.min_offset(topic_name, queue_id)
            base = max(done, minimum)  # retention may have deleted what was not consumed
            offsets.append({"topic": topic_name, "queue_id": queue_id, "committed": done,
                            "max_offset": maximum, "lag": max(0, maximum - base)})
    return request.respond({
        "group": group, "mode": state.mode if state else "clustering",
        "version": state.version if state else 0, "members": members, "offsets": offsets,
    })


PROCESSORS: dict[RequestCode, Processor] = {
    RequestCode.HEARTBEAT: handle_heartbeat,
    RequestCode.UNREGISTER_CLIENT: handle_unregister,
    RequestCode.COMMIT_OFFSET: handle_commit_offset,
    RequestCode.QUERY_OFFSET: handle_query_offset,
    RequestCode.RESET_OFFSET: handle_reset_offset,
    RequestCode.LOCK_QUEUES: handle_lock,
    RequestCode.UNLOCK_QUEUES: handle_unlock,
    RequestCode.SEND_BACK: handle_send_back,
    RequestCode.LIST_GROUPS: handle_list_groups,
    RequestCode.DESCRIBE_GROUP: handle_describe_group,
}
