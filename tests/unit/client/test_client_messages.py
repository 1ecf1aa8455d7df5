"""The consumer's fast path from pulled bytes to ``Message`` builds what
``message_from_record`` builds from a decoded ``Record`` (and filters by tag)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tidemq.client._message import (
    PROPERTY_ORIGIN_MSG_ID,
    PROPERTY_ORIGIN_TOPIC,
    Message,
    message_from_record,
)
from tidemq.client._queue_worker import QueueWorker
from tidemq.client._settings import parse_topics
from tidemq.client._tracker import QueueTracker
from tidemq.protocol.record import (
    STAMP,
    STAMP_OFFSET,
    encode_draft,
    iter_record_parts,
    iter_records,
    pack_host,
    seal,
)


def _record(topic: str, body: bytes, properties: dict[str, str], tag: str | None,
            queue_offset: int, host: str) -> bytes:
    draft = bytearray(encode_draft(topic, body, properties, tag=tag, born_timestamp_ms=7,
                                   reconsume_times=queue_offset % 3))
    STAMP.pack_into(draft, STAMP_OFFSET, 2, 0, queue_offset, 1000 + 300 * queue_offset,
                    99, pack_host(host), 10911)
    seal(draft)
    return bytes(draft)


def _worker(queue_topic: str, topics: dict[str, str]) -> QueueWorker:
    core = SimpleNamespace(settings=SimpleNamespace(subscriptions=parse_topics(topics),
                                                   retry_topic="%RETRY%g"))
    queue = SimpleNamespace(topic=queue_topic, broker="127.0.0.1:10911", queue_id=2)
    return QueueWorker(cast(Any, core), cast(Any, queue), QueueTracker(0))


def _fields(message: Message) -> dict[str, object]:
    return {f.name: getattr(message, f.name) for f in dataclasses.fields(message)
            if f.name != "_delivery"}


@pytest.mark.parametrize("retry", [False, True])
async def test_pulled_messages_match_message_from_record(retry: bool) -> None:
    topic = "%RETRY%g" if retry else "orders"
    origin = {PROPERTY_ORIGIN_TOPIC: "orders", PROPERTY_ORIGIN_MSG_ID: "ABCD"} if retry else {}
    data = b"".join([
        _record(topic, b"plain", {"UNIQ_KEY": "u0"}, None, 0, "127.0.0.1"),
        _record(topic, b"tagged", {"UNIQ_KEY": "u1", "KEYS": "k1  k2", "a": "b", **origin},
                "created", 1, "127.0.0.1"),
        _record(topic, b"other tag", {"UNIQ_KEY": "u2"}, "paid", 2, "::1"),
        _record(topic, b"bare", {}, None, 3, "::1"),
        _record(topic, b"tagged again", {"UNIQ_KEY": "u4", **origin}, "created", 4, "10.0.0.1"),
        _record(topic, b"filtered", {"UNIQ_KEY": "u5", **origin}, "paid", 5, "10.0.0.1"),
    ])
    worker = _worker(topic, {"orders": "created || other"})
    messages = worker.make_messages(iter_record_parts(data))
    expected = [message_from_record(record, "127.0.0.1:10911", present_origin=retry)
                for record in iter_records(data)]
    # the subscription of the (origin) topic filters; a retry copy without an origin
    # topic has no subscription and passes
    expected = [m for m in expected if m.topic != "orders" or m.tag in ("created", "other")]
    assert len(expected) == (5 if retry else 2)
    assert [_fields(m) for m in messages] == [_fields(m) for m in expected]
    assert messages, "the fixture delivers something"
    for message, record in zip(messages, [r for r in iter_records(data)
                                         if r.queue_offset in
                                         {m.queue_offset for m in messages}], strict=True):
        delivery = message._delivery
        assert delivery is not None
        assert delivery.stored_topic == record.topic
        assert delivery.queue_worker is worker
        assert delivery.outcome is None
