"""The error tree: every error TideMQ raises on purpose carries a stable ``ErrorCode``.

Codes come in ranges, so a caller can react to a class of failure without knowing each code:

* 1xx  retryable failures (the same request may succeed later or elsewhere)
* 2xx  client misuse (the request itself is wrong; retrying it unchanged will fail again)
* 3xx  storage and internal failures of the node
* 4xx  protocol violations

The wire carries the integer code and a human remark; the client turns them back into the
same exception classes. Add a subclass only where a caller would react differently.
"""

from __future__ import annotations

import enum
import re


class ErrorCode(enum.IntEnum):
    # 1xx: retryable
    SYSTEM_BUSY = 100
    FLUSH_TIMEOUT = 101
    REPLICA_TIMEOUT = 102
    NOT_LEADER = 103
    SERVICE_UNAVAILABLE = 104
    # 2xx: client misuse
    MESSAGE_ILLEGAL = 200
    TOPIC_NOT_EXIST = 201
    NO_PERMISSION = 202
    OFFSET_MOVED = 203
    GROUP_NOT_EXIST = 204
    INVALID_ARGUMENT = 205
    # 3xx: storage / internal
    STORE_ERROR = 300
    DISK_FULL = 301
    STORE_CORRUPT = 302
    STORE_CLOSED = 303
    CONFIG_INVALID = 304
    INTERNAL = 399
    # 4xx: protocol
    PROTOCOL_ERROR = 400

    @property
    def retryable(self) -> bool:
        return 100 <= self.value < 200


class TideError(Exception):
    """Base of every error TideMQ raises on purpose. ``code`` is stable across versions."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, remark: str) -> None:
        super().__init__(remark)
        self.remark = remark


class MessageIllegal(TideError):
    """The message breaks a rule: too large, bad topic name, bad properties."""

    code = ErrorCode.MESSAGE_ILLEGAL


class TopicNotFound(TideError):
    """The topic does not exist (and auto-creation is off)."""

    code = ErrorCode.TOPIC_NOT_EXIST


class GroupNotFound(TideError):
    """The consumer group is unknown to the broker."""

    code = ErrorCode.GROUP_NOT_EXIST


class NoPermission(TideError):
    """The topic (or the broker) does not allow this operation."""

    code = ErrorCode.NO_PERMISSION


class OffsetMoved(TideError):
    """The requested offset is no longer (or not yet) stored; the remark says where to go."""

    code = ErrorCode.OFFSET_MOVED


class InvalidArgument(TideError):
    """An argument is out of its valid range (a negative offset, an unknown queue)."""

    code = ErrorCode.INVALID_ARGUMENT


class ConfigError(TideError):
    """A configuration file or override is wrong. The remark names the key and the file."""

    code = ErrorCode.CONFIG_INVALID


class StoreError(TideError):
    """The storage engine could not do what was asked."""

    code = ErrorCode.STORE_ERROR


class DiskFull(StoreError):
    """No space left (or the file-size limit was hit). Nothing stored was damaged; appends
    resume once space returns."""

    code = ErrorCode.DISK_FULL


class StoreCorrupt(StoreError):
    """Bytes on disk failed validation (magic, size or CRC) where they must be valid."""

    code = ErrorCode.STORE_CORRUPT


class StoreClosed(StoreError):
    """The store was closed (or failed) and accepts no more requests."""

    code = ErrorCode.STORE_CLOSED


class SystemBusy(TideError):
    """Back-pressure: the node has too much in flight; retry after a short pause."""

    code = ErrorCode.SYSTEM_BUSY


class FlushTimeout(TideError):
    """The record was written but its fsync did not finish in time: it may or may not
    survive a power cut (it does survive a process kill)."""

    code = ErrorCode.FLUSH_TIMEOUT


class ReplicaTimeout(TideError):
    """The write was applied where it was sent but not copied to enough replicas in time."""

    code = ErrorCode.REPLICA_TIMEOUT


class NotLeader(TideError):
    """This node does not take this request; ``leader`` (when known) is the one that does.

    The address travels at the end of the remark as ``(leader host:port)``, so the wire
    needs no extra field and every client version can read it.
    """

    code = ErrorCode.NOT_LEADER

    def __init__(self, remark: str, leader: str | None = None) -> None:
        if leader is None:
            match = _LEADER_SUFFIX.search(remark)
            leader = match.group(1) if match else None
        elif not remark.endswith(f"(leader {leader})"):
            remark = f"{remark} (leader {leader})"
        super().__init__(remark)
        self.leader = leader


_LEADER_SUFFIX = re.compile(r"\(leader ([^\s()]+)\)$")


class ProtocolError(TideError):
    """Bytes on the wire (or a record) do not follow the format."""

    code = ErrorCode.PROTOCOL_ERROR
