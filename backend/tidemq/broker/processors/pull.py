"""PULL_MESSAGE with long polling.

A pull reads up to ``max_count`` records of one queue from ``offset``, filtered by tag hash.
When there is nothing new and the pull allows suspension, it parks on the queue's waiter
until a send to that queue wakes it or ``suspend_ms`` passes, then reads again. There is
no busy polling. The send that wakes it answers it on the spot when it can
(``long_polling``: the response is written from the sender's task, and the handler then
returns None, the request being answered already). A pull may carry the group's consumed
offset to commit in the same trip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from tidemq.broker.long_polling import PullWake
from tidemq.errors import InvalidArgument, NoPermission
from tidemq.protocol import fields
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Request, Response
from tidemq.protocol.subscription import parse_subscription
from tidemq.store import GetResult, GetStatus

if TYPE_CHECKING:
    from tidemq.broker.node import Broker, Processor
    from tidemq.net import ServerConnectionContext

PULL_COUNT_MAX: Final = 4096
PULL_BYTES_MAX: Final = 8 << 20
SUSPEND_MS_MAX: Final = 60_000


async def handle_pull(broker: Broker, request: Request, context: ServerConnectionContext
                      ) -> Response | None:
    f = request.fields
    group = fields.string(f, "group")
    topic_name = fields.string(f, "topic")
    queue_id = fields.integer(f, "queue_id", minimum=0)
    offset = fields.integer(f, "offset", minimum=0)
    max_count = fields.integer(f, "max_count", 32, minimum=1, maximum=PULL_COUNT_MAX)
    max_bytes = fields.integer(f, "max_bytes", 4 << 20, minimum=1, maximum=PULL_BYTES_MAX)
    suspend_ms = fields.integer(f, "suspend_ms", 0, minimum=0, maximum=SUSPEND_MS_MAX)
    subscription = parse_subscription(fields.string(f, "expression", "*"))
    commit_offset = fields.optional_integer(f, "commit_offset")
    topic = broker.topics.require(topic_name)
    if not topic.readable:
        raise NoPermission(f"topic {topic_name!r} is not readable")
    if queue_id >= topic.read_queue_count:
        raise InvalidArgument(f"queue {queue_id} of {topic_name!r} does not exist")
    if commit_offset is not None and commit_offset >= 0:
        broker.offsets.commit(group, topic_name, queue_id, commit_offset)
    tag_hashes = subscription.tag_hashes

    def read(from_offset: int) -> GetResult:
        return broker.store.get_messages(topic_name, queue_id, from_offset,
                                         max_count=max_count, max_bytes=max_bytes,
                                         tag_hashes=tag_hashes)

    result = read(offset)
    if result.status is GetStatus.NO_NEW_MESSAGE and suspend_ms > 0:
        deadline = trio.current_time() + suspend_ms / 1000

        def answer_now() -> bool:
            """From the send that woke us (see long_polling): read and answer at once."""
            found = read(result.next_offset)
            return not _nothing_to_return(found) and \
                context.respond_now(_response(request, found))

        while _nothing_to_return(result):
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            wake = await broker.waiters.wait(topic_name, queue_id, remaining, answer_now)
            if wake is PullWake.ANSWERED:
                return None
            if wake is PullWake.TIMED_OUT:
                break
            result = read(result.next_offset)
    return _response(request, result)


def _nothing_to_return(result: GetResult) -> bool:
    """Nothing new, or only messages the filter rejected, up to the queue's end."""
    if result.status is GetStatus.NO_NEW_MESSAGE:
        return True
    return result.status is GetStatus.NO_MATCHED_MESSAGE and \
        result.next_offset == result.max_offset


def _response(request: Request, result: GetResult) -> Response:
    return request.respond({
        "status": result.status.value,
        "next_offset": result.next_offset,
        "min_offset": result.min_offset,
        "max_offset": result.max_offset,
        "count": result.count,
    }, result.data)


PROCESSORS: dict[RequestCode, Processor] = {
    RequestCode.PULL_MESSAGE: handle_pull,
}
