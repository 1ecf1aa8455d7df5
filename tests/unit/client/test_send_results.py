"""``send_results``: a send's answer names records by commit offset and the broker once;
the client makes the message ids, and refuses an answer it cannot read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidemq.client._batcher import SendAnswer, send_results
from tidemq.client._message import SendResult
from tidemq.common.ids import encode_message_id, message_id_prefix
from tidemq.errors import TideError
from tidemq.protocol.events import Fields, Response

HOST = b"\x0a\x00\x00\x01"


def answer(**changes: object) -> Response:
    fields: dict[str, object] = {
        "queue_id": 3, "first_queue_offset": 7, "store_timestamp_ms": 99,
        "msg_id_prefix": message_id_prefix(HOST, 10911), "commit_offsets": [0, 4096]}
    fields.update(changes)
    return Response(0, 1, fields)  # type: ignore[arg-type]


def test_ids_are_made_from_the_prefix_and_the_commit_offsets() -> None:
    results = send_results("orders", "b:1", answer(), ["u1", "u2"])
    assert [r.msg_id for r in results] == [encode_message_id(HOST, 10911, 0),
                                           encode_message_id(HOST, 10911, 4096)]
    assert [(r.unique_id, r.queue_id, r.queue_offset, r.store_timestamp_ms)
            for r in results] == [("u1", 3, 7, 99), ("u2", 3, 8, 99)]


@pytest.mark.parametrize("changes", [
    {"commit_offsets": [0]},  # one offset short
    {"commit_offsets": [0, -1]},
    {"commit_offsets": [0, 2**64]},
    {"commit_offsets": [0, "x"]},
    {"commit_offsets": [0, 1.5]},
    {"msg_id_prefix": None},
    {"msg_ids": ["a", "b"], "commit_offsets": None},  # the old answer
])
def test_an_unreadable_answer_is_refused(changes: Fields) -> None:
    with pytest.raises(TideError, match="malformed"):
        send_results("orders", "b:1", answer(**changes), ["u1", "u2"])


@given(st.integers(0, 2**63), st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20),
       st.integers(0, 65535))
def test_each_result_made_on_demand_is_the_one_made_for_all(
        first_offset: int, commit_offsets: list[int], port: int) -> None:
    response = answer(first_queue_offset=first_offset, commit_offsets=commit_offsets,
                      msg_id_prefix=message_id_prefix(HOST, port))
    unique_ids = [f"u{index}" for index in range(len(commit_offsets))]
    expected = [SendResult(encode_message_id(HOST, port, offset), unique_id, "orders", 3,
                           first_offset + index, "b:1", 99)
                for index, (offset, unique_id)
                in enumerate(zip(commit_offsets, unique_ids, strict=True))]
    assert send_results("orders", "b:1", response, unique_ids) == expected
    one_by_one = SendAnswer("orders", "b:1", response, len(commit_offsets))
    assert [one_by_one.result(index, unique_id)
            for index, unique_id in enumerate(unique_ids)] == expected
