"""Back-to-back flushes: each next fsync starts the moment the previous one is done, and
the first one the moment a writer asks for it.

With ``flush = "sync"`` every acknowledgement waits for an fsync, so the time from one
fsync's end to the next one's start is time no acknowledgement can be sent. Through
``trio.to_thread.run_sync`` that gap was most of a flush cycle: it checkpoints before
handing the call to a thread (the flusher task queued behind every runnable writer, about
half a millisecond each with a 100-message batch), and the result comes back as a task
wake-up (queued again). Measured in a sync W1 run: 0.6-0.7 ms median (p90 3.3 ms) from
planning a flush to its fsync starting, for a 1.0-1.2 ms fsync.

So a ``FlushChain`` runs the fsync in a worker thread with ``trio.lowlevel.start_thread_soon``
and finishes it in a ``run_sync_soon`` callback, on the event loop between two task steps::

    start() --> worker thread: plan.execute() (fsync)
                  |  token.run_sync_soon(finish)
                  v
    finish (event loop, no task): complete_flush, on_flushed() (wakes waiters),
       wants_more()? --yes--> the next plan (what was appended meanwhile) to a thread
                    --no---> idle

The writers appended while an fsync ran are covered by the next one, started before any of
them is even scheduled again: group commit without a gap. ``start`` is a plain call, so a
sync writer starts the first flush of a chain itself, right after its append, rather than
waking the flusher task and waiting for it to be scheduled (twice: it also let runnable
writers append first); at 1,000 sends a second the chain is idle at nearly every send.

Error handling: a failed flush (an fsync error) ends the chain; ``wait_idle`` raises it
(the flusher task's, so the service stops as it did with ``to_thread.run_sync``) and no
flush starts after it. Cancellation: ``wait_idle`` and ``stop`` wait (shielded) for the
fsync under way; after ``stop`` none starts, so no thread outlives the store's files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

import outcome
import trio

from tidemq.store import FlushPlan, MessageStore


@final
class FlushChain:
    def __init__(self, store: MessageStore, *, on_flushed: Callable[[], None],
                 wants_more: Callable[[], bool],
                 on_failed: Callable[[], None] = lambda: None) -> None:
        """``on_flushed`` runs on the event loop after each flush is published;
        ``wants_more`` then says whether to flush again at once (commit log only);
        ``on_failed`` runs on the event loop when a flush fails (``wait_idle`` raises it).

        Must be made on the event loop thread (it keeps its Trio token)."""
        self._store = store
        self._on_flushed = on_flushed
        self._wants_more = wants_more
        self._on_failed = on_failed
        self._token = trio.lowlevel.current_trio_token()
        self._idle = trio.Event()
        self._idle.set()
        self._failure: Exception | None = None
        self._stopped = False
        self.completed = 0
        """How many flushes finished."""

    @property
    def busy(self) -> bool:
        """Whether a flush is under way (in its thread, or finishing)."""
        return not self._idle.is_set()

    def start(self, plan: FlushPlan | None = None) -> bool:
        """Start a flush now, from the event loop, unless one is under way (its chain
        covers what is appended meanwhile, if ``wants_more``), the chain failed or
        stopped, or ``plan`` is None and the commit log has nothing unflushed.

        Returns:
            Whether a flush was started.
        """
        if self.busy or self._failure is not None or self._stopped:
            return False
        if plan is None:
            log = self._store.log
            if log.flushed_offset >= log.write_offset:
                return False
            plan = self._store.plan_flush(with_indexes=False)
        self._idle = trio.Event()
        self._spawn(plan)
        return True

    def _spawn(self, plan: FlushPlan) -> None:
        trio.lowlevel.start_thread_soon(
            plan.execute,
            lambda result: self._token.run_sync_soon(self._finish, plan, result),
            name="tidemq.broker.flush")

    def _finish(self, plan: FlushPlan, result: outcome.Outcome[None]) -> None:
        # A run_sync_soon callback must not raise: trio would stop with an internal error.
        try:
            result.unwrap()
            self._store.complete_flush(plan)
            self.completed += 1
            self._on_flushed()
            if not self._stopped and self._wants_more():
                self._spawn(self._store.plan_flush(with_indexes=False))
                return
        except Exception as error:  # an fsync error (StoreError): wait_idle raises it
            self._failure = error
        self._idle.set()
        if self._failure is not None:
            self._on_failed()

    async def wait_idle(self) -> None:
        """Wait until no flush is under way; cancelled, stop starting more and still wait
        for the one under way.

        Raises:
            StoreError: a flush failed (the chain stays stopped).
        """
        try:
            await self._idle.wait()
        except BaseException:  # cancelled (a flush may have started since the idle one)
            await self.stop()
            raise
        if self._failure is not None:
            raise self._failure

    async def stop(self) -> None:
        """Start no more flushes; wait (shielded) for the one under way."""
        self._stopped = True
        with trio.CancelScope(shield=True):
            await self._idle.wait()

    async def run(self, plan: FlushPlan) -> int:
        """Execute ``plan``, then further commit-log flushes while ``wants_more()``.

        Returns:
            How many flushes completed.

        Raises:
            StoreError: a flush failed (the chain stops there).
            RuntimeError: a flush is already under way.
        """
        before = self.completed
        if not self.start(plan):
            if self._failure is not None:
                raise self._failure
            raise RuntimeError("a flush is already under way, or the chain stopped")
        await self.wait_idle()
        return self.completed - before
