"""Property: the record format round-trips, and garbage never escapes as anything but
``ProtocolError`` (or ``MessageIllegal`` from the encoder, for values it cannot carry).

* ``encode_draft`` -> ``seal`` -> ``decode_record`` gives back every input;
* ``encode_draft`` -> ``MessageStore.put_batch`` -> ``get_messages`` -> ``iter_records``
  gives back every input plus the store's stamps;
* arbitrary bytes, and valid records with bytes flipped or cut, make ``check_record``,
  ``decode_record`` and ``iter_records`` (verified or not) raise only ``ProtocolError``,
  and a verified decode never accepts a record whose checked bytes changed.
"""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidemq.common.clock import ManualClock
from tidemq.config import StoreConfig
from tidemq.errors import MessageIllegal, ProtocolError
from tidemq.protocol.record import (
    FLAG_INDEXED,
    HEADER_SIZE,
    PROPERTY_KEYS,
    PROPERTY_TAGS,
    PROPERTY_UNIQUE_ID,
    TRANSACTION_MASK,
    DraftTemplate,
    check_record,
    decode_record,
    draft_topic,
    encode_draft,
    iter_records,
    pack_host,
    seal,
    tag_hash,
    unpack_host,
)
from tidemq.store import GetStatus, MessageStore

topics = st.text(min_size=1, max_size=40).filter(lambda t: 0 < len(t.encode()) <= 127)
store_topics = st.from_regex(r"[A-Za-z0-9_%-]{1,20}", fullmatch=True)
property_names = st.one_of(st.text(max_size=12),
                           st.sampled_from([PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQUE_ID]))
properties = st.dictionaries(property_names, st.text(max_size=30), max_size=5)
tags = st.one_of(st.none(), st.text(min_size=1, max_size=20))
hosts = st.one_of(
    st.ip_addresses(v=4).map(lambda a: pack_host(str(a))),
    st.ip_addresses(v=6).map(lambda a: pack_host(str(a))),
)
u16 = st.integers(min_value=0, max_value=2**16 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def draft_inputs(draw: st.DrawFn, topic_strategy: st.SearchStrategy[str] = topics
                 ) -> dict[str, object]:
    return {
        "topic": draw(topic_strategy),
        "body": draw(st.binary(max_size=2000)),
        "properties": draw(properties),
        "tag": draw(tags),
        "flags": draw(st.integers(min_value=0, max_value=TRANSACTION_MASK)),
        "born_timestamp_ms": draw(u64),
        "born_host": draw(hosts),
        "born_port": draw(u16),
        "reconsume_times": draw(u32),
    }


def make_draft(inputs: dict[str, object]) -> bytes:
    values = dict(inputs)
    topic, body, props = values.pop("topic"), values.pop("body"), values.pop("properties")
    assert isinstance(topic, str)
    assert isinstance(body, bytes)
    assert isinstance(props, dict)
    return encode_draft(topic, body, props, **values)  # type: ignore[arg-type]


def expected_properties(inputs: dict[str, object]) -> dict[str, str]:
    props = dict(inputs["properties"])  # type: ignore[call-overload]
    if inputs["tag"]:
        props[PROPERTY_TAGS] = inputs["tag"]
    return props


def assert_matches(record_fields: dict[str, object], inputs: dict[str, object]) -> None:
    props = expected_properties(inputs)
    assert record_fields["topic"] == inputs["topic"]
    assert record_fields["body"] == inputs["body"]
    assert record_fields["properties"] == props
    assert record_fields["born_timestamp_ms"] == inputs["born_timestamp_ms"]
    assert record_fields["born_host"] == inputs["born_host"]
    assert record_fields["born_port"] == inputs["born_port"]
    assert record_fields["reconsume_times"] == inputs["reconsume_times"]
    flags = record_fields["flags"]
    assert isinstance(flags, int)
    assert flags & TRANSACTION_MASK == inputs["flags"]
    assert bool(flags & FLAG_INDEXED) == (PROPERTY_KEYS in props or PROPERTY_UNIQUE_ID in props)
    # The consume-queue filter value is the hash of the tag the record carries.
    assert record_fields["tag_hash"] == tag_hash(props.get(PROPERTY_TAGS))


def fields_of(record: object) -> dict[str, object]:
    return {name: getattr(record, name) for name in (
        "topic", "body", "properties", "born_timestamp_ms", "born_host", "born_port",
        "reconsume_times", "flags", "tag_hash")}


@settings(max_examples=200, deadline=None)
@given(draft_inputs())
def test_encode_seal_decode_round_trip(inputs: dict[str, object]) -> None:
    record_bytes = bytearray(make_draft(inputs))
    assert draft_topic(record_bytes) == inputs["topic"]
    seal(record_bytes)
    assert check_record(record_bytes) == len(record_bytes)
    record = decode_record(record_bytes)
    assert record.total_size == len(record_bytes)
    assert_matches(fields_of(record), inputs)
    assert [r.body for r in iter_records(bytes(record_bytes) * 3)] == [inputs["body"]] * 3
    # Unverified decoding gives the same record (a draft, not sealed, decodes too).
    assert decode_record(record_bytes, verify=False) == record


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(draft_inputs(store_topics), min_size=1, max_size=8),
       st.integers(min_value=0, max_value=2**40))
def test_store_round_trip(batch: list[dict[str, object]], now_ms: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        config = StoreConfig(data_dir=directory, segment_size_bytes=64 * 1024,
                             max_message_size_bytes=16 * 1024,
                             append_batch_bytes_max=32 * 1024,
                             consume_queue_segment_entries=64, index_slots=64,
                             index_entries_per_file=256)
        store = MessageStore(config, clock=ManualClock(now_ms), host="::1", port=4242)
        store.open()
        try:
            appended: list[tuple[dict[str, object], int]] = []
            for inputs in batch:  # each draft to its own topic's queue 3
                topic = inputs["topic"]
                assert isinstance(topic, str)
                result = store.put_batch(topic, 3, [make_draft(inputs)])
                appended.append((inputs, result.commit_offsets[0]))
            for inputs, commit_offset in appended:
                topic = inputs["topic"]
                assert isinstance(topic, str)
                raw = store.read_record(commit_offset)
                assert raw is not None
                record = decode_record(raw)
                assert_matches(fields_of(record), inputs)
                assert (record.commit_offset, record.queue_id, record.store_timestamp_ms,
                        unpack_host(record.store_host), record.store_port) == \
                       (commit_offset, 3, now_ms, "::1", 4242)
            for topic in {str(inputs["topic"]) for inputs, _ in appended}:
                mine = [i for i, _ in appended if i["topic"] == topic]
                result = store.get_messages(topic, 3, 0, max_count=100)
                assert result.status is GetStatus.FOUND
                records = list(iter_records(result.data))
                assert [r.queue_offset for r in records] == list(range(len(mine)))
                for record, inputs in zip(records, mine, strict=True):
                    assert_matches(fields_of(record), inputs)
        finally:
            store.close()


def bounded_list(data: bytes, *, verify: bool) -> list[object]:
    """``list(iter_records(data))``, failing (not hanging) if it yields more records than
    ``data`` could hold."""
    records: list[object] = []
    for record in iter_records(data, verify=verify):
        records.append(record)
        assert len(records) <= len(data) // HEADER_SIZE, "iter_records does not advance"
    return records


def only_protocol_errors(data: bytes) -> None:
    """Feed ``data`` to every decoder; only ProtocolError may come out."""
    for call in (
        lambda: check_record(data),
        lambda: decode_record(data),
        lambda: decode_record(data, verify=False),
        lambda: bounded_list(data, verify=True),
        lambda: bounded_list(data, verify=False),
    ):
        try:
            call()
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    only_protocol_errors(data)


@settings(max_examples=300, deadline=None)
@given(draft_inputs(), st.data())
def test_damaged_records_raise_only_protocol_error(inputs: dict[str, object],
                                                   data: st.DataObject) -> None:
    record = bytearray(make_draft(inputs))
    seal(record)
    damaged = bytearray(record)
    how = data.draw(st.sampled_from(["flip", "cut", "header", "size"]))
    if how == "cut":
        damaged = damaged[:data.draw(st.integers(0, len(record) - 1))]
    elif how == "size":  # a size field that lies (0, tiny, huge): never loop, never crash
        size = data.draw(st.one_of(st.integers(0, HEADER_SIZE + 1), u32))
        damaged[0:4] = size.to_bytes(4, "little")
    else:
        limit = HEADER_SIZE - 1 if how == "header" else len(record) - 1
        position = data.draw(st.integers(0, limit))
        damaged[position] ^= data.draw(st.integers(1, 255))
    damaged_bytes = bytes(damaged) + data.draw(st.binary(max_size=40))
    only_protocol_errors(damaged_bytes)
    if damaged != record:
        # Every byte is checked (size and magic directly, the rest by the crc): any change
        # is caught by a verified read.
        with pytest.raises(ProtocolError):
            decode_record(bytes(damaged))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), u64)
def test_two_records_back_to_back_with_garbage_between(body: bytes, stamp: int) -> None:
    first = bytearray(encode_draft("t", body, {"KEYS": "a"}, born_timestamp_ms=stamp))
    seal(first)
    with pytest.raises(ProtocolError):
        list(iter_records(bytes(first) + b"\x01\x02\x03"))


def test_encoder_rejects_values_it_cannot_carry() -> None:
    for bad in (
        {"born_port": 70000}, {"born_port": -1}, {"reconsume_times": -1},
        {"born_timestamp_ms": 2**64}, {"flags": 2**32}, {"born_host": b"\x7f\0\0\1"},
    ):
        with pytest.raises(MessageIllegal):
            encode_draft("t", b"x", **bad)  # type: ignore[arg-type]
    for topic in ("", "x" * 128):
        with pytest.raises(MessageIllegal):
            encode_draft(topic, b"x")


def test_unverified_iteration_stops_on_a_lying_size() -> None:
    record = bytearray(encode_draft("t", b"body"))
    seal(record)
    for size in (0, 1, HEADER_SIZE, len(record) - 1):
        damaged = bytearray(record)
        damaged[0:4] = size.to_bytes(4, "little")
        with pytest.raises(ProtocolError):
            bounded_list(bytes(damaged) * 2, verify=False)


def test_tag_property_sets_the_tag_hash() -> None:
    """A TAGS property given directly (no ``tag=``) still drives the filter hash."""
    record = bytearray(encode_draft("t", b"x", {PROPERTY_TAGS: "TagA"}))
    seal(record)
    assert decode_record(record).tag_hash == tag_hash("TagA")


@given(draft_inputs(), st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=20),
       st.one_of(st.text(min_size=1, max_size=40),  # 32 UTF-8 bytes take the fast layout
                 st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
                 st.text(min_size=8, max_size=16).filter(lambda s: len(s.encode()) == 32)))
def test_a_template_encodes_what_encode_draft_encodes(inputs: dict[str, object],
                                                       many_properties: dict[str, str],
                                                       unique_id: str) -> None:
    props = {**many_properties, **inputs["properties"]}  # type: ignore[dict-item]
    tag = inputs["tag"]
    assert tag is None or isinstance(tag, str)
    born_host, born_port = inputs["born_host"], inputs["born_port"]
    assert isinstance(born_host, bytes)
    assert isinstance(born_port, int)
    topic, body, born_ms = inputs["topic"], inputs["body"], inputs["born_timestamp_ms"]
    assert isinstance(topic, str)
    assert isinstance(body, bytes)
    assert isinstance(born_ms, int)
    template = DraftTemplate(topic, props, tag=tag, born_host=born_host, born_port=born_port)
    from_template = decode_record(template.encode(body, unique_id, born_ms), verify=False)
    expected = decode_record(encode_draft(
        topic, body, {**props, PROPERTY_UNIQUE_ID: unique_id}, tag=tag,
        born_timestamp_ms=born_ms, born_host=born_host, born_port=born_port), verify=False)
    assert fields_of(from_template) == fields_of(expected)
    assert from_template.properties[PROPERTY_UNIQUE_ID] == unique_id


@pytest.mark.parametrize("unique_id", ["0123456789abcdef0123456789abcdef", "short-id"])
def test_a_template_refuses_a_birth_time_out_of_range(unique_id: str) -> None:
    template = DraftTemplate("orders", {"a": "b"}, tag="t")
    with pytest.raises(MessageIllegal):
        template.encode(b"body", unique_id, 2**64)
    with pytest.raises(MessageIllegal):
        template.encode(b"body", unique_id, -1)


@given(st.lists(st.tuples(st.binary(max_size=300),
                          st.one_of(st.text(alphabet="0123456789abcdef", min_size=32,
                                            max_size=32),
                                    st.text(min_size=1, max_size=40))),
                max_size=20),
       st.integers(min_value=0, max_value=2**63 - 1))
def test_encoding_many_drafts_at_once_equals_encoding_each(
        messages: list[tuple[bytes, str]], born_ms: int) -> None:
    template = DraftTemplate("orders", {"region": "eu"}, tag="created")
    bodies = [body for body, _ in messages]
    unique_ids = [unique_id for _, unique_id in messages]
    assert template.encode_many(bodies, unique_ids, born_ms) == \
        b"".join(template.encode(body, unique_id, born_ms) for body, unique_id in messages)


def test_encoding_many_needs_one_unique_id_per_body() -> None:
    with pytest.raises(ValueError, match="one unique id per body"):
        DraftTemplate("orders").encode_many([b"a", b"b"], ["x"], 0)
