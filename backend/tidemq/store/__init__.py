"""The storage engine (DESIGN.md section 3): synchronous, no network, no trio.

``MessageStore`` is the facade the broker uses; the modules behind it are the commit log,
consume queues, key index, checkpoint, recovery, reading and retention.
"""

from tidemq.store.message_store import FlushPlan as FlushPlan
from tidemq.store.message_store import MessageStore as MessageStore
from tidemq.store.message_store import check_topic_name as check_topic_name
from tidemq.store.recovery import Dropped as Dropped
from tidemq.store.recovery import RecoveryReport as RecoveryReport
from tidemq.store.results import GetResult as GetResult
from tidemq.store.results import GetStatus as GetStatus
from tidemq.store.results import PutResult as PutResult
from tidemq.store.results import RetentionReport as RetentionReport
from tidemq.store.results import StoreStats as StoreStats
