"""Protocol errors, and the mapping between error responses and typed exceptions.

Who broke the rules decides the class (as in h11):

* ``RemoteProtocolError``: the peer sent bytes that break the format or the connection's
  rules. The connection is now out of sync and moves to its ERROR state; the shell answers
  with a PROTOCOL_ERROR response if it can (to ``opaque`` when the frame's id was readable)
  and closes. ``FrameTooLarge`` is the case of a length prefix over the limit.
* ``LocalProtocolError``: this process asked to send something that breaks the rules
  (a non-HELLO first request, an unencodable field, a frame over the limit). Nothing was
  emitted, so the connection's state is unchanged.
* ``ConnectionBroken``: the connection is in its ERROR state and refuses every call; its
  ``__cause__`` is the error that broke it.

All three are ``tidemq.errors.ProtocolError`` (code PROTOCOL_ERROR).

Error responses and exceptions convert both ways, so a handler can raise
``TopicNotExist("...")`` on the server and the client raises the same class:

    exception  --error_response(opaque, exc)-->  Response(code, opaque, remark)
    Response   --exception_from_response(r)--->  the TideError subclass for code

The mapping follows the classes in ``tidemq.errors``: for each ``ErrorCode`` it picks the most
general class there that declares it, and builds it from the remark alone (so those classes
must accept ``cls(remark)``; a test holds every code to that). A code with no class of its
own, or one this version does not know (a newer peer), becomes a ``RemoteError`` carrying
the code and the response's fields.
"""

from __future__ import annotations

import collections
from typing import Final

import tidemq.errors
from tidemq.errors import ErrorCode, ProtocolError, TideError
from tidemq.protocol.codes import ResponseCode, describe_response_code
from tidemq.protocol.events import Fields, Response

REMARK_LENGTH_MAX: Final = 1024
"""Remarks made from exceptions are cut to this many characters."""


class LocalProtocolError(ProtocolError):
    """This side tried to break the protocol. Nothing was sent; the connection is unchanged."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. The connection is in its ERROR state.

    ``opaque`` is the id of the offending frame when its header was readable, so the error
    response can go to the request that caused it; ``None`` otherwise.
    """

    def __init__(self, remark: str, *, opaque: int | None = None) -> None:
        super().__init__(remark)
        self.opaque = opaque


class FrameTooLarge(RemoteProtocolError):
    """A length prefix announced a frame over the limit. Raised as soon as the prefix is read,
    before any of the frame is buffered."""

    def __init__(self, size_bytes: int, max_size_bytes: int) -> None:
        super().__init__(f"frame of {size_bytes} bytes is over the limit of {max_size_bytes}")
        self.size_bytes = size_bytes
        self.max_size_bytes = max_size_bytes


class ConnectionBroken(ProtocolError):
    """The connection already failed (see ``__cause__``) and accepts no more calls."""


class RemoteError(TideError):
    """The peer answered with an error code that has no exception class here.

    ``remote_code`` is the code as received. ``code`` is the matching ``ErrorCode`` when this
    version knows it, INTERNAL otherwise. ``retryable`` follows the code's range, so a client
    can still react sensibly to a code added by a newer broker. ``fields`` are the error
    response's fields (a NOT_LEADER answer carries the leader's address there).
    """

    def __init__(self, remark: str, *, remote_code: int, fields: Fields | None = None) -> None:
        super().__init__(remark)
        self.remote_code = remote_code
        self.code = _known_error_code(remote_code) or ErrorCode.INTERNAL
        self.fields: Fields = {} if fields is None else fields

    @property
    def retryable(self) -> bool:
        return 100 <= self.remote_code < 200


def error_response(opaque: int, error: BaseException) -> Response:
    """The error response that reports ``error`` to the request ``opaque``.

    A ``TideError`` keeps its code and remark (a ``RemoteError`` forwards the code it carries).
    Anything else is a bug in this process: it becomes INTERNAL, and the remark names only the
    exception's type, so internals (paths, values) do not leak to clients; log the error
    itself on this side.
    """
    if isinstance(error, RemoteError):
        code, remark = error.remote_code, error.remark
    elif isinstance(error, TideError):
        code, remark = int(error.code), error.remark
    else:
        code, remark = int(ErrorCode.INTERNAL), f"internal error ({type(error).__name__})"
    return Response(code, opaque, {}, b"", _shorten(remark))


def exception_from_response(response: Response) -> TideError:
    """The typed exception for an error response (see the module docstring for the mapping).

    Raises:
        ValueError: ``response`` is a SUCCESS response (a caller bug).
    """
    if response.code == ResponseCode.SUCCESS:
        raise ValueError("a SUCCESS response is not an error")
    remark = response.remark or describe_response_code(response.code)
    known = _known_error_code(response.code)
    error_class = _ERROR_CLASS_BY_CODE.get(known) if known is not None else None
    if error_class is not None:
        return error_class(remark)
    return RemoteError(remark, remote_code=response.code, fields=response.fields)


def raise_for_response(response: Response) -> Response:
    """Return ``response`` if it is a SUCCESS; raise its typed exception otherwise."""
    if response.code != ResponseCode.SUCCESS:
        raise exception_from_response(response)
    return response


def _known_error_code(code: int) -> ErrorCode | None:
    try:
        return ErrorCode(code)
    except ValueError:
        return None


def _shorten(remark: str) -> str:
    if len(remark) <= REMARK_LENGTH_MAX:
        return remark
    return remark[: REMARK_LENGTH_MAX - 3] + "..."


def _error_classes_by_code() -> dict[ErrorCode, type[TideError]]:
    # Breadth first from TideError, so the most general class declaring a code wins; only the
    # classes of tidemq.errors count (this module's own subclasses reuse PROTOCOL_ERROR).
    found: dict[ErrorCode, type[TideError]] = {}
    queue: collections.deque[type[TideError]] = collections.deque([TideError])
    while queue:
        error_class = queue.popleft()
        if error_class.__module__ == tidemq.errors.__name__:
            found.setdefault(error_class.code, error_class)
        queue.extend(error_class.__subclasses__())
    return found


_ERROR_CLASS_BY_CODE: Final = _error_classes_by_code()
