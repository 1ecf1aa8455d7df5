"""``KeyReader`` gives exactly the keys a full decode gives, shapes learnt or not."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidemq.errors import ProtocolError
from tidemq.protocol.record import (
    KEY_SEPARATOR,
    PROPERTY_KEYS,
    PROPERTY_UNIQUE_ID,
    decode_properties,
)
from tidemq.store.index import key_hash, key_hash_seed
from tidemq.store.record_keys import KeyReader


def keys_by_full_decode(block: bytes) -> list[bytes]:
    properties = decode_properties(block)
    keys = [key.encode() for key in properties.get(PROPERTY_KEYS, "").split(KEY_SEPARATOR)
            if key]
    unique_id = properties.get(PROPERTY_UNIQUE_ID)
    return [*keys, unique_id.encode()] if unique_id else keys


def read(reader: KeyReader, block: bytes, padding: int = 3) -> list[bytes]:
    """Read ``block`` placed inside a larger buffer, as in a batch."""
    buffer = bytes(range(padding)) + block + b"\xc1"
    return reader.read(memoryview(buffer), padding, len(block))


def template_block(unique_id: bytes, extra: dict[str, str] | None = None) -> bytes:
    """Properties as the SDK's draft templates lay them out: the unique id last."""
    block: bytes = msgpack.packb({**(extra or {}), PROPERTY_UNIQUE_ID: unique_id.decode()},
                                 use_bin_type=True)
    return block


def test_a_learnt_shape_reads_the_next_ids_and_user_keys() -> None:
    reader = KeyReader()
    extra = {"TAGS": "t", PROPERTY_KEYS: "a  b"}
    first = template_block(b"0" * 32, extra)
    assert read(reader, first) == [b"a", b"b", b"0" * 32]
    second = template_block(b"F" * 31 + b"1", extra)
    assert read(reader, second) == [b"a", b"b", b"F" * 31 + b"1"]


def test_a_same_length_block_with_other_properties_is_decoded() -> None:
    reader = KeyReader()
    read(reader, template_block(b"0" * 32, {PROPERTY_KEYS: "aa"}))
    other = template_block(b"1" * 32, {PROPERTY_KEYS: "bb"})
    assert read(reader, other) == [b"bb", b"1" * 32]


def test_a_non_ascii_id_of_a_learnt_shape_is_decoded_and_checked() -> None:
    reader = KeyReader()
    read(reader, template_block(b"0" * 32))
    utf8 = "é" * 16  # 32 bytes, not ASCII
    assert read(reader, template_block(utf8.encode())) == [utf8.encode()]
    invalid = template_block(b"0" * 32)[:-32] + b"\xff" * 32  # not UTF-8 at all
    with pytest.raises(ProtocolError):
        read(reader, invalid)


def test_a_non_canonical_block_is_never_learnt() -> None:
    """str16 where str8 would do: a later block with the same prefix must still be
    decoded (the reader cannot know the token layout of a block it did not learn)."""
    reader = KeyReader()
    key = msgpack.packb(PROPERTY_UNIQUE_ID, use_bin_type=True)
    block = b"\x81" + key + b"\xda\x00\x20" + b"0" * 32
    assert read(reader, block) == [b"0" * 32]
    assert reader._shapes == {}


ids = st.binary(min_size=0, max_size=40)
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
property_maps = st.dictionaries(st.sampled_from([PROPERTY_KEYS, "TAGS", "x", "é"]), texts,
                                max_size=3)


@given(property_maps, st.lists(ids, min_size=1, max_size=6), st.booleans())
def test_reading_equals_a_full_decode(extra: dict[str, str], unique_ids: list[bytes],
                                      shuffle_id_first: bool) -> None:
    reader = KeyReader()
    for unique_id in unique_ids:
        try:
            text = unique_id.decode()
        except UnicodeDecodeError:
            block = template_block(b"0" * 32, extra)[:-32] + unique_id[:32].ljust(32, b"\xff")
        else:
            properties = {**extra, PROPERTY_UNIQUE_ID: text}
            if shuffle_id_first:
                properties = {PROPERTY_UNIQUE_ID: text, **extra}
            block = bytes(msgpack.packb(properties, use_bin_type=True))
        try:
            expected = keys_by_full_decode(block)
        except ProtocolError:
            with pytest.raises(ProtocolError):
                read(reader, block)
        else:
            assert read(reader, block) == expected


@given(st.lists(st.tuples(property_maps, ids), min_size=1, max_size=8))
def test_a_batch_reads_as_its_records_do(records: list[tuple[dict[str, str], bytes]]) -> None:
    """``read_batch`` (its fast path inlined) gives what ``read`` gives, hashed."""
    blocks: list[bytes] = []
    for extra, unique_id in records:
        try:
            blocks.append(template_block(unique_id.ljust(32, b"0")[:32], extra))
        except UnicodeDecodeError:
            blocks.append(template_block(b"1" * 32, extra)[:-32] + unique_id[:32].ljust(32))
    buffer = b"".join(blocks)
    places: list[tuple[int, int, int]] = []
    start = 0
    for number, block in enumerate(blocks):
        places.append((number, start, len(block)))
        start += len(block)
    seed = key_hash_seed(b"T#")
    one_by_one = KeyReader()
    try:
        expected = [(number, key_hash(f"T#{key.decode()}"))
                    for number, start, length in places
                    for key in one_by_one.read(memoryview(buffer), start, length)]
    except ProtocolError:
        with pytest.raises(ProtocolError):
            KeyReader().read_batch(buffer, places, seed)
        return
    reader = KeyReader()
    assert reader.read_batch(buffer, places, seed) == expected
    assert reader.read_batch(buffer, places, seed) == expected  # shapes learnt


def test_a_batch_with_a_same_length_block_of_other_keys() -> None:
    """TAGS and KEYS have the same length: the learnt id-only shape must not be applied
    to a block that carries user keys."""
    reader = KeyReader()
    first = template_block(b"0" * 32, {"TAGS": "abcd"})
    second = template_block(b"1" * 32, {PROPERTY_KEYS: "abcd"})
    assert len(first) == len(second)
    buffer = first + second
    places = [(0, 0, len(first)), (1, len(first), len(second))]
    seed = key_hash_seed(b"T#")
    assert reader.read_batch(buffer, places, seed) == [
        (0, key_hash("T#" + "0" * 32)), (1, key_hash("T#abcd")), (1, key_hash("T#" + "1" * 32))]
