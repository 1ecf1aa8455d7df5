"""Argument checking of the SDK: addresses, drafts, topics, settings."""

from __future__ import annotations

import pytest

from tidemq import Consumer, InvalidArgument, MessageIllegal, Producer
from tidemq.client._drafts import DraftSpec, build_drafts
from tidemq.client._namesrv import parse_namesrv
from tidemq.client._pool import check_brokers, parse_address
from tidemq.client._settings import parse_topics
from tidemq.protocol.record import decode_record


def test_addresses() -> None:
    assert parse_address("127.0.0.1:10911") == ("127.0.0.1", 10911)
    assert parse_address("[::1]:9") == ("::1", 9)
    for bad in ("localhost", ":1", "host:", "host:0", "host:70000"):
        with pytest.raises(InvalidArgument):
            parse_address(bad)
    assert check_brokers(["a:1", "a:1", "b:2"], namesrv_given=False) == ("a:1", "b:2")
    assert check_brokers(None, namesrv_given=True) == ()
    with pytest.raises(InvalidArgument, match="brokers"):
        check_brokers([], namesrv_given=False)
    with pytest.raises(InvalidArgument, match="not host:port"):
        check_brokers(["nonsense"], namesrv_given=True)


def test_name_server_addresses() -> None:
    assert parse_namesrv(None) == ()
    assert parse_namesrv("a:1") == ("a:1",)
    assert parse_namesrv("a:1;b:2, a:1") == ("a:1", "b:2")
    assert parse_namesrv(["a:1", "b:2"]) == ("a:1", "b:2")
    for bad in ("", " ; ", "a", "a:0"):
        with pytest.raises(InvalidArgument):
            parse_namesrv(bad)


async def test_clients_need_brokers_or_a_name_server() -> None:
    with pytest.raises(InvalidArgument, match="namesrv"):
        Producer()
    with pytest.raises(InvalidArgument, match="namesrv"):
        Consumer("g", "orders")
    Producer(namesrv="127.0.0.1:9876")  # accepted: discovery happens on entry
    Consumer("g", "orders", namesrv=["127.0.0.1:9876", "127.0.0.1:9877"])


def test_drafts_carry_the_sdk_properties() -> None:
    body, unique_ids = build_drafts(
        "orders", [b"x"], DraftSpec(tag="created", keys=("k1", "k2"), properties={"a": "b"}),
        born_timestamp_ms=123, max_message_size_bytes=1024)
    record = decode_record(body, verify=False)
    assert record.tag == "created"
    assert record.keys == ["k1", "k2"]
    assert record.unique_id == unique_ids[0]
    assert record.properties["a"] == "b"
    assert record.born_timestamp_ms == 123


@pytest.mark.parametrize(("spec", "error"), [
    (DraftSpec(tag="a b", keys=(), properties={}), InvalidArgument),
    (DraftSpec(tag="a||b", keys=(), properties={}), InvalidArgument),
    (DraftSpec(tag=None, keys=("with space",), properties={}), InvalidArgument),
    (DraftSpec(tag=None, keys=(), properties={"KEYS": "x"}), InvalidArgument),
    (DraftSpec(tag=None, keys=(), properties={"UNIQ_KEY": "x"}), InvalidArgument),
])
def test_drafts_refuse_bad_tags_keys_and_reserved_properties(
        spec: DraftSpec, error: type[Exception]) -> None:
    with pytest.raises(error):
        build_drafts("orders", [b"x"], spec, born_timestamp_ms=0, max_message_size_bytes=10)


def test_drafts_refuse_oversize_bodies_and_non_bytes() -> None:
    spec = DraftSpec(tag=None, keys=(), properties={})
    with pytest.raises(MessageIllegal):
        build_drafts("orders", [b"x" * 11], spec, born_timestamp_ms=0, max_message_size_bytes=10)
    with pytest.raises(InvalidArgument):
        build_drafts("orders", ["text"], spec, born_timestamp_ms=0,  # type: ignore[list-item]
                     max_message_size_bytes=10)


def test_topics_argument_forms() -> None:
    assert parse_topics("orders")["orders"].tags is None
    assert parse_topics(["a", "b"]).keys() == {"a", "b"}
    assert parse_topics({"orders": "paid || created"})["orders"].tags == {"paid", "created"}
    for bad in ({}, {"%RETRY%g": "*"}, {"orders": "a |"}):
        with pytest.raises(InvalidArgument):
            parse_topics(bad)


def test_consumer_settings_are_checked() -> None:
    with pytest.raises(InvalidArgument):
        Consumer("", "orders", brokers=["127.0.0.1:1"])
    with pytest.raises(InvalidArgument):
        Consumer("g", "orders", brokers=["127.0.0.1:1"], start_from="yesterday")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Consumer("g", "orders", brokers=["127.0.0.1:1"], mode="broadcast", orderly=True)
    with pytest.raises(InvalidArgument):
        Consumer("g", "orders", brokers=["127.0.0.1:1"], prefetch_per_queue=0)
