"""Back-to-back flushes: each next fsync starts the moment the previous one is done.

With ``flush = "sync"`` every acknowledgement waits for an fsync, so the time from one
fsync's end to the next one's start is time no acknowledgement can be sent. Through
``trio.to_thread.run_sync`` that gap was most of a flush cycle: it checkpoints before
handing the call to a thread (the flusher task queued behind every runnable writer, about
half a millisecond each with a 100-message batch), and the result comes back as a task
wake-up (queued again). Measured in a sync W1 run: 0.6-0.7 ms median (p90 3.3 ms) from
planning a flush to its fsync starting, for a 1.0-1.2 ms fsync.

So a ``FlushChain`` runs the fsync in a worker thread with ``trio.lowlevel.start_thread_soon``
and finishes it in a ``run_sync_soon`` callback, on the event loop between two task steps::

    run(plan) --start--> worker thread: plan.execute() (fsync)
                            |  token.run_sync_soon(finish)
                            v
              finish (event loop, no task): complete_flush,
                 wants_more()? --yes--> start(next plan: what was appended meanwhile)
                 on_flushed() (acknowledges through flush listeners, wakes waiters)
                 no next flush: done, run() returns

The writers appended while an fsync ran are covered by the next one, started before any of
them is even scheduled again: group commit without a gap. It starts before ``on_flushed``,
so the next fsync runs while this one's acknowledgements are being sent.

Error handling: a failed flush (an fsync error) ends the chain and ``run`` raises it, as
``to_thread.run_sync`` did. Cancellation: ``run`` waits (shielded) for the fsync under way,
starts no other, then lets the cancellation through, so no thread outlives the store's
files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import final

import outcome
import trio

from tidemq.store import FlushPlan, MessageStore

logger = logging.getLogger("tidemq.broker.flush_chain")


@final
class FlushChain:
    def __init__(self, store: MessageStore, *, on_flushed: Callable[[], None],
                 wants_more: Callable[[], bool]) -> None:
        """``on_flushed`` runs on the event loop after each flush is published;
        ``wants_more`` then says whether to flush again at once (commit log only)."""
        self._store = store
        self._on_flushed = on_flushed
        self._wants_more = wants_more

    async def run(self, plan: FlushPlan) -> int:
        """Execute ``plan``, then further commit-log flushes while ``wants_more()``.

        Returns:
            How many flushes completed.

        Raises:
            StoreError: a flush failed (the chain stops there).
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        failures: list[Exception] = []
        completed = 0
        stopping = False

        def start(plan: FlushPlan) -> None:
            trio.lowlevel.start_thread_soon(
                plan.execute,
                lambda result: token.run_sync_soon(finish, plan, result),
                name="tidemq.broker.flush")

        def finish(plan: FlushPlan, result: outcome.Outcome[None]) -> None:
            # A run_sync_soon callback must not raise: trio would stop with an internal error.
            nonlocal completed
            more = flushed = False
            try:
                result.unwrap()
                self._store.complete_flush(plan)
                completed += 1
                flushed = True
                more = not stopping and self._wants_more()
                if more:
                    start(self._store.plan_flush(with_indexes=False))
            except Exception as error:  # an fsync error (StoreError): run() raises it
                failures.append(error)
                more = False
            if flushed:
                try:
                    self._on_flushed()
                except Exception:  # must not end the chain with a flush under way
                    logger.exception("on_flushed_failed")
            if not more:
                done.set()

        start(plan)
        try:
            await done.wait()
        finally:
            if not done.is_set():  # cancelled: let the fsync under way finish, start no more
                stopping = True
                with trio.CancelScope(shield=True):
                    await done.wait()
        if failures:
            raise failures[0]
        return completed
