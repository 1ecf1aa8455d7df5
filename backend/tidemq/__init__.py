"""TideMQ: a distributed message queue in the RocketMQ family, on Trio.

This module is the curated public surface: it re-exports, it defines nothing.
"""

from tidemq._version import __version__ as __version__
from tidemq.client import Admin as Admin
from tidemq.client import Consumer as Consumer
from tidemq.client import ConsumerClosed as ConsumerClosed
from tidemq.client import GroupInfo as GroupInfo
from tidemq.client import Message as Message
from tidemq.client import MessageQueue as MessageQueue
from tidemq.client import PendingSend as PendingSend
from tidemq.client import Producer as Producer
from tidemq.client import SendResult as SendResult
from tidemq.client import TopicInfo as TopicInfo
from tidemq.errors import DiskFull as DiskFull
from tidemq.errors import ErrorCode as ErrorCode
from tidemq.errors import FlushTimeout as FlushTimeout
from tidemq.errors import GroupNotFound as GroupNotFound
from tidemq.errors import InvalidArgument as InvalidArgument
from tidemq.errors import MessageIllegal as MessageIllegal
from tidemq.errors import NoPermission as NoPermission
from tidemq.errors import NotLeader as NotLeader
from tidemq.errors import OffsetMoved as OffsetMoved
from tidemq.errors import ReplicaTimeout as ReplicaTimeout
from tidemq.errors import SystemBusy as SystemBusy
from tidemq.errors import TideError as TideError
from tidemq.errors import TopicNotFound as TopicNotFound
from tidemq.net import ConnectionClosed as ConnectionClosed
from tidemq.net import RequestTimeout as RequestTimeout
