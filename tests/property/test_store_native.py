"""The store's C accelerator (``store/_records.c``) does exactly what its Python reference
does: same verdict on every batch, same bytes written, same offsets, entries and keys.

The extension is built by ``pip install`` wherever a C compiler is (CI installs one); the
first test fails when it was not built, so a machine silently running the slow path is
noticed rather than skipped.
"""

from __future__ import annotations

import importlib
import os
import struct
import tempfile
from types import ModuleType

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidemq.common.clock import ManualClock
from tidemq.config import StoreConfig
from tidemq.errors import MessageIllegal
from tidemq.protocol.record import FLAG_INDEXED, DraftTemplate, encode_draft, pack_host
from tidemq.store import MessageStore
from tidemq.store import commit_log as commit_log_module
from tidemq.store import index as index_module
from tidemq.store import record_keys as record_keys_module
from tidemq.store.index import key_hash_seed
from tidemq.store.packed_batch import stamp_packed_python, validate_packed_python
from tidemq.store.record_keys import KeyReader

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
topics = st.sampled_from(["T", "orders", "a" * 127])
ids = st.text("0123456789ABCDEF", min_size=32, max_size=32)


def native() -> ModuleType:
    return importlib.import_module("tidemq.store._records")


def test_the_accelerator_is_built() -> None:
    module = native()
    assert module.crc32c(b"123456789") == 0xE3069283  # the CRC32C check value


@given(st.binary(max_size=3000), u32)
def test_crc32c_is_the_packages(data: bytes, start: int) -> None:
    assert native().crc32c(data, start) == crc32c.crc32c(data, start)


@st.composite
def batches(draw: st.DrawFn) -> tuple[str, bytes]:
    """A topic and drafts of it back to back: plain, tagged, keyed and SDK-template ones."""
    topic = draw(topics)
    drafts = []
    for _ in range(draw(st.integers(1, 6))):
        body = draw(st.binary(max_size=300))
        kind = draw(st.sampled_from(["plain", "keyed", "template"]))
        if kind == "plain":
            drafts.append(encode_draft(topic, body, tag=draw(st.none() | st.just("tag"))))
        elif kind == "keyed":
            drafts.append(encode_draft(topic, body, {"KEYS": "k1 k2", "UNIQ_KEY": draw(ids)},
                                       flags=FLAG_INDEXED))
        else:
            drafts.append(DraftTemplate(topic).encode(body, draw(ids), draw(u64)))
    return topic, b"".join(drafts)


def python_verdict(topic: bytes, records: bytes, limit: int) -> object:
    try:
        return validate_packed_python(topic, records, limit)
    except MessageIllegal:
        return None


@settings(max_examples=300, deadline=None)
@given(batches(), st.data())
def test_validation_agrees_on_good_and_damaged_batches(batch: tuple[str, bytes],
                                                       data: st.DataObject) -> None:
    topic, records = batch
    damage = data.draw(st.sampled_from(["none", "byte", "cut", "limit", "topic"]))
    limit = 16 * 1024
    if damage == "byte":
        position = data.draw(st.integers(0, len(records) - 1))
        records = records[:position] + bytes([records[position] ^ data.draw(
            st.integers(1, 255))]) + records[position + 1:]
    elif damage == "cut":
        records = records[:data.draw(st.integers(0, len(records) - 1))]
    elif damage == "limit":
        limit = data.draw(st.integers(0, 600))
    elif damage == "topic":
        topic = topic + "x"
    expected = python_verdict(topic.encode(), records, limit)
    assert native().validate_packed(records, topic.encode(), limit) == expected
    if damage == "none":
        assert expected is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.integers(0, 64), u32, u32, u64, u64, u64, st.integers(0, 65535))
def test_stamping_writes_the_same_bytes(batch: tuple[str, bytes], padding: int, queue_id: int,
                                        epoch: int, queue_offset: int, base: int, now_ms: int,
                                        port: int) -> None:
    topic, records = batch
    count, _ = validate_packed_python(topic.encode(), records, 16 * 1024)
    queue_offset %= 2**63
    base %= 2**63
    host = pack_host("10.1.2.3")
    results = []
    for stamp in (stamp_packed_python, native().stamp_packed):
        target = bytearray(b"\xee" * padding + records + b"\xdd" * 7)
        offsets, entries = stamp(target, padding, len(records), count, queue_id, epoch,
                                 queue_offset, base, now_ms, host, port)
        results.append((bytes(target), offsets, entries))
    assert results[0] == results[1]
    assert results[0][1][0] == base + padding


def test_stamping_refuses_records_that_do_not_fill_the_range() -> None:
    records = encode_draft("T", b"body") * 2
    for stamp in (stamp_packed_python, native().stamp_packed):
        for count, length in ((1, len(records)), (3, len(records)), (2, len(records) - 1)):
            with pytest.raises(ValueError, match="do not fill"):
                stamp(bytearray(records), 0, length, count, 0, 0, 0, 0, 0, bytes(16), 0)


def read_keys(monkeypatch: pytest.MonkeyPatch, *, accelerated: bool, topic: str,
              records: bytes, rounds: int = 2) -> list[list[tuple[int, int]]]:
    """The keys of ``records`` read ``rounds`` times by one reader (the first round learns
    the shapes, later ones use them)."""
    monkeypatch.setattr(record_keys_module, "NATIVE", native() if accelerated else None)
    _count, indexed = validate_packed_python(topic.encode(), records, 16 * 1024)
    reader = KeyReader()
    seed = key_hash_seed(topic.encode() + b"#")
    return [reader.read_batch(records, indexed, seed) for _ in range(rounds)]


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(batches())
def test_key_hashes_are_those_of_the_python_reader(monkeypatch: pytest.MonkeyPatch,
                                                   batch: tuple[str, bytes]) -> None:
    topic, records = batch
    expected = read_keys(monkeypatch, accelerated=False, topic=topic, records=records)
    assert read_keys(monkeypatch, accelerated=True, topic=topic, records=records) == expected


def test_key_hashes_read_learnt_shapes_in_c_and_leave_the_rest_to_python() -> None:
    template = DraftTemplate("T", {"KEYS": "a b"})
    records = b"".join(template.encode(b"x", f"{n:032X}", 0) for n in range(3))
    _count, indexed = validate_packed_python(b"T", records, 16 * 1024)
    seed = key_hash_seed(b"T#")
    reader = KeyReader()
    assert native().key_hashes(records, indexed, {}, seed) is None  # nothing learnt yet
    keys = reader.read_batch(records, indexed, seed)  # learns the shape
    assert native().key_hashes(records, indexed, reader._shapes, seed) == keys
    assert [number for number, _ in keys] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    non_ascii = records.replace(b"00000000000000000000000000000001", b"\xc3\xa9" * 16)
    assert native().key_hashes(non_ascii, indexed, reader._shapes, seed) is None


@settings(max_examples=100, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(u32, st.integers(0, 2**63 - 1)), max_size=40),
       st.integers(1, 17), st.integers(0, 5), u32)
def test_index_entries_are_those_of_the_python_loop(monkeypatch: pytest.MonkeyPatch,
                                                    items: list[tuple[int, int]], slots: int,
                                                    already: int, delta_s: int) -> None:
    entries_max = already + len(items)
    header = index_module.HEADER.size
    size = header + 4 * slots + 20 * entries_max
    maps = []
    for accelerated in (False, True):
        monkeypatch.setattr(index_module, "NATIVE", native() if accelerated else None)
        target = bytearray(size)
        entries_at = header + 4 * slots
        if accelerated:
            count = native().index_put(target, header, entries_at, already, slots, items,
                                       delta_s)
        else:
            count = already
            for hashed, commit_offset in items:
                slot = header + 4 * (hashed % slots)
                previous = struct.unpack_from("<I", target, slot)[0]
                struct.pack_into("<IQII", target, entries_at + 20 * count, hashed,
                                 commit_offset, delta_s, previous)
                count += 1
                struct.pack_into("<I", target, slot, count)
        maps.append((bytes(target), count))
    assert maps[0] == maps[1]


def test_index_put_refuses_entries_past_the_map() -> None:
    with pytest.raises(ValueError, match="no room"):
        native().index_put(bytearray(48 + 4 + 20), 48, 52, 1, 1, [(1, 2)], 0)


def store_files(directory: str) -> dict[str, bytes]:
    files = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            if name != "lock":
                path = os.path.join(root, name)
                with open(path, "rb") as file:
                    files[os.path.relpath(path, directory)] = file.read()
    return files


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(batches(), min_size=1, max_size=6), st.integers(0, 2**40))
def test_a_store_writes_the_same_files_either_way(monkeypatch: pytest.MonkeyPatch,
                                                  puts: list[tuple[str, bytes]],
                                                  now_ms: int) -> None:
    """Whole stores, the accelerator on and off: every file ends up byte for byte equal."""
    contents = []
    for accelerated in (False, True):
        module = native() if accelerated else None
        for patched in (commit_log_module, record_keys_module, index_module):
            monkeypatch.setattr(patched, "NATIVE", module)
        with tempfile.TemporaryDirectory() as directory:
            config = StoreConfig(data_dir=directory, segment_size_bytes=64 * 1024,
                                 max_message_size_bytes=16 * 1024,
                                 append_batch_bytes_max=32 * 1024,
                                 consume_queue_segment_entries=64, index_slots=64,
                                 index_entries_per_file=256, preallocate_next_segment=False)
            store = MessageStore(config, clock=ManualClock(now_ms), host="::1", port=4242)
            store.open()
            results = [store.put_packed(topic, number % 3, records)
                       for number, (topic, records) in enumerate(puts)]
            store.close()
            contents.append((results, store_files(directory)))
    assert contents[0] == contents[1]
