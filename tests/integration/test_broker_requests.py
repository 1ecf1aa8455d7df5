"""The broker's request processors over real sockets, through the net client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tidemq.broker.long_polling import PullWake
from tidemq.broker.node import Broker, BrokerStarted
from tidemq.common.ids import encode_message_ids
from tidemq.errors import (
    GroupNotFound,
    InvalidArgument,
    MessageIllegal,
    OffsetMoved,
    StoreError,
    TopicNotFound,
)
from tidemq.net import connect
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.record import encode_draft, iter_records

Running = tuple[Broker, BrokerStarted]


async def test_send_then_pull_returns_the_records(running_broker: Running) -> None:
    _, started = running_broker
    async with await connect(started.host, started.port, client_id="t") as client:
        body = b"".join(encode_draft("orders", b"m%d" % i, {"KEYS": f"k{i}"}, tag="created")
                        for i in range(10))
        sent = await client.call(RequestCode.SEND_BATCH, {"topic": "orders", "queue_id": 2},
                                 body)
        assert sent.fields["queue_id"] == 2
        assert sent.fields["first_queue_offset"] == 0
        prefix, commit_offsets = sent.fields["msg_id_prefix"], sent.fields["commit_offsets"]
        assert isinstance(prefix, str)
        assert isinstance(commit_offsets, list)
        assert len(commit_offsets) == 10
        msg_ids = encode_message_ids(prefix, commit_offsets)  # type: ignore[arg-type]
        pulled = await client.call(RequestCode.PULL_MESSAGE, {
            "group": "g", "topic": "orders", "queue_id": 2, "offset": 0, "max_count": 100})
        records = list(iter_records(pulled.body))
        assert pulled.fields["status"] == "found"
        assert pulled.fields["next_offset"] == 10
        assert [r.body for r in records] == [b"m%d" % i for i in range(10)]
        assert [r.queue_offset for r in records] == list(range(10))
        by_id = await client.call(RequestCode.QUERY_MESSAGE_BY_ID, {"msg_id": msg_ids[3]})
        assert next(iter_records(by_id.body)).body == b"m3"
        by_key = await client.call(RequestCode.QUERY_MESSAGE_BY_KEY,
                                   {"topic": "orders", "key": "k7"})
        assert [r.body for r in iter_records(by_key.body)] == [b"m7"]
        at_offset = await client.call(RequestCode.QUERY_BY_QUEUE_OFFSET,
                                      {"topic": "orders", "queue_id": 2, "offset": 5})
        assert next(iter_records(at_offset.body)).body == b"m5"
        with pytest.raises(OffsetMoved):
            await client.call(RequestCode.QUERY_BY_QUEUE_OFFSET,
                              {"topic": "orders", "queue_id": 2, "offset": 10})


async def test_tag_filter_on_the_broker(running_broker: Running) -> None:
    _, started = running_broker
    async with await connect(started.host, started.port, client_id="t") as client:
        tags = ["created", "paid", "shipped"] * 4
        body = b"".join(encode_draft("orders", tag.encode(), tag=tag) for tag in tags)
        await client.call(RequestCode.SEND_BATCH, {"topic": "orders", "queue_id": 0}, body)
        pulled = await client.call(RequestCode.PULL_MESSAGE, {
            "group": "g", "topic": "orders", "queue_id": 0, "offset": 0, "max_count": 100,
            "expression": "created || paid"})
        assert [r.tag for r in iter_records(pulled.body)] == \
            [t for t in tags if t in ("created", "paid")]
        assert pulled.fields["next_offset"] == len(tags)


async def test_long_poll_wakes_on_send_well_before_its_timeout(running_broker: Running
                                                               ) -> None:
    _, started = running_broker
    async with await connect(started.host, started.port, client_id="t") as client:
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "events", "queue_count": 1})
        woke_after_s: list[float] = []

        async def poll() -> None:
            begin = trio.current_time()
            pulled = await client.call(RequestCode.PULL_MESSAGE, {
                "group": "g", "topic": "events", "queue_id": 0, "offset": 0,
                "suspend_ms": 20_000}, timeout_ms=30_000)
            assert [r.body for r in iter_records(pulled.body)] == [b"wake"]
            woke_after_s.append(trio.current_time() - begin)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await trio.sleep(0.3)
                await client.call(RequestCode.SEND_MESSAGE, {"topic": "events", "queue_id": 0},
                                  encode_draft("events", b"wake"))
        assert 0.25 <= woke_after_s[0] < 2.0  # parked, then woken by the send, not the timer


async def test_a_parked_pull_is_answered_by_the_send_itself(running_broker: Running,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """The send that wakes a parked pull writes the pull's answer from its own task (no
    woken pull is left to answer in its own task), and the records arrive as usual."""
    broker, started = running_broker
    left_to_answer: list[bool] = []
    parked = trio.Event()
    notify, wait = broker.waiters.notify, broker.waiters.wait

    def spy_notify(topic: str, queue_id: int) -> bool:
        left_to_answer.append(notify(topic, queue_id))
        return left_to_answer[-1]

    async def spy_wait(*args: Any) -> PullWake:
        parked.set()
        return await wait(*args)
    monkeypatch.setattr(broker.waiters, "notify", spy_notify)
    monkeypatch.setattr(broker.waiters, "wait", spy_wait)
    async with await connect(started.host, started.port, client_id="t") as client:
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "events", "queue_count": 1})
        pulled: list[bytes] = []

        async def poll() -> None:
            answer = await client.call(RequestCode.PULL_MESSAGE, {
                "group": "g", "topic": "events", "queue_id": 0, "offset": 0,
                "suspend_ms": 20_000}, timeout_ms=30_000)
            pulled.extend(r.body for r in iter_records(answer.body))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                await parked.wait()
                await client.call(RequestCode.SEND_MESSAGE, {"topic": "events", "queue_id": 0},
                                  encode_draft("events", b"wake"))
        assert pulled == [b"wake"]
        assert left_to_answer == [False]
        assert broker.waiters.waiting == 0


async def test_offsets_commit_query_reset_and_group_lag(running_broker: Running) -> None:
    _, started = running_broker
    async with await connect(started.host, started.port, client_id="c1") as client:
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "pay", "queue_count": 2})
        body = b"".join(encode_draft("pay", b"x") for _ in range(5))
        await client.call(RequestCode.SEND_BATCH, {"topic": "pay", "queue_id": 1}, body)
        offset = await client.call(RequestCode.QUERY_OFFSET,
                                   {"group": "billing", "topic": "pay", "queue_id": 1})
        assert offset.fields["offset"] == -1
        await client.call(RequestCode.HEARTBEAT, {"client_id": "c1", "groups": [
            {"group": "billing", "mode": "clustering", "subscriptions": {"pay": "*"}}]})
        await client.call(RequestCode.COMMIT_OFFSET,
                          {"group": "billing", "topic": "pay", "queue_id": 1, "offset": 2})
        described = await client.call(RequestCode.DESCRIBE_GROUP, {"group": "billing"})
        lags = {o["queue_id"]: o["lag"] for o in described.fields["offsets"]}  # type: ignore[index, union-attr]
        assert lags == {0: 0, 1: 3}
        assert [m["client_id"] for m in described.fields["members"]] == ["c1"]  # type: ignore[index, union-attr]
        reset = await client.call(RequestCode.RESET_OFFSET,
                                  {"group": "billing", "topic": "pay", "to": "latest"})
        assert reset.fields["offsets"] == {"0": 0, "1": 5}
        reset = await client.call(RequestCode.RESET_OFFSET,
                                  {"group": "billing", "topic": "pay", "to": "earliest"})
        assert reset.fields["offsets"] == {"0": 0, "1": 0}
        groups = await client.call(RequestCode.LIST_GROUPS)
        assert groups.fields["groups"] == ["billing"]


async def test_typed_errors_for_bad_requests(strict_broker: Running) -> None:
    _, started = strict_broker
    async with await connect(started.host, started.port, client_id="t") as client:
        with pytest.raises(TopicNotFound):
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "nope", "queue_id": -1},
                              encode_draft("nope", b"x"))
        with pytest.raises(MessageIllegal):
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "bad/name", "queue_id": -1},
                              encode_draft("x", b"x"))
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "t", "queue_count": 1})
        with pytest.raises(MessageIllegal):  # over max_message_size_bytes (256 KiB here)
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "t", "queue_id": -1},
                              encode_draft("t", bytes(300 << 10)))
        with pytest.raises(MessageIllegal):
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "t", "queue_id": 0},
                              b"garbage that is not a record")
        with pytest.raises(InvalidArgument):
            await client.call(RequestCode.SEND_MESSAGE, {"topic": "t", "queue_id": 7},
                              encode_draft("t", b"x"))
        with pytest.raises(InvalidArgument):
            await client.call(RequestCode.PULL_MESSAGE, {"group": 5, "topic": "t"})
        with pytest.raises(MessageIllegal):
            await client.call(RequestCode.CREATE_TOPIC, {"topic": "%DLQ%mine"})
        sent = await client.call(RequestCode.SEND_MESSAGE, {"topic": "t", "queue_id": 0},
                                 encode_draft("t", b"still fine"))
        assert sent.fields["first_queue_offset"] == 0


async def test_topics_survive_a_restart(tmp_path: object, running_broker: Running) -> None:
    broker, started = running_broker
    async with await connect(started.host, started.port, client_id="t") as client:
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "kept", "queue_count": 3})
        await client.call(RequestCode.UPDATE_TOPIC, {"topic": "kept", "permission": 4})
        listed = await client.call(RequestCode.LIST_TOPICS)
        assert [t["name"] for t in listed.fields["topics"]] == ["kept"]  # type: ignore[index, union-attr]
    # Saved before acknowledged: a second manager reading the same file sees it.
    from tidemq.broker.topics import TopicManager

    reader = TopicManager(broker.store.directory, auto_create=False, default_queue_count=4)
    reader.load()
    kept = reader.require("kept")
    assert (kept.read_queue_count, kept.permission) == (3, 4)


async def test_oneway_sends_are_stored_even_if_the_client_leaves_at_once(
        running_broker: Running) -> None:
    broker, started = running_broker
    async with await connect(started.host, started.port, client_id="fire") as client:
        for index in range(50):
            await client.send_oneway(RequestCode.SEND_MESSAGE,
                                     {"topic": "fire-and-forget", "queue_id": 0},
                                     encode_draft("fire-and-forget", b"%d" % index))
        # Leave at once: the queued oneway frames still go out (graceful close), and the
        # server lets their handlers finish although the peer is gone.
    with trio.fail_after(10):
        while broker.store.max_offset("fire-and-forget", 0) < 50:  # noqa: ASYNC110 (polls the store)
            await trio.sleep(0.01)
    assert broker.store.max_offset("fire-and-forget", 0) == 50


async def test_a_consumer_whose_connection_closes_leaves_its_group_at_once(
        running_broker: Running) -> None:
    _, started = running_broker
    async with await connect(started.host, started.port, client_id="watcher") as watcher:
        await watcher.call(RequestCode.CREATE_TOPIC, {"topic": "jobs", "queue_count": 2})
        async with await connect(started.host, started.port, client_id="c9") as member:
            await member.call(RequestCode.HEARTBEAT, {"client_id": "c9", "groups": [
                {"group": "workers", "mode": "clustering", "subscriptions": {"jobs": "*"}}]})
            locked = await member.call(RequestCode.LOCK_QUEUES, {
                "group": "workers", "client_id": "c9", "topic": "jobs", "queue_ids": [0, 1]})
            assert locked.fields["locked"] == [0, 1]
        with trio.fail_after(5):
            while True:  # gone: a group without members or offsets is forgotten
                try:
                    await watcher.call(RequestCode.DESCRIBE_GROUP, {"group": "workers"})
                except GroupNotFound:
                    break
                await trio.sleep(0.01)
        taken = await watcher.call(RequestCode.LOCK_QUEUES, {
            "group": "workers", "client_id": "other", "topic": "jobs", "queue_ids": [0, 1]})
        assert taken.fields["locked"] == [0, 1]  # the departed member's locks were freed


async def test_client_input_cannot_grow_broker_state_without_bound(
        running_broker: Running) -> None:
    broker, started = running_broker
    async with await connect(started.host, started.port, client_id="t") as client:
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "one", "queue_count": 1})
        sent = await client.call(RequestCode.SEND_MESSAGE, {"topic": "one", "queue_id": 0},
                                 encode_draft("one", b"x"))
        msg_id = encode_message_ids(sent.fields["msg_id_prefix"],  # type: ignore[arg-type]
                                    sent.fields["commit_offsets"])[0]  # type: ignore[arg-type]
        with pytest.raises(GroupNotFound):  # a made-up group may not create retry topics
            await client.call(RequestCode.SEND_BACK, {"group": "made-up", "msg_id": msg_id})
        with pytest.raises(InvalidArgument):
            await client.call(RequestCode.COMMIT_OFFSET,
                              {"group": "g", "topic": "one", "queue_id": 10**15, "offset": 1})
        with pytest.raises(TopicNotFound):
            await client.call(RequestCode.LOCK_QUEUES, {
                "group": "g", "client_id": "t", "topic": "nope", "queue_ids": [0]})
        with pytest.raises(InvalidArgument):
            await client.call(RequestCode.LOCK_QUEUES, {
                "group": "g", "client_id": "t", "topic": "one", "queue_ids": [0, 5000]})
        for index in range(20):  # groups that lose their last member are forgotten
            await client.call(RequestCode.HEARTBEAT, {"client_id": "t", "groups": [
                {"group": f"g{index}", "subscriptions": {"one": "*"}}]})
            await client.call(RequestCode.UNREGISTER_CLIENT,
                              {"group": f"g{index}", "client_id": "t"})
        assert broker.groups.groups == {}
    assert {name for name in broker.topics.topics} == {"one"}


async def test_a_broker_that_fails_to_start_leaves_the_metadata_alone(
        running_broker: Running, tmp_path: object) -> None:
    broker, started = running_broker
    async with await connect(started.host, started.port, client_id="t") as client:
        await client.call(RequestCode.CREATE_TOPIC, {"topic": "kept", "queue_count": 2})
    topics_file = Path(broker.store.directory) / "topics.json"
    before = topics_file.read_text()
    # A second broker on the same directory fails (the store is in use) ...
    second = Broker(broker.config)
    with pytest.RaisesGroup(StoreError, allow_unwrapped=True, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(second.run)
    # ... and must not have overwritten the running broker's topics with an empty table.
    assert topics_file.read_text() == before
    assert "kept" in before
