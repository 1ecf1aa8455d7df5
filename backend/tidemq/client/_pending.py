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

from tidemq.client._message import SendResult

logger = logging.getLogger("tidemq.client.producer")


@final
class PendingSend:
    """One message handed to ``Producer.submit``; see the module docstring."""

    __slots__ = ("_callback", "_done", "_error", "_event", "_more_callbacks", "_result",
                 "sharding_key", "topic", "unique_id")

    def __init__(self, topic: str, unique_id: str, sharding_key: str | None = None) -> None:
        self.topic = topic
        self.unique_id = unique_id
        """The id the producer gave the message (property UNIQ_KEY), known at once."""
        self.sharding_key = sharding_key
        self._done = False
        self._result: SendResult | None = None
        self._error: BaseException | None = None
        self._event: anyio.Event | None = None  # made only if someone waits early
        self._callback: Callable[[PendingSend], object] | None = None
        self._more_callbacks: list[Callable[[PendingSend], object]] | None = None

    def done(self) -> bool:
        """Whether the send has its outcome (stored, or failed for good)."""
        return self._done

    def result(self) -> SendResult:
        """The SendResult. Raises the send's error, or RuntimeError if not done yet."""
        if not self._done:
            raise RuntimeError("the send is still in flight; await it instead")
        if self._error is not None:
            raise self._error.with_traceback(None)
        assert self._result is not None
        return self._result

    def exception(self) -> BaseException | None:
        """The error the send failed with, None if stored. RuntimeError if not done yet."""
        if not self._done:
            raise RuntimeError("the send is still in flight; await it instead")
        return self._error

    def add_done_callback(self, callback: Callable[[PendingSend], object]) -> None:
        """Call ``callback(self)`` once the send is done (at once if it already is)."""
        if self._done:
            _run_callback(callback, self)
        elif self._callback is None:
            self._callback = callback  # the common case: one callback, no list
        elif self._more_callbacks is None:
            self._more_callbacks = [callback]
        else:
            self._more_callbacks.append(callback)

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
        self._done = True
        self._result = result
        self._error = error
        if self._event is not None:
            self._event.set()
        callback, self._callback = self._callback, None
        if callback is not None:
            _run_callback(callback, self)
            more, self._more_callbacks = self._more_callbacks, None
            for callback in more or ():
                _run_callback(callback, self)


def _run_callback(callback: Callable[[PendingSend], object], pending: PendingSend) -> None:
    try:
        callback(pending)
    except Exception:  # an application's callback must not break the producer's tasks
        logger.exception("send_callback_failed", extra={"topic": pending.topic,
                                                        "unique_id": pending.unique_id})
