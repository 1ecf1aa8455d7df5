"""SEND_MESSAGE / SEND_BATCH: store the body's record drafts, acknowledge.

The body is record drafts back to back, never re-encoded: each draft's first u32 is its
total size. The store takes the body as it came (``put_packed``): one pass checks the
drafts, one copy puts the whole batch into the commit log. A send is acknowledged once
stored under the flush mode (DESIGN.md section 5); then parked pulls of the queue are woken
(long polling), and answered from this handler's task where possible.

Most sends are answered on the connection's reader task (``send_now``, the broker's
immediate processor for these codes): with ``flush = "async"`` nothing has to wait, so no
task is woken for the request and no task switch comes between the append, the parked
pulls' answers and the acknowledgement. With ``flush = "sync"`` the append happens there too
(the flush starts a scheduler pass sooner), the acknowledgement is sent by a flush listener
as the fsync is published (``StoreService.when_flushed``), and a handler task waits to
report a timeout or failure; the sends behind it on the connection are still appended on
the reader (``HandleLater(started=True)``: only its answer waits). A send
that must wait before its append (its topic is auto-created and saved first, its queue's
segment is being made) goes to ``handle_send`` in a task, as all did before.

The answer names each record by its commit offset, and the broker's address once
(``msg_id_prefix``): the client makes the message ids (``common.ids.encode_message_ids``),
so the broker formats no string per message and sends ~9 bytes per record, not ~30.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from tidemq.errors import InvalidArgument, MessageIllegal
from tidemq.net import HANDLE_LATER, HandleLater
from tidemq.protocol import fields
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Request, Response

if TYPE_CHECKING:
    from tidemq.broker.node import Broker, ImmediateProcessor, Processor
    from tidemq.broker.store_service import FlushListener
    from tidemq.broker.topics import TopicConfig
    from tidemq.net import ServerConnectionContext
    from tidemq.store import PutResult


async def handle_send(broker: Broker, request: Request, context: ServerConnectionContext
                      ) -> Response | None:
    topic_name, queue_id = _addressed(broker, request)
    topic, created = broker.topics.for_send(topic_name)
    if created:
        await broker.persist_topics()
    queue_id = _queue_to_write(broker, topic_name, topic, queue_id)
    return await _store_and_answer(broker, request, context, topic_name, queue_id)


def send_now(broker: Broker, request: Request, context: ServerConnectionContext
             ) -> Response | HandleLater | None:
    """``handle_send`` on the connection's reader task, as far as it needs no waiting (see
    the module docstring): the answer, or the rest of the work for a handler task."""
    topic_name, queue_id = _addressed(broker, request)
    topic = broker.topics.existing_for_send(topic_name)
    if topic is None:
        return HANDLE_LATER  # auto-created: the topic table is saved before the append
    queue_id = _queue_to_write(broker, topic_name, topic, queue_id)
    service = broker.store_service
    result = service.put_packed_now(topic_name, queue_id, request.body)
    if result is None:  # the queue's segment is being made: wait in line behind it
        return HandleLater(partial(_store_and_answer, broker, request, context, topic_name,
                                   queue_id))
    if service.config.flush == "sync":
        # Acknowledged by a flush listener, as the fsync is published; the handler task
        # reports a timeout or failure (and acknowledges if the listener could not).
        flushed = _FlushedAcknowledgement(broker, context, topic_name, queue_id,
                                          _answer(broker, request, queue_id, result))
        listener = service.when_flushed(result.end_offset, flushed.on_flushed)
        return HandleLater(partial(_answer_when_acknowledged, result, listener, flushed),
                           started=True)
    left_to_answer = broker.waiters.notify(topic_name, queue_id)
    answer = _answer(broker, request, queue_id, result)
    if left_to_answer:
        return HandleLater(partial(_answer_after_woken_pulls, answer), started=True)
    return answer  # written right behind the pulls' answers


def _addressed(broker: Broker, request: Request) -> tuple[str, int]:
    """The send's topic and queue id (-1: the broker picks), with its body checked."""
    topic_name = fields.string(request.fields, "topic")
    queue_id = fields.integer(request.fields, "queue_id", -1, minimum=-1)
    if not request.body:
        raise MessageIllegal("a send carries no record")
    limit = broker.config.store.append_batch_bytes_max
    if len(request.body) > limit:
        raise MessageIllegal(f"a batch of {len(request.body)} bytes exceeds the limit of "
                             f"{limit}")
    return topic_name, queue_id


def _queue_to_write(broker: Broker, topic_name: str, topic: TopicConfig, queue_id: int) -> int:
    if queue_id == -1:
        return broker.next_queue(topic_name, topic.write_queue_count)
    if queue_id >= topic.write_queue_count:
        raise InvalidArgument(f"queue {queue_id} of {topic_name!r} does not exist "
                              f"({topic.write_queue_count} write queues)")
    return queue_id


async def _store_and_answer(broker: Broker, request: Request, context: ServerConnectionContext,
                            topic_name: str, queue_id: int) -> Response | None:
    try:
        result = await broker.store_service.put_packed(topic_name, queue_id, request.body,
                                                       yield_after=False)
    finally:
        # Also when the fsync wait failed or was cancelled: the records may be stored,
        # and parked pulls must see them now, not at their timeout. Most are answered
        # right here, from this task (long_polling).
        left_to_answer = broker.waiters.notify(topic_name, queue_id)
    return await _acknowledge(context, _answer(broker, request, queue_id, result),
                              left_to_answer)


@dataclass(slots=True)
class _FlushedAcknowledgement:
    """A sync send's flush listener (``on_flushed``): right after the fsync, on the event
    loop, wake the queue's parked pulls, answer them, and acknowledge right behind them,
    with no task scheduled in between. When a woken pull must answer in its own task, the
    handler task acknowledges after it instead (``left_to_answer``)."""

    broker: Broker
    context: ServerConnectionContext
    topic_name: str
    queue_id: int
    answer: Response | None
    left_to_answer: bool = False

    def on_flushed(self) -> None:
        self.left_to_answer = self.broker.waiters.notify(self.topic_name, self.queue_id)
        if not self.left_to_answer and self.answer is not None:
            self.context.respond_now(self.answer)


async def _answer_when_acknowledged(result: PutResult, listener: FlushListener,
                                    flushed: _FlushedAcknowledgement) -> Response | None:
    broker = flushed.broker
    try:
        await broker.store_service.acknowledged(result)
    finally:
        listener.cancel()  # a timeout or failure is answered here, once
        # As _store_and_answer: parked pulls see the records now, whatever happened.
        left_to_answer = broker.waiters.notify(flushed.topic_name, flushed.queue_id)
    # Usually answered by the listener already: respond_now then sends nothing again.
    return await _acknowledge(flushed.context, flushed.answer,
                              left_to_answer or flushed.left_to_answer)


async def _acknowledge(context: ServerConnectionContext, answer: Response | None,
                       left_to_answer: bool) -> Response | None:
    if not left_to_answer and answer is not None and context.respond_now(answer):
        # Right behind the pulls' answers: the peers they wake (often one process, on a
        # shared core) find both, and this process sleeps again sooner.
        answer = None
    # A burst of sends must not starve the flusher (this schedule point), and woken pulls
    # that could not be answered here answer before this acknowledgement (a second one).
    await trio.lowlevel.checkpoint()
    if left_to_answer:
        await trio.lowlevel.checkpoint()
    return answer


async def _answer_after_woken_pulls(answer: Response | None) -> Response | None:
    """Woken pulls that could not be answered from the send's task answer before its
    acknowledgement: their consumers wait for these very records, while on a busy machine
    the acknowledgement's send can wake the producer onto this core first (W3 at 1,000
    msg/s, async: p50 1.45 -> 0.78 ms, p99 2.25 -> 1.61 ms). Two schedule points: Trio runs
    a batch of runnable tasks in random order."""
    await trio.lowlevel.checkpoint()
    await trio.lowlevel.checkpoint()
    return answer


def _answer(broker: Broker, request: Request, queue_id: int, result: PutResult
            ) -> Response | None:
    if request.oneway:
        return None
    return request.respond({
        "queue_id": queue_id,
        "first_queue_offset": result.first_queue_offset,
        "msg_id_prefix": broker.message_id_prefix(),
        "commit_offsets": result.commit_offsets,
        "store_timestamp_ms": result.store_timestamp_ms,
    })


PROCESSORS: dict[RequestCode, Processor] = {
    RequestCode.SEND_MESSAGE: handle_send,
    RequestCode.SEND_BATCH: handle_send,
}

IMMEDIATE_PROCESSORS: dict[RequestCode, ImmediateProcessor] = {
    RequestCode.SEND_MESSAGE: send_now,
    RequestCode.SEND_BATCH: send_now,
}
