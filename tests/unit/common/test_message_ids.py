"""Offset-based message ids: host, port and commit offset round-trip through upper-case
hex, and anything else is a ValueError."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidemq.common.ids import (
    MessageId,
    decode_message_id,
    encode_message_id,
    encode_message_ids,
    host_bytes,
    message_id_prefix,
)


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
       st.integers(0, 65535), st.integers(0, 2**64 - 1))
def test_round_trip(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
                    offset: int) -> None:
    text = encode_message_id(address.packed, port, offset)
    assert text == text.upper()
    assert len(text) == (28 if address.version == 4 else 52)
    assert decode_message_id(text) == MessageId(str(address), port, offset)
    assert decode_message_id(text.lower()) == decode_message_id(text)


def test_known_value() -> None:
    text = encode_message_id(host_bytes("10.0.0.1"), 10911, 4096)
    assert text == "0A000001" "2A9F" "0000000000001000"
    assert decode_message_id(text) == MessageId("10.0.0.1", 10911, 4096)


@pytest.mark.parametrize("text", ["", "XYZ", "0A00000", "0A000001" * 5, "0A0000012A9F",
                                  "0A000001 2A9F0000000000001000"])
def test_not_message_ids(text: str) -> None:
    with pytest.raises(ValueError, match="not a message id"):
        decode_message_id(text)


@pytest.mark.parametrize(("host", "port", "offset"), [
    (b"\x01\x02\x03", 1, 1), (b"\x00" * 16, 65536, 0), (b"\x00" * 4, -1, 0),
    (b"\x00" * 4, 1, -1), (b"\x00" * 4, 1, 2**64)])
def test_encoding_refuses_what_it_cannot_carry(host: bytes, port: int, offset: int) -> None:
    with pytest.raises(ValueError):
        encode_message_id(host, port, offset)


def test_host_bytes() -> None:
    assert host_bytes("127.0.0.1") == b"\x7f\x00\x00\x01"
    assert len(host_bytes("::1")) == 16
    with pytest.raises(ValueError):
        host_bytes("localhost")


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(0, 65535),
       st.lists(st.integers(0, 2**64 - 1), max_size=8))
def test_ids_from_a_prefix_are_the_ids_of_each_offset(
        address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
        offsets: list[int]) -> None:
    prefix = message_id_prefix(address.packed, port)
    assert encode_message_ids(prefix, offsets) == \
        [encode_message_id(address.packed, port, offset) for offset in offsets]


@pytest.mark.parametrize("offsets", [[-1], [2**64], [0, 2**64]])
def test_ids_from_a_prefix_refuse_offsets_out_of_range(offsets: list[int]) -> None:
    with pytest.raises(ValueError):
        encode_message_ids(message_id_prefix(b"\x7f\x00\x00\x01", 1), offsets)


@given(st.one_of(st.text(alphabet="0123456789ABCDEFabcdef", max_size=40), st.text(max_size=8)),
       st.lists(st.integers(0, 2**64 - 1), max_size=40))
def test_ids_made_in_bulk_are_the_ids_made_one_by_one(prefix: str, offsets: list[int]) -> None:
    assert encode_message_ids(prefix, offsets) == [f"{prefix}{offset:016X}" for offset in offsets]


@pytest.mark.parametrize("offsets", [[0, 1.5], [0, "7"]])
def test_ids_from_a_prefix_refuse_offsets_that_are_not_integers(offsets: list[object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        encode_message_ids(message_id_prefix(b"\x7f\x00\x00\x01", 1), offsets)  # type: ignore[arg-type]
