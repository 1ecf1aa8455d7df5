"""The TideMQ client SDK: ``Producer``, ``Consumer``, ``Admin``.

Written on anyio's API, so the same classes serve Trio (natively) and asyncio
applications. Each client object is an async context manager that owns one task group (its
connections and background tasks live there and end with the ``async with``)::

    async with Producer(brokers=["127.0.0.1:10911"]) as producer:
        result = await producer.send("orders", b"body", key="k1", tag="created")
        pending = await producer.submit("orders", b"next")  # no task per message
        result = await pending

    async with Consumer("billing", {"orders": "created || paid"},
                        brokers=["127.0.0.1:10911"], start_from="earliest") as consumer:
        async for message in consumer:
            async with message.process():      # ack on success, nack on error
                ...

Modules, by role: ``_producer`` (sends, queue choice, retries), ``_consumer`` (the consumer
API) over ``_rebalance`` (membership and allocation), ``_core`` (settling, commits),
``_queue_worker`` (long polling per queue) and ``_tracker`` (offsets in flight);
``_admin``; ``_pool`` (connections) and ``_routes`` (topic routes) under all of them.
This module only re-exports.
"""

from tidemq.client._admin import Admin as Admin
from tidemq.client._admin_types import BrokerGroupInfo as BrokerGroupInfo
from tidemq.client._admin_types import ClusterInfo as ClusterInfo
from tidemq.client._admin_types import GroupInfo as GroupInfo
from tidemq.client._admin_types import GroupOffset as GroupOffset
from tidemq.client._admin_types import MemberInfo as MemberInfo
from tidemq.client._admin_types import NameServerInfo as NameServerInfo
from tidemq.client._admin_types import QueueInfo as QueueInfo
from tidemq.client._admin_types import ReplicaInfo as ReplicaInfo
from tidemq.client._admin_types import TopicInfo as TopicInfo
from tidemq.client._allocation import allocate_average as allocate_average
from tidemq.client._consumer import Consumer as Consumer
from tidemq.client._consumer import ConsumerClosed as ConsumerClosed
from tidemq.client._core import ConsumerStatistics as ConsumerStatistics
from tidemq.client._message import Message as Message
from tidemq.client._message import SendResult as SendResult
from tidemq.client._pending import PendingSend as PendingSend
from tidemq.client._producer import Producer as Producer
from tidemq.client._routes import MessageQueue as MessageQueue
from tidemq.client._settings import Mode as Mode
from tidemq.client._settings import StartFrom as StartFrom
