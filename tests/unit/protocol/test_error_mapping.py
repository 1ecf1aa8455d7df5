"""Error responses <-> typed exceptions (tidemq.protocol.exceptions)."""

from __future__ import annotations

import pytest

import tidemq.errors
from tidemq.errors import (
    DiskFull,
    ErrorCode,
    InvalidArgument,
    MessageIllegal,
    ProtocolError,
    StoreError,
    TideError,
)
from tidemq.protocol.codes import ResponseCode, describe_response_code
from tidemq.protocol.events import Response
from tidemq.protocol.exceptions import (
    REMARK_LENGTH_MAX,
    RemoteError,
    RemoteProtocolError,
    error_response,
    exception_from_response,
    raise_for_response,
)


def error_classes() -> list[type[TideError]]:
    """Every TideError class that tidemq.errors defines."""
    return [
        value
        for value in vars(tidemq.errors).values()
        if isinstance(value, type) and issubclass(value, TideError)
    ]


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda code: code.name)
def test_every_error_code_maps_to_a_tide_error_with_that_code(code: ErrorCode) -> None:
    error = exception_from_response(Response(int(code), 3, remark="why"))
    assert isinstance(error, TideError)
    assert error.code is code
    assert error.remark == "why"
    if isinstance(error, RemoteError):  # a code without a class of its own
        assert error.remote_code == code
        assert error.retryable == code.retryable
    else:
        assert type(error).__module__ == "tidemq.errors"


@pytest.mark.parametrize(
    ("code", "expected_class"),
    [
        (ErrorCode.MESSAGE_ILLEGAL, MessageIllegal),
        (ErrorCode.INVALID_ARGUMENT, InvalidArgument),
        (ErrorCode.STORE_ERROR, StoreError),
        (ErrorCode.DISK_FULL, DiskFull),
        (ErrorCode.PROTOCOL_ERROR, ProtocolError),  # not our Local/Remote subclasses
        (ErrorCode.INTERNAL, TideError),
    ],
)
def test_codes_map_to_the_class_that_declares_them(
    code: ErrorCode, expected_class: type[TideError]
) -> None:
    assert type(exception_from_response(Response(int(code), 0, remark="x"))) is expected_class


@pytest.mark.parametrize("error_class", error_classes(), ids=lambda cls: cls.__name__)
def test_exception_survives_the_round_trip(error_class: type[TideError]) -> None:
    response = error_response(17, error_class("it broke"))
    assert response.opaque == 17
    assert response.code == error_class.code
    assert response.remark == "it broke"
    error = exception_from_response(response)
    assert isinstance(error, error_class)
    assert error.remark == "it broke"


def test_unknown_codes_become_remote_errors_that_keep_the_code() -> None:
    retryable = exception_from_response(Response(150, 0, {"hint": "later"}, remark="new"))
    assert isinstance(retryable, RemoteError)
    assert retryable.remote_code == 150
    assert retryable.code is ErrorCode.INTERNAL
    assert retryable.retryable
    assert retryable.fields == {"hint": "later"}
    misuse = exception_from_response(Response(250, 0))
    assert isinstance(misuse, RemoteError)
    assert not misuse.retryable
    assert misuse.remark == "UNKNOWN_ERROR_250"  # an empty remark is replaced by the name


def test_remote_error_forwards_its_code() -> None:
    original = exception_from_response(Response(777, 0, remark="from upstream"))
    forwarded = error_response(5, original)
    assert (forwarded.code, forwarded.remark) == (777, "from upstream")


def test_other_exceptions_become_internal_without_leaking_details() -> None:
    response = error_response(9, KeyError("/secret/path"))
    assert response.code == ErrorCode.INTERNAL
    assert response.remark == "internal error (KeyError)"
    assert "/secret/path" not in response.remark


def test_protocol_errors_report_protocol_error() -> None:
    response = error_response(0, RemoteProtocolError("bad header", opaque=4))
    assert response.code == ErrorCode.PROTOCOL_ERROR
    assert response.remark == "bad header"


def test_long_remarks_are_cut() -> None:
    response = error_response(0, InvalidArgument("x" * 5000))
    assert len(response.remark) == REMARK_LENGTH_MAX
    assert response.remark.endswith("...")


def test_success_is_not_an_error() -> None:
    success = Response(ResponseCode.SUCCESS, 1, {"a": 1})
    with pytest.raises(ValueError, match="SUCCESS"):
        exception_from_response(success)
    assert raise_for_response(success) is success
    with pytest.raises(InvalidArgument, match="bad offset"):
        raise_for_response(Response(int(ErrorCode.INVALID_ARGUMENT), 1, remark="bad offset"))


def test_response_codes_are_named() -> None:
    assert describe_response_code(0) == "SUCCESS"
    assert describe_response_code(201) == "TOPIC_NOT_EXIST"
    assert describe_response_code(4242) == "UNKNOWN_ERROR_4242"
