"""Errors of the network shell: what happened to a connection or a request in flight.

Both are "maybe delivered" outcomes: the request may or may not have reached the peer and
been carried out, so only an idempotent request may be retried blindly. Both are retryable
(code SERVICE_UNAVAILABLE, range 1xx): another attempt, perhaps on another connection, may
succeed. Neither ever travels on the wire.
"""

from __future__ import annotations

from tidemq.errors import ErrorCode, TideError


class ConnectionClosed(TideError):
    """The connection closed (by either side, or lost) before the request was answered, or
    the request was made on a connection that had already closed. ``__cause__`` tells why
    when there is more to say (a protocol error, a broken socket)."""

    code = ErrorCode.SERVICE_UNAVAILABLE


class RequestTimeout(TideError):
    """No response arrived within the request's timeout. The waiter is gone: a late
    response is dropped."""

    code = ErrorCode.SERVICE_UNAVAILABLE
