"""Long polling: a pull that finds no new message parks here until one arrives.

The send path calls ``notify(topic, queue_id)`` after each append; every parked pull of that
queue wakes at once and reads again. No timer polls the store. Each queue's parked pulls
are kept apart, so the cost of a notify is the number of pulls parked on that queue only.

A pull may park with an ``answer_now`` callback: ``notify`` calls it right there, in the
sender's task, and a pull it answered (the callback read the records and wrote the
response) only has to finish when its task wakes. That spares the message a scheduler pass
between the append and the pull's response, and the response leaves before the sender's
own acknowledgement. A callback that answers nothing (the filter took no record, the send
queue is full) or fails leaves the pull to read again in its own task, as without one.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import TypeAlias, final

import trio

logger = logging.getLogger("tidemq.broker.long_polling")

AnswerNow: TypeAlias = Callable[[], bool]
"""Reads and answers a parked pull from ``notify``; True if it answered."""


class PullWake(enum.Enum):
    TIMED_OUT = "timed_out"
    """No notify in time (or too many pulls parked already)."""
    NOTIFIED = "notified"
    """A notify woke the pull: it reads again."""
    ANSWERED = "answered"
    """The pull's ``answer_now`` answered it during a notify: nothing left to do."""


@final
class _ParkedPull:
    __slots__ = ("answer_now", "answered", "woken")

    def __init__(self, answer_now: AnswerNow | None) -> None:
        self.answer_now = answer_now
        self.answered = False
        self.woken = trio.Event()


@final
class PullWaiters:
    def __init__(self, waiters_max: int = 10_000) -> None:
        # Per queue, its parked pulls in arrival order (a dict as an ordered set: a pull
        # that times out leaves in O(1)).
        self._parked: dict[tuple[str, int], dict[_ParkedPull, None]] = {}
        self._waiting = 0
        self.waiters_max = waiters_max

    @property
    def waiting(self) -> int:
        return self._waiting

    async def wait(self, topic: str, queue_id: int, timeout_s: float,
                   answer_now: AnswerNow | None = None) -> PullWake:
        """Park up to ``timeout_s`` until a notify on the queue. With ``waiters_max`` pulls
        already parked, returns ``TIMED_OUT`` at once."""
        if self._waiting >= self.waiters_max or timeout_s <= 0:
            return PullWake.TIMED_OUT
        key = (topic, queue_id)
        pull = _ParkedPull(answer_now)
        parked = self._parked.get(key)
        if parked is None:
            parked = self._parked[key] = {}
        parked[pull] = None
        self._waiting += 1
        try:
            with trio.move_on_after(timeout_s):
                await pull.woken.wait()
        finally:
            self._waiting -= 1
            self._forget(key, pull)
        # Checked whatever ended the wait: a pull answered in the very tick its timeout
        # fired must not answer a second time.
        if pull.answered:
            return PullWake.ANSWERED
        return PullWake.NOTIFIED if pull.woken.is_set() else PullWake.TIMED_OUT

    def notify(self, topic: str, queue_id: int) -> bool:
        """Wake every pull parked on the queue, answering those that can be answered now.
        Returns whether a woken pull still has to answer in its own task (a sender may then
        let it run before its own acknowledgement)."""
        parked = self._parked.pop((topic, queue_id), None)
        if not parked:
            return False
        left_to_answer = False
        for pull in parked:
            if pull.answer_now is not None:
                pull.answered = _answered(pull.answer_now)
            left_to_answer = left_to_answer or not pull.answered
            pull.woken.set()
        return left_to_answer

    def _forget(self, key: tuple[str, int], pull: _ParkedPull) -> None:
        parked = self._parked.get(key)
        if parked is not None:
            parked.pop(pull, None)
            if not parked:
                del self._parked[key]


def _answered(answer_now: AnswerNow) -> bool:
    """Call ``answer_now``; a failure is the pull's own business (it reads again in its task
    and meets the error there), never the sender's."""
    try:
        return answer_now()
    except Exception:
        logger.exception("pull_answer_failed")
        return False
