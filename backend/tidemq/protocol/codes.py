"""Request and response codes: the numbers in a frame header's ``code`` key.

A request's code says what is asked; a response's code says how it went. The two spaces are
separate (the header's response flag says which one a frame uses), so request 201 and
response 201 are unrelated.

Request codes are grouped by area in ranges of a hundred, leaving room for later codes in
each area::

    1..99      session          HELLO, HEARTBEAT, UNREGISTER_CLIENT
    100..199   messages         SEND_MESSAGE, SEND_BATCH, PULL_MESSAGE, SEND_BACK
    200..299   topic admin      CREATE_TOPIC .. LIST_TOPICS
    300..399   message queries  QUERY_MESSAGE_BY_ID .. GET_MAX_OFFSET
    400..499   consumer groups  COMMIT_OFFSET .. DESCRIBE_GROUP, LOCK_QUEUES, UNLOCK_QUEUES
    500..599   name server      GET_ROUTE .. GET_CLUSTER_INFO, NAMESRV_STATUS, and
                                REPLICATE_* between name servers

A code, once given out, never changes meaning; a retired code is never reused.

Response codes are ``ResponseCode.SUCCESS`` (0) or an error code: every
``tidemq.errors.ErrorCode`` value is a valid error response code, and the error's class
follows from its range (1xx retryable, 2xx client misuse, 3xx internal, 4xx protocol). The
response code space is deliberately open: a peer running a newer version may answer with an
error code this version does not know, which the client maps to
``tidemq.protocol.exceptions.RemoteError`` instead of failing to decode the frame.
"""

from __future__ import annotations

import enum
from typing import Final

from tidemq.errors import ErrorCode

PROTOCOL_VERSION: Final = 1
"""The version a client announces in HELLO. A server refuses versions it does not support."""

SUPPORTED_PROTOCOL_VERSIONS: Final = frozenset({PROTOCOL_VERSION})

CODE_MAX: Final = 0xFFFF
"""Codes, request or response, fit in 16 bits; anything larger is a malformed header."""


class RequestCode(enum.IntEnum):
    """What a request asks for. See the module docstring for the ranges."""

    # 1..99: session
    HELLO = 1
    HEARTBEAT = 2
    UNREGISTER_CLIENT = 3
    # 100..199: messages
    SEND_MESSAGE = 100
    SEND_BATCH = 101
    PULL_MESSAGE = 102
    SEND_BACK = 103
    # 200..299: topic administration
    CREATE_TOPIC = 200
    UPDATE_TOPIC = 201
    DELETE_TOPIC = 202
    DESCRIBE_TOPIC = 203
    LIST_TOPICS = 204
    # 300..399: message queries
    QUERY_MESSAGE_BY_ID = 300
    QUERY_MESSAGE_BY_KEY = 301
    QUERY_BY_QUEUE_OFFSET = 302
    SEARCH_OFFSET_BY_TIME = 303
    GET_MIN_OFFSET = 304
    GET_MAX_OFFSET = 305
    # 400..499: consumer groups and their offsets
    COMMIT_OFFSET = 400
    QUERY_OFFSET = 401
    RESET_OFFSET = 402
    LIST_GROUPS = 403
    DESCRIBE_GROUP = 404
    LOCK_QUEUES = 405
    UNLOCK_QUEUES = 406
    # 500..599: name server
    GET_ROUTE = 500
    REGISTER_BROKER = 501
    UNREGISTER_BROKER = 502
    GET_CLUSTER_INFO = 503
    NAMESRV_STATUS = 504
    REPLICATE_WRITE = 505
    REPLICATE_SNAPSHOT = 506


class ResponseCode(enum.IntEnum):
    """The one non-error response code. Error responses carry an ``ErrorCode`` value."""

    SUCCESS = 0


def describe_response_code(code: int) -> str:
    """Name a response code for logs and remarks: ``SUCCESS``, ``TOPIC_NOT_EXIST``, or
    ``UNKNOWN_ERROR_<n>`` for a code this version does not know."""
    if code == ResponseCode.SUCCESS:
        return ResponseCode.SUCCESS.name
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNKNOWN_ERROR_{code}"


def _check_code_spaces() -> None:
    # Assert, at import, the invariants the module docstring promises: no ErrorCode collides
    # with SUCCESS, and every code fits in a header's 16-bit code.
    assert all(code.value != ResponseCode.SUCCESS for code in ErrorCode)
    assert all(0 < code.value <= CODE_MAX for code in ErrorCode)
    assert all(0 < code.value <= CODE_MAX for code in RequestCode)


_check_code_spaces()
