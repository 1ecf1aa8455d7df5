"""Administration: topics, groups, offsets and message queries, over every broker.

Each call turns into the request of ``docs/protocol.md`` on each broker it concerns and
merges the answers into the frozen values of ``_admin_types``:

* topic calls go to every configured broker: ``create_topic`` creates the topic on each,
  ``update_topic``/``delete_topic`` change it where it exists (TopicNotFound only when it
  exists nowhere), ``describe_topic`` lists every broker's queues;
* group calls merge every broker's view (members, committed offsets, lag);
* queue calls (``min_offset``, ``get_message_at``, ...) name one queue, on ``broker`` (by
  default the first configured broker);
* ``get_message`` decodes the broker's address from the offset-based id and asks it;
* ``cluster`` asks every name server for its status and the registry.

With ``namesrv=``, "every broker" is every broker group the name servers know (its
leader), looked up when the admin opens and before each call that goes to every broker.

A broker that cannot be reached makes the call raise (ConnectionClosed / RequestTimeout):
an operator should know, rather than get half an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Literal, Self, final

from tidemq.client._admin_types import (
    BrokerGroupInfo,
    ClusterInfo,
    GroupInfo,
    GroupOffset,
    MemberInfo,
    NameServerInfo,
    QueueInfo,
    ReplicaInfo,
    TopicInfo,
)
from tidemq.client._ids import default_client_id
from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._message import Message, message_from_record
from tidemq.client._namesrv import NameServerRoutes, parse_namesrv
from tidemq.client._pool import BrokerPool, check_brokers
from tidemq.client._routes import MessageQueue
from tidemq.common.ids import decode_message_id
from tidemq.errors import GroupNotFound, InvalidArgument, TideError, TopicNotFound
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Fields, FieldValue, Response
from tidemq.protocol.record import iter_records
from tidemq.protocol.routing import ClusterView

END_MS_MAX = 2**63 - 1


@final
class Admin:
    """Topic, group and message administration. Use it with ``async with``."""

    def __init__(self, *, brokers: Sequence[str] | None = None,
                 namesrv: str | Sequence[str] | None = None,
                 client_id: str | None = None, request_timeout_ms: int = 10_000,
                 connect_timeout_ms: int = 3_000) -> None:
        namesrv_addresses = parse_namesrv(namesrv)
        client_id = client_id or default_client_id("admin")
        self._pool = BrokerPool(check_brokers(brokers, namesrv_given=bool(namesrv_addresses)),
                                client_id=client_id, connect_timeout_ms=connect_timeout_ms,
                                request_timeout_ms=request_timeout_ms, down_for_ms=1)
        self._namesrv = NameServerRoutes(
            namesrv_addresses, self._pool, client_id=client_id,
            connect_timeout_ms=connect_timeout_ms,
            request_timeout_ms=request_timeout_ms) if namesrv_addresses else None
        self._owned = OwnedTaskGroup()

    async def __aenter__(self) -> Self:
        await self._owned.enter()
        self._pool.bind(self._owned)
        if self._namesrv is not None:
            self._namesrv.bind(self._owned)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._pool.close()
        if self._namesrv is not None:
            self._namesrv.close()
        await self._owned.close()

    async def _brokers(self) -> tuple[str, ...]:
        """Every broker to ask (from the name servers when there are any)."""
        if self._namesrv is not None:
            await self._namesrv.refresh_brokers()
        if not self._pool.addresses:
            raise InvalidArgument("the name servers know no broker")
        return self._pool.addresses

    # -- cluster ---------------------------------------------------------------------------
    async def cluster(self) -> ClusterInfo:
        """Every name server's status (unreachable ones included) and the broker groups,
        replicas and topics they hold. Needs ``namesrv=``."""
        if self._namesrv is None:
            raise InvalidArgument("cluster() needs name servers: pass namesrv='host:port'")
        namesrvs: list[NameServerInfo] = []
        view: ClusterView | None = None
        for address in self._namesrv.addresses:
            try:
                response = await self._namesrv.call_one(address, RequestCode.GET_CLUSTER_INFO,
                                                        {})
            except TideError as error:
                namesrvs.append(NameServerInfo(address, False, error=error.remark))
                continue
            status = _map(response.fields.get("namesrv"))
            writer = status.get("writer")
            namesrvs.append(NameServerInfo(
                address, True, str(status.get("mode", "")), str(status.get("role", "")),
                status.get("ready") is True, writer if isinstance(writer, str) else None,
                max(0, _int(status, "term")), max(0, _int(status, "brokers"))))
            if view is None and status.get("ready") is True and \
                    status.get("role") not in ("head", "middle"):
                view = ClusterView.from_fields(response.fields)
        if view is None:
            view = ClusterView({}, {})
        groups = tuple(BrokerGroupInfo(cluster, group, tuple(
            ReplicaInfo(r.address, r.role, r.epoch, r.topic_count, r.heartbeat_age_ms)
            for r in replicas)) for (cluster, group), replicas in view.groups.items())
        return ClusterInfo(tuple(namesrvs), groups, dict(view.topics))

    # -- topics --------------------------------------------------------------------------
    async def create_topic(self, name: str, queue_count: int = 4, permission: int = 6
                           ) -> TopicInfo:
        """Create the topic on every broker (an existing one is left as it is)."""
        for address in await self._brokers():
            await self._pool.call(address, RequestCode.CREATE_TOPIC, {
                "topic": name, "queue_count": queue_count, "permission": permission})
        return await self.describe_topic(name)

    async def update_topic(self, name: str, *, read_queue_count: int | None = None,
                           write_queue_count: int | None = None,
                           permission: int | None = None) -> TopicInfo:
        """Change queue counts or permission wherever the topic exists."""
        fields: dict[str, FieldValue] = {"topic": name}
        for key, value in (("read_queue_count", read_queue_count),
                           ("write_queue_count", write_queue_count),
                           ("permission", permission)):
            if value is not None:
                fields[key] = value
        await self._on_each(RequestCode.UPDATE_TOPIC, fields, missing=TopicNotFound)
        return await self.describe_topic(name)

    async def delete_topic(self, name: str) -> None:
        """Delete the topic's configuration (and groups' offsets of it) everywhere."""
        await self._on_each(RequestCode.DELETE_TOPIC, {"topic": name}, missing=TopicNotFound)

    async def describe_topic(self, name: str) -> TopicInfo:
        """The topic with every broker's queues. Raises TopicNotFound."""
        answers = await self._on_each(RequestCode.DESCRIBE_TOPIC, {"topic": name},
                                      missing=TopicNotFound)
        queues = [QueueInfo(address, _int(q, "queue_id"), _int(q, "min_offset"),
                            _int(q, "max_offset"))
                  for address, response in answers
                  for q in _maps(response.fields.get("queues"))]
        first = _map(answers[0][1].fields.get("topic"))
        return _topic_info(first, tuple(a for a, _ in answers), tuple(queues))

    async def list_topics(self, include_system: bool = False) -> list[TopicInfo]:
        """Every topic on any broker, by name (queue details left out)."""
        found: dict[str, tuple[Fields, list[str]]] = {}
        for address in await self._brokers():
            response = await self._pool.call(address, RequestCode.LIST_TOPICS,
                                             {"include_system": include_system})
            for topic in _maps(response.fields.get("topics")):
                entry = found.setdefault(str(topic.get("name")), (topic, []))
                entry[1].append(address)
        return [_topic_info(topic, tuple(brokers), ()) for _, (topic, brokers)
                in sorted(found.items())]

    # -- groups --------------------------------------------------------------------------
    async def list_groups(self) -> list[str]:
        names: set[str] = set()
        for address in await self._brokers():
            response = await self._pool.call(address, RequestCode.LIST_GROUPS, {})
            listed = response.fields.get("groups")
            if isinstance(listed, list):
                names.update(name for name in listed if isinstance(name, str))
        return sorted(names)

    async def describe_group(self, group: str) -> GroupInfo:
        """Members, committed offsets and lag on every broker. Raises GroupNotFound."""
        answers = await self._on_each(RequestCode.DESCRIBE_GROUP, {"group": group},
                                      missing=GroupNotFound)
        members: list[MemberInfo] = []
        offsets: list[GroupOffset] = []
        versions: dict[str, int] = {}
        mode = "clustering"
        for address, response in answers:
            fields = response.fields
            mode = str(fields.get("mode", mode))
            versions[address] = _int(fields, "version")
            for m in _maps(fields.get("members")):
                subscriptions = _map(m.get("subscriptions"))
                members.append(MemberInfo(
                    str(m.get("client_id")), {str(k): str(v) for k, v in subscriptions.items()},
                    _int(m, "idle_ms"), address))
            offsets.extend(GroupOffset(str(o.get("topic")), address, _int(o, "queue_id"),
                                       _int(o, "committed"), _int(o, "max_offset"),
                                       _int(o, "lag"))
                           for o in _maps(fields.get("offsets")))
        return GroupInfo(group, mode, tuple(members), tuple(offsets), versions)

    async def reset_offset(self, group: str, topic: str,
                           to: Literal["earliest", "latest"] | int) -> dict[MessageQueue, int]:
        """Move the group's committed offsets of ``topic`` on every broker that has it: to
        the oldest message, past the newest, or to the first stored at or after ``to`` (Unix
        ms). Running members notice the change at their next heartbeat. Returns the new
        offsets."""
        fields: dict[str, FieldValue] = {"group": group, "topic": topic}
        if isinstance(to, int) and not isinstance(to, bool):
            fields.update(to="timestamp", timestamp_ms=to)
        elif to in ("earliest", "latest"):
            fields["to"] = to
        else:
            raise InvalidArgument("to must be 'earliest', 'latest' or a timestamp in ms")
        answers = await self._on_each(RequestCode.RESET_OFFSET, fields, missing=TopicNotFound)
        offsets: dict[MessageQueue, int] = {}
        for address, response in answers:
            for queue_id, offset in _map(response.fields.get("offsets")).items():
                if isinstance(offset, int):
                    offsets[MessageQueue(topic, address, int(queue_id))] = offset
        return offsets

    # -- messages and queue offsets ------------------------------------------------------
    async def get_message(self, msg_id: str) -> Message:
        """The message an offset-based id names (``SendResult.msg_id``), as stored.

        Raises: InvalidArgument (not an id), OffsetMoved (no longer stored)."""
        try:
            decoded = decode_message_id(msg_id)
        except ValueError as error:
            raise InvalidArgument(str(error)) from None
        host = f"[{decoded.host}]" if ":" in decoded.host else decoded.host
        address = f"{host}:{decoded.port}"
        response = await self._pool.call(address, RequestCode.QUERY_MESSAGE_BY_ID,
                                         {"msg_id": msg_id})
        return _one(response, address)

    async def get_messages_by_key(self, topic: str, key: str, *, limit: int = 32,
                                  begin_ms: int = 0, end_ms: int = END_MS_MAX) -> list[Message]:
        """Messages of ``topic`` with the key (or unique id) ``key``, newest first."""
        fields: dict[str, FieldValue] = {"topic": topic, "key": key, "limit": limit,
                                         "begin_ms": begin_ms, "end_ms": end_ms}
        answers = await self._on_each(RequestCode.QUERY_MESSAGE_BY_KEY, fields,
                                      missing=TopicNotFound)
        messages = [message_from_record(record, address, present_origin=False)
                    for address, response in answers for record in iter_records(response.body)]
        messages.sort(key=lambda m: m.store_timestamp_ms, reverse=True)
        return messages[:limit]

    async def get_message_at(self, topic: str, queue_id: int, offset: int, *,
                             broker: str | None = None) -> Message:
        """The message at ``offset`` of a queue. Raises OffsetMoved when there is none."""
        address = await self._broker(broker)
        response = await self._pool.call(address, RequestCode.QUERY_BY_QUEUE_OFFSET, {
            "topic": topic, "queue_id": queue_id, "offset": offset})
        return _one(response, address)

    async def offset_for_time(self, topic: str, queue_id: int, timestamp_ms: int, *,
                              broker: str | None = None) -> int:
        """The first offset of the queue stored at or after ``timestamp_ms``."""
        return await self._offset(RequestCode.SEARCH_OFFSET_BY_TIME, broker, {
            "topic": topic, "queue_id": queue_id, "timestamp_ms": timestamp_ms})

    async def min_offset(self, topic: str, queue_id: int, *, broker: str | None = None) -> int:
        return await self._offset(RequestCode.GET_MIN_OFFSET, broker,
                                  {"topic": topic, "queue_id": queue_id})

    async def max_offset(self, topic: str, queue_id: int, *, broker: str | None = None) -> int:
        """One past the newest message of the queue (the offset the next one gets)."""
        return await self._offset(RequestCode.GET_MAX_OFFSET, broker,
                                  {"topic": topic, "queue_id": queue_id})

    # -- helpers -------------------------------------------------------------------------
    async def _offset(self, code: RequestCode, broker: str | None, fields: Fields) -> int:
        response = await self._pool.call(await self._broker(broker), code, fields)
        return _int(response.fields, "offset")

    async def _broker(self, broker: str | None) -> str:
        addresses = self._pool.addresses or await self._brokers()
        if broker is None:
            return addresses[0]
        if broker not in addresses and broker not in await self._brokers():
            raise InvalidArgument(f"broker {broker!r} is not one of {self._pool.addresses}")
        return broker

    async def _on_each(self, code: RequestCode, fields: Fields, *,
                       missing: type[TideError]) -> list[tuple[str, Response]]:
        """Send to every broker; the answers of those that have the subject. Raises the
        ``missing`` error when none has it, and any other error at once."""
        answers: list[tuple[str, Response]] = []
        last_missing: TideError | None = None
        for address in await self._brokers():
            try:
                answers.append((address, await self._pool.call(address, code, fields)))
            except missing as error:
                last_missing = error
        if not answers:
            assert last_missing is not None
            raise last_missing
        return answers


def _one(response: Response, broker: str) -> Message:
    for record in iter_records(response.body):
        return message_from_record(record, broker, present_origin=False)
    raise TideError("the broker answered a message query without a record")


def _topic_info(topic: Fields, brokers: tuple[str, ...], queues: tuple[QueueInfo, ...]
                ) -> TopicInfo:
    return TopicInfo(str(topic.get("name")), _int(topic, "read_queue_count"),
                     _int(topic, "write_queue_count"), _int(topic, "permission"), brokers,
                     queues)


def _int(fields: Fields, name: str) -> int:
    value = fields.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def _map(value: object) -> Fields:
    return value if isinstance(value, dict) else {}


def _maps(value: object) -> list[Fields]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
