"""``PendingSend``: the handle ``Producer.submit`` returns for a send still in flight.

Like a Kafka producer's future or RocketMQ's ``SendCallback``: the application hands a
message over, goes on with the next one, and learns the outcome later, without a task of
its own per message::

    pending = await producer.submit("orders", body)   # waits only for an in-flight slot
    pending.add_done_callback(count)                  # called once, on the event loop
    result = await pending                            # SendResult, or the send's error

The producer completes it exactly once: with a ``SendResult``, or with the error the send
finally failed with (after its retries). Completion happens on the producer's own tasks; a
callback must not block, and an exception it raises is logged, not propagated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any, final

import anyio

from tidemq.client._batcher import Flight, QueuedSend
from tidemq.client._message import SendResult

logger = logging.getLogger("tidemq.client.producer")


Callback = Callable[["PendingSend"], object]


@final
class PendingSend(QueuedSend):
    """One message handed to ``Producer.submit``; see the module docstring. It is also
    the send's entry in its batcher lane (``QueuedSend``): one object per message."""

    __slots__ = ("_callbacks", "_done", "_event", "_result", "sharding_key", "topic")

    def __init__(self, topic: str, unique_id: str, sharding_key: str | None = None,
                 draft: bytes = b"", flight: Flight | None = None, index: int = 0) -> None:
        self.topic = topic
        self.unique_id = unique_id
        """The id the producer gave the message (property UNIQ_KEY), known at once."""
        self.sharding_key = sharding_key
        self._draft = draft
        self._error: BaseException | None = None
        self._flight = flight
        self._index = index
        self._done = False
        self._result: SendResult | None = None
        """Set by ``complete``, or made from the flight's answer when first asked for."""
        self._event: anyio.Event | None = None  # made only if someone waits early
        self._callbacks: Callback | list[Callback] | None = None
        """The common case is one callback (no list)."""

    def done(self) -> bool:
        """Whether the send has its outcome (stored, or failed for good)."""
        return self._done

    def result(self) -> SendResult:
        """The SendResult. Raises the send's error, or RuntimeError if not done yet."""
        if not self._done:
            raise RuntimeError("the send is still in flight; await it instead")
        if self._error is not None:
            raise self._error.with_traceback(None)
        result = self._result
        if result is None:  # stored by its flight's request: made on demand
            flight = self._flight
            answer = flight.answer if flight is not None else None
            assert answer is not None
            result = self._result = answer.result(self._index, self.unique_id)
        return result

    def exception(self) -> BaseException | None:
        """The error the send failed with, None if stored. RuntimeError if not done yet."""
        if not self._done:
            raise RuntimeError("the send is still in flight; await it instead")
        return self._error

    def add_done_callback(self, callback: Callback) -> None:
        """Call ``callback(self)`` once the send is done (at once if it already is)."""
        if self._done:
            _run_callback(callback, self)
            return
        callbacks = self._callbacks
        if callbacks is None:
            self._callbacks = callback
        elif type(callbacks) is list:
            callbacks.append(callback)
        else:
            self._callbacks = [callbacks, callback]  # type: ignore[list-item]

    async def wait(self) -> SendResult:
        """Wait for the outcome: the SendResult, or raise the send's error."""
        if not self._done:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        return self.result()

    def __await__(self) -> Generator[Any, None, SendResult]:
        return self.wait().__await__()

    def __repr__(self) -> str:
        state = "in flight" if not self._done else \
            ("failed" if self._error is not None else "stored")
        return f"<PendingSend {self.topic} {self.unique_id} {state}>"

    # -- for the producer -----------------------------------------------------------------

    def complete(self, result: SendResult | None, error: BaseException | None) -> None:
        """Set the outcome (once; later calls are ignored) and run the callbacks."""
        if self._done:
            return
        self._result = result
        self._error = error
        self._settled()

    def _settled(self) -> None:
        """Mark done (the outcome is set) and tell whoever waits."""
        self._done = True
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks is None:
            return
        if type(callbacks) is list:
            for callback in callbacks:
                _run_callback(callback, self)
        else:
            _run_callback(callbacks, self)  # type: ignore[arg-type]


def complete_stored(entries: list[QueuedSend]) -> tuple[int, list[PendingSend]]:
    """Complete the submitted sends among ``entries`` (an answered flight) that their
    request stored, in order: how many, and the submitted ones whose request failed (still
    in flight: the producer retries them). Sends already done and awaited sends (plain
    ``QueuedSend``) are skipped."""
    stored = 0
    failed: list[PendingSend] = []
    for entry in entries:
        if type(entry) is not PendingSend or entry._done:
            continue
        if entry._error is not None:
            failed.append(entry)
            continue
        stored += 1
        # _settled, inlined for the common cases: no waiter, and no or one callback
        callbacks = entry._callbacks
        if entry._event is not None or type(callbacks) is list:
            entry._settled()
            continue
        entry._done = True
        if callbacks is not None:
            entry._callbacks = None
            try:
                callbacks(entry)  # type: ignore[operator]
            except Exception:  # as _run_callback
                logger.exception("send_callback_failed", extra={
                    "topic": entry.topic, "unique_id": entry.unique_id})
    return stored, failed


def _run_callback(callback: Callback, pending: PendingSend) -> None:
    try:
        callback(pending)
    except Exception:  # an application's callback must not break the producer's tasks
        logger.exception("send_callback_failed", extra={"topic": pending.topic,
                                                        "unique_id": pending.unique_id})
