"""Property: after ANY sequence of appends, segment rolls and reopenings (clean, abandoned as
by a kill, or from a copy of the directory taken while open), the consume queues and the
key index agree with the commit log, and every read API returns exactly what was appended.

A model records each acknowledged record (topic, queue, queue offset, body, keys, unique id,
store time, commit offset); small segments, consume-queue segments and index files make the
sequences roll every structure many times.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidemq.common.clock import ManualClock
from tidemq.common.ids import encode_message_id
from tidemq.config import StoreConfig
from tidemq.protocol.record import (
    PROPERTY_KEYS,
    PROPERTY_UNIQUE_ID,
    compact_host,
    encode_draft,
    iter_records,
    pack_host,
)
from tidemq.store import GetStatus, MessageStore
from tidemq.testing.store_checks import check_store

TOPICS = ["orders", "B-1", "%RETRY%group"]
KEYS = ["k0", "k1", "k2", "k3", "k4", "key-5"]
RETENTION_MS = 20_000  # puts advance the clock up to 5 s: older segments expire
HOST = "127.0.0.1"
PORT = 10911


@dataclass(frozen=True)
class Draft:
    body: bytes
    keys: tuple[str, ...]
    unique_id: str | None
    tag: str | None

    def __repr__(self) -> str:  # bodies can be long: show their size and first bytes
        return (f"Draft(body=<{len(self.body)} bytes {self.body[:8]!r}>, keys={self.keys}, "
                f"unique_id={self.unique_id!r}, tag={self.tag!r})")


@dataclass
class Stored:
    draft: Draft
    queue_offset: int
    commit_offset: int
    store_timestamp_ms: int


@dataclass
class Model:
    queues: dict[tuple[str, int], list[Stored]] = field(default_factory=dict)
    unique_ids: int = 0


def small_config(directory: str) -> StoreConfig:
    # The smallest sizes the config allows: every structure rolls within a few batches.
    return StoreConfig(data_dir=directory, segment_size_bytes=64 * 1024,
                       max_message_size_bytes=16 * 1024, append_batch_bytes_max=32 * 1024,
                       consume_queue_segment_entries=16, index_slots=16,
                       index_entries_per_file=32, retention_ms=RETENTION_MS)


# At most 6 drafts of at most ~4.7 KB: a batch stays under append_batch_bytes_max (32 KiB).
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([1_000, 2_500, 4_500]).map(lambda n: bytes([n % 251]) * n),
    st.just(b"\x00" * 4500),  # zeros must not look like the end of the log
)
drafts = st.builds(
    Draft,
    body=bodies,
    keys=st.lists(st.sampled_from(KEYS), max_size=3, unique=True).map(tuple),
    unique_id=st.booleans().map(lambda b: "" if b else None),  # filled in per record
    tag=st.sampled_from([None, "TagA", "TagB"]),
)
put_ops = st.tuples(st.just("put"), st.sampled_from(TOPICS), st.integers(0, 2),
                    st.lists(drafts, min_size=1, max_size=6),
                    st.integers(min_value=0, max_value=5000))
operations = st.lists(
    st.one_of(
        put_ops, put_ops, put_ops, put_ops,
        st.tuples(st.sampled_from(["reopen", "abandon", "copy", "flush"])),
        st.tuples(st.just("expire"), st.integers(min_value=0, max_value=30_000)),
        # One batch of more records than a consume-queue segment holds.
        st.tuples(st.just("put"), st.sampled_from(TOPICS), st.integers(0, 2),
                  st.integers(17, 40).map(lambda n: [Draft(b"burst", (), None, None)] * n),
                  st.just(1)),
        # ~72 KB to one queue in three batches: at least one segment roll.
        st.tuples(st.just("fill"), st.sampled_from(TOPICS), st.integers(0, 2),
                  st.integers(min_value=0, max_value=8_000)),
    ),
    min_size=3, max_size=40,
)


def encode(topic: str, draft: Draft) -> bytes:
    properties: dict[str, str] = {}
    if draft.keys:
        properties[PROPERTY_KEYS] = " ".join(draft.keys)
    if draft.unique_id:
        properties[PROPERTY_UNIQUE_ID] = draft.unique_id
    return encode_draft(topic, draft.body, properties, tag=draft.tag)


class Harness:
    """One store directory, reopened in the ways the operations ask."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.generation = 0
        self.clock = ManualClock()
        self.directory = os.path.join(root, "data0")
        self.store = self._open(self.directory)

    def _open(self, directory: str, *, expect_clean: bool = True) -> MessageStore:
        store = MessageStore(small_config(directory), clock=self.clock, host=HOST, port=PORT)
        report = store.open()
        # Nothing was damaged: recovery must neither drop nor rebuild anything.
        assert report.dropped == [], report
        assert report.consume_queue_problems == [], report
        assert report.checkpoint_problem is None, report
        assert report.clean_shutdown == expect_clean, report
        return store

    def reopen(self, how: str) -> None:
        if how == "reopen":
            self.store.close()
            self.store = self._open(self.directory)
        elif how == "abandon":
            self.store.abandon()
            self.store = self._open(self.directory, expect_clean=False)
        else:  # a copy of the directory taken while the store is open and not flushed
            self.generation += 1
            copy = os.path.join(self.root, f"data{self.generation}")
            shutil.copytree(self.directory, copy)
            self.store.close()
            self.directory = copy
            self.store = self._open(copy, expect_clean=False)

    def close(self) -> None:
        self.store.close()


def run(operations_list: list[tuple[object, ...]]) -> None:
    model = Model()
    with tempfile.TemporaryDirectory() as root:
        harness = Harness(root)
        try:
            for operation in operations_list:
                if operation[0] == "put":
                    _, topic, queue_id, batch, advance_ms = operation
                    assert isinstance(topic, str)
                    assert isinstance(queue_id, int)
                    assert isinstance(batch, list)
                    assert isinstance(advance_ms, int)
                    put(harness, model, topic, queue_id, batch, advance_ms)
                elif operation[0] == "fill":
                    _, topic, queue_id, advance_ms = operation
                    assert isinstance(topic, str)
                    assert isinstance(queue_id, int)
                    assert isinstance(advance_ms, int)
                    for index in range(3):
                        batch = [Draft(bytes([index + 1]) * 4_000, (f"fill{index}",),
                                       None, None)] * 6
                        put(harness, model, topic, queue_id, batch, advance_ms)
                elif operation[0] == "flush":
                    harness.store.flush()
                elif operation[0] == "expire":
                    advance_ms = operation[1]
                    assert isinstance(advance_ms, int)
                    harness.clock.advance(advance_ms)
                    harness.store.apply_retention()
                    verify(harness.store, model)
                else:
                    harness.reopen(str(operation[0]))
                    verify(harness.store, model)
            verify(harness.store, model)
        finally:
            harness.close()


def put(harness: Harness, model: Model, topic: str, queue_id: int, batch: list[Draft],
        advance_ms: int) -> None:
    harness.clock.advance(advance_ms)
    filled: list[Draft] = []
    for draft in batch:
        if draft.unique_id is not None:
            model.unique_ids += 1
            draft = Draft(draft.body, draft.keys, f"UID{model.unique_ids:08d}", draft.tag)
        filled.append(draft)
    queue = model.queues.setdefault((topic, queue_id), [])
    result = harness.store.put_batch(topic, queue_id, [encode(topic, d) for d in filled])
    assert result.first_queue_offset == len(queue)
    assert result.count == len(filled)
    assert result.store_timestamp_ms == harness.clock.now_ms()
    for index, (draft, commit_offset) in enumerate(zip(filled, result.commit_offsets,
                                                       strict=True)):
        queue.append(Stored(draft, result.first_queue_offset + index, commit_offset,
                            result.store_timestamp_ms))


def verify(store: MessageStore, model: Model) -> None:
    """Everything the model holds at or above the log's minimum (retention deletes whole
    segments below it) is served exactly; nothing below it is."""
    records = check_store(store)
    log_min = store.log.min_offset
    assert len(records) == sum(1 for q in model.queues.values() for s in q
                               if s.commit_offset >= log_min)
    by_key: dict[tuple[str, str], set[int]] = {}
    for (topic, queue_id), stored in model.queues.items():
        low = next((s.queue_offset for s in stored if s.commit_offset >= log_min),
                   len(stored))
        assert store.min_offset(topic, queue_id) == low
        assert store.max_offset(topic, queue_id) == len(stored)
        verify_queue_reads(store, topic, queue_id, stored, low)
        verify_timestamps(store, topic, queue_id, stored, low)
        for item in stored:
            if item.commit_offset >= log_min:
                for key in item.draft.keys:
                    by_key.setdefault((topic, key), set()).add(item.commit_offset)
            verify_by_id(store, topic, item, deleted=item.commit_offset < log_min)
    for (topic, key), expected in by_key.items():
        found = store.lookup_by_key(topic, key, limit=10_000)
        assert {r.commit_offset for r in found} == expected, (topic, key)
        assert all(r.topic == topic and key in r.keys for r in found)
        assert [r.commit_offset for r in found] == sorted(expected, reverse=True)
    for topic in TOPICS:  # keys never appended find nothing
        assert store.lookup_by_key(topic, "never-used") == []


def verify_queue_reads(store: MessageStore, topic: str, queue_id: int,
                       stored: list[Stored], low: int) -> None:
    # Every offset in [min, max): read from there to the end in pages of 7 records.
    for start in range(low, len(stored)):
        offset = start
        while offset < len(stored):
            result = store.get_messages(topic, queue_id, offset, max_count=7)
            assert result.status is GetStatus.FOUND, (topic, queue_id, offset, result.status)
            decoded = list(iter_records(result.data))
            assert len(decoded) == result.count
            assert 1 <= result.count <= 7
            expected = stored[offset:offset + result.count]
            assert [(r.queue_offset, r.body, tuple(r.keys), r.unique_id, r.tag,
                     r.commit_offset, r.store_timestamp_ms, r.topic, r.queue_id)
                    for r in decoded] == \
                   [(s.queue_offset, s.draft.body, s.draft.keys, s.draft.unique_id,
                     s.draft.tag, s.commit_offset, s.store_timestamp_ms, topic, queue_id)
                    for s in expected]
            assert result.next_offset == offset + result.count
            offset = result.next_offset
        if start > low + 3:  # reading from every offset is quadratic: a few starts suffice
            break
    end = store.get_messages(topic, queue_id, len(stored))
    assert end.status is GetStatus.NO_NEW_MESSAGE
    assert store.get_messages(topic, queue_id, len(stored) + 1).status is \
        GetStatus.OFFSET_OVERFLOW
    assert store.get_messages(topic, queue_id, -1).status is GetStatus.OFFSET_TOO_SMALL
    if low > 0:
        below = store.get_messages(topic, queue_id, low - 1)
        assert below.status is GetStatus.OFFSET_TOO_SMALL
        assert below.next_offset == low
    if low < len(stored):
        last = store.get_messages(topic, queue_id, len(stored) - 1)
        assert [r.body for r in iter_records(last.data)] == [stored[-1].draft.body]


def verify_timestamps(store: MessageStore, topic: str, queue_id: int,
                      stored: list[Stored], low: int) -> None:
    stamps = [s.store_timestamp_ms for s in stored]
    probes = sorted({*stamps, *(t + 1 for t in stamps), *(t - 1 for t in stamps), 0})
    previous = 0
    for probe in probes:
        answer = store.offset_for_timestamp(topic, queue_id, probe)
        expected = next((i for i, t in enumerate(stamps) if t >= probe and i >= low),
                        len(stamps))
        assert answer == expected, (topic, queue_id, probe)
        assert answer >= previous  # monotone in the timestamp
        previous = answer


def verify_by_id(store: MessageStore, topic: str, item: Stored, *, deleted: bool) -> None:
    message_id = encode_message_id(compact_host(pack_host(HOST)), PORT, item.commit_offset)
    record = store.lookup_by_message_id(message_id)
    if deleted:
        assert record is None
        return
    assert record is not None
    assert (record.topic, record.body, record.queue_offset) == \
        (topic, item.draft.body, item.queue_offset)
    if item.draft.unique_id:
        by_unique = store.lookup_by_unique_id(topic, item.draft.unique_id)
        assert by_unique is not None
        assert by_unique.commit_offset == item.commit_offset


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_queues_and_index_agree_with_the_log(operations_list: list[tuple[object, ...]]
                                             ) -> None:
    run(operations_list)


def test_long_run_rolls_every_structure() -> None:
    """A fixed long sequence: many segment, consume-queue and index-file rolls."""
    ops: list[tuple[object, ...]] = []
    for step in range(400):
        keys = (KEYS[step % len(KEYS)],) if step % 3 else ()
        batch = [Draft(bytes([step % 256]) * (step * 37 % 2500), keys,
                       "" if step % 5 == 0 else None, "TagA" if step % 2 else None)]
        ops.append(("put", TOPICS[step % 3], step % 2, batch * (1 + step % 4), 7))
        if step % 97 == 50:
            ops.append(("abandon",))
        elif step % 97 == 90:
            ops.append(("reopen",))
        elif step % 131 == 70:
            ops.append(("copy",))
    run(ops)
