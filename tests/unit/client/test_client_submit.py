"""``Producer.submit`` retries and endings against a scripted network (no broker)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio

from tidemq.client import PendingSend, Producer
from tidemq.client._routes import MessageQueue, TopicRoute
from tidemq.common.clock import ManualClock
from tidemq.errors import MessageIllegal, SystemBusy, TideError
from tidemq.net import ConnectionClosed
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Body, Fields, Response
from tidemq.protocol.record import (
    PROPERTY_KEYS,
    PROPERTY_TAGS,
    PROPERTY_UNIQUE_ID,
    DraftTemplate,
    encode_draft,
)

BROKERS = ("b1:1", "b2:1")
_SIZE = struct.Struct("<I")


class ScriptedNetwork:
    """Answers send requests like a broker would; the test scripts failures ahead."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        """(broker, queue_id, drafts) per request."""
        self.fail_with: list[TideError | None] = []
        self.hang = False
        self.offsets: dict[tuple[str, int], int] = {}
        self.bodies: list[bytes] = []

    async def call(self, address: str, code: RequestCode, fields: Fields, body: Body = b"",
                   *, timeout_ms: int | None = None) -> Response:
        data = bytes(body)
        count, position = 0, 0
        while position < len(data):
            position += _SIZE.unpack_from(data, position)[0]
            count += 1
        queue_id = cast(int, fields["queue_id"])
        self.calls.append((address, queue_id, count))
        self.bodies.append(data)
        await trio.sleep(0.001)
        if self.hang:
            await trio.sleep_forever()
        if self.fail_with and (error := self.fail_with.pop(0)) is not None:
            raise error
        first = self.offsets.get((address, queue_id), 0)
        self.offsets[(address, queue_id)] = first + count
        return Response(0, 1, {"queue_id": queue_id, "first_queue_offset": first,
                               "msg_id_prefix": address,
                               "commit_offsets": [first + i for i in range(count)],
                               "store_timestamp_ms": 1})


@asynccontextmanager
async def scripted_producer(**options: Any) -> AsyncIterator[tuple[Producer, ScriptedNetwork]]:
    network = ScriptedNetwork()
    producer = Producer(brokers=list(BROKERS), **options)
    queues = tuple(MessageQueue("orders", broker, queue_id)
                   for broker in BROKERS for queue_id in range(2))
    route = TopicRoute("orders", queues, queues)

    async def get(topic: str) -> TopicRoute:
        return route

    producer._pool.call = network.call  # type: ignore[method-assign]
    producer._routes.cached = lambda topic: route  # type: ignore[method-assign]
    producer._routes.get = get  # type: ignore[method-assign]
    async with producer:
        yield producer, network


async def test_a_retryable_failure_is_retried_on_another_broker() -> None:
    async with scripted_producer() as (producer, network):
        network.fail_with = [SystemBusy("busy")]
        pending = await producer.submit("orders", b"x")
        result = await pending
    assert len(network.calls) == 2
    assert network.calls[0][0] != network.calls[1][0]  # the retry avoided the busy broker
    assert result.broker == network.calls[1][0]


async def test_retries_run_out_and_the_last_error_is_the_sends() -> None:
    async with scripted_producer(retries=2) as (producer, network):
        network.fail_with = [ConnectionClosed("gone")] * 3
        pending = await producer.submit("orders", b"x")
        with pytest.raises(ConnectionClosed):
            await pending
    assert len(network.calls) == 3


async def test_an_illegal_message_is_not_retried() -> None:
    async with scripted_producer() as (producer, network):
        network.fail_with = [MessageIllegal("too large for the broker")]
        pending = await producer.submit("orders", b"x")
        with pytest.raises(MessageIllegal):
            await pending
    assert len(network.calls) == 1


async def test_without_batching_each_submitted_send_is_its_own_request() -> None:
    async with scripted_producer(batch_max_messages=1) as (producer, network):
        network.fail_with = [SystemBusy("busy")]
        handles = [await producer.submit("orders", b"%d" % i) for i in range(10)]
        await producer.flush()
    assert all(pending.exception() is None for pending in handles)
    assert len(network.calls) == 11
    assert all(count == 1 for _, _, count in network.calls)


async def test_leaving_on_an_error_fails_what_is_still_in_flight() -> None:
    handles: list[PendingSend] = []

    async def give_up() -> None:
        async with scripted_producer(send_timeout_ms=60_000) as (producer, network):
            network.hang = True
            handles.extend([await producer.submit("orders", b"x") for _ in range(3)])
            await trio.sleep(0.01)
            raise ValueError("the application gives up")

    with pytest.raises(ValueError, match="gives up"):
        await give_up()
    assert len(handles) == 3
    assert all(isinstance(pending.exception(), ConnectionClosed) for pending in handles)


async def test_leaving_before_the_dispatch_pass_ran_fails_what_was_submitted() -> None:
    handles: list[PendingSend] = []

    async def give_up_at_once() -> None:
        async with scripted_producer() as (producer, _network):
            handles.extend([await producer.submit("orders", b"x") for _ in range(3)])
            assert producer._batcher is not None
            assert producer._batcher._to_dispatch  # handed over, not sent yet
            raise ValueError("the application gives up")

    with pytest.raises(ValueError, match="gives up"):
        await give_up_at_once()
    assert len(handles) == 3
    assert all(isinstance(pending.exception(), ConnectionClosed) for pending in handles)


async def test_a_send_still_in_flight_has_no_result_yet() -> None:
    async with scripted_producer() as (producer, _network):
        pending = await producer.submit("orders", b"x")
        assert not pending.done()
        with pytest.raises(RuntimeError):
            pending.result()
        with pytest.raises(RuntimeError):
            pending.exception()
        assert "in flight" in repr(pending)
        await pending
        assert "stored" in repr(pending)


@pytest.mark.parametrize("options", [
    {},  # the plain fast path
    {"tag": "created"}, {"key": "k1"}, {"properties": {"region": "eu"}},
    {"sharding_key": "user-7"},
])
async def test_a_submitted_draft_is_the_records_encoding(options: dict[str, Any]) -> None:
    clock = ManualClock(1_700_000_000_123)
    async with scripted_producer(clock=clock) as (producer, network):
        handles = [await producer.submit("orders", b"body %d" % i, **options)
                   for i in range(3)]
        await producer.flush()
    properties: dict[str, str] = dict(options.get("properties", {}))
    if "key" in options:
        properties[PROPERTY_KEYS] = options["key"]
    if "tag" in options:  # (as a property, it is hashed all the same)
        properties[PROPERTY_TAGS] = options["tag"]
    expected = [encode_draft("orders", b"body %d" % i,
                             {**properties, PROPERTY_UNIQUE_ID: pending.unique_id},
                             born_timestamp_ms=clock.now_ms())
                for i, pending in enumerate(handles)]
    assert b"".join(network.bodies) == b"".join(expected)
    assert len({pending.unique_id for pending in handles}) == 3
    results = [pending.result() for pending in handles]
    assert [result.unique_id for result in results] == [p.unique_id for p in handles]
    assert all(pending.result() is result for pending, result in zip(handles, results, strict=True))


async def test_submitted_sends_to_one_queue_keep_their_order_across_requests() -> None:
    async with scripted_producer(max_in_flight=64, batch_max_messages=5) as (producer, network):
        handles = [await producer.submit("orders", b"%03d" % i) for i in range(40)]
        await producer.flush()
    assert all(count <= 5 for _, _, count in network.calls)
    by_queue: dict[tuple[str, int], list[int]] = {}
    for pending in handles:
        result = pending.result()
        by_queue.setdefault((result.broker, result.queue_id), []).append(result.queue_offset)
    assert all(offsets == sorted(offsets) for offsets in by_queue.values())
    assert sum(len(offsets) for offsets in by_queue.values()) == 40


@pytest.mark.parametrize("callbacks", [1, 3])
async def test_a_failing_callback_does_not_stop_the_rest_of_its_request(
        callbacks: int, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken(pending: PendingSend) -> None:
        seen.append(pending.result().unique_id)
        raise ValueError("the application's bug")

    async with scripted_producer() as (producer, network):
        handles = [await producer.submit("orders", b"%d" % i) for i in range(6)]
        for pending in handles:  # one callback (the common case) or a list of them
            for _ in range(callbacks):
                pending.add_done_callback(broken)
        await producer.flush()
    assert seen == [pending.unique_id for pending in handles for _ in range(callbacks)]
    assert all(pending.done() and pending.exception() is None for pending in handles)
    assert caplog.text.count("send_callback_failed") == 6 * callbacks
    assert len(network.calls) < 6  # they shared requests


async def test_submitted_sends_share_requests_within_the_byte_bound() -> None:
    draft_size = len(DraftTemplate("orders").encode(b"000", "0" * 32, 0))
    async with scripted_producer(batch_max_bytes=3 * draft_size) as (producer, network):
        handles = [await producer.submit("orders", b"%03d" % i) for i in range(40)]
        await producer.flush()
    assert all(pending.exception() is None for pending in handles)
    assert max(count for _, _, count in network.calls) == 3
    assert sum(count for _, _, count in network.calls) == 40
