"""``BrokerPool.call_nowait`` against a real broker: answers, typed errors and a lost
connection reach the callback, on the connection's reader task."""

from __future__ import annotations

import trio

from tidemq import Admin, Producer
from tidemq.client._lifecycle import OwnedTaskGroup
from tidemq.client._pool import BrokerPool
from tidemq.errors import TideError, TopicNotFound
from tidemq.net import ConnectionClosed
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Response
from tidemq.testing import EmbeddedBroker

Outcome = tuple[Response | None, TideError | None]


async def test_call_nowait_hands_answers_and_errors_to_the_callback(
        embedded_broker: EmbeddedBroker) -> None:
    address = embedded_broker.address
    async with Admin(brokers=[address]) as admin:
        await admin.create_topic("known", queue_count=1)
    async with Producer(brokers=[address]) as producer:
        await producer.send("known", b"one")
    owned = OwnedTaskGroup()
    await owned.enter()
    pool = BrokerPool([address], client_id="pool-test", connect_timeout_ms=3_000,
                      request_timeout_ms=3_000, down_for_ms=60_000)
    pool.bind(owned)
    outcomes: list[Outcome] = []
    answered = trio.Event()
    readers: list[trio.lowlevel.Task] = []

    def on_outcome(response: Response | None, error: TideError | None) -> None:
        outcomes.append((response, error))
        readers.append(trio.lowlevel.current_task())
        answered.set()

    async def outcome_of(code: RequestCode, fields: dict[str, str | int]) -> Outcome:
        nonlocal answered
        answered = trio.Event()
        assert pool.call_nowait(address, code, fields, b"", on_outcome) is not None
        with trio.fail_after(5):
            await answered.wait()
        return outcomes[-1]

    try:
        # No connection yet: nothing is sent, the caller awaits ``call`` instead.
        assert pool.call_nowait(address, RequestCode.DESCRIBE_TOPIC, {"topic": "known"}, b"",
                                on_outcome) is None
        connection = await pool.connection(address)
        response, error = await outcome_of(RequestCode.DESCRIBE_TOPIC, {"topic": "known"})
        assert error is None
        assert response is not None
        assert response.fields["topic"] == {"name": "known", "read_queue_count": 1,
                                            "write_queue_count": 1, "permission": 6}
        response, error = await outcome_of(RequestCode.DESCRIBE_TOPIC, {"topic": "unknown"})
        assert response is None
        assert isinstance(error, TopicNotFound)  # typed, as ``call`` raises it
        assert trio.lowlevel.current_task() not in readers
        # A long poll still out when the connection goes: ConnectionClosed, address down.
        answered = trio.Event()
        assert pool.call_nowait(address, RequestCode.PULL_MESSAGE, {
            "group": "g", "topic": "known", "queue_id": 0, "offset": 1, "max_count": 1,
            "max_bytes": 1 << 20, "expression": "*", "suspend_ms": 30_000}, b"",
            on_outcome) is not None
        await trio.sleep(0.1)
        assert not answered.is_set()
        await connection.aclose()
        with trio.fail_after(5):
            await answered.wait()
        response, error = outcomes[-1]
        assert response is None
        assert isinstance(error, ConnectionClosed)
        assert pool.is_down(address)
        assert pool.call_nowait(address, RequestCode.DESCRIBE_TOPIC, {"topic": "known"}, b"",
                                on_outcome) is None  # retired: the next call dials again
    finally:
        pool.close()
        await owned.close()
