"""The one task group each client object owns, opened in ``__aenter__``.

A client object (Producer, Consumer, Admin) runs background tasks: connection keepers, and
for a consumer its control loop, queue workers and committer. They live in one task group
that ``__aenter__`` opens and ``__aexit__`` closes, so nothing outlives the ``async with``.
The application's block runs inside that task group's cancel scope: if a background task
crashes, the block is cancelled and the crash is raised from ``__aexit__`` (as an
exception group), as structured concurrency wants.

Two deliberate differences from entering a task group directly:

* The block's own exception is not passed into the task group, so
  ``async with Producer(...): raise ValueError`` raises the ``ValueError`` itself, not an
  exception group wrapping it.
* Background tasks run under ``guard()``: a shielded cancel scope that only ``close()``
  cancels. The task group sits inside the application's cancel scopes, so without it an
  application cancelling the block (a timeout around ``async with Consumer(...)``) would
  also cancel the connections and workers, and ``__aexit__`` could no longer commit
  offsets or leave the group. With it, ``__aexit__`` does its (time-bounded, shielded)
  goodbyes over live connections, then ``close()`` stops everything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import final

import anyio
import anyio.abc


@final
class OwnedTaskGroup:
    def __init__(self) -> None:
        self._task_group: anyio.abc.TaskGroup | None = None
        self._guards: set[anyio.CancelScope] = set()
        self._closed = False

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        if self._task_group is None or self._closed:
            raise RuntimeError("use the client with 'async with' (and only inside it)")
        return self._task_group

    @property
    def closed(self) -> bool:
        return self._closed

    async def enter(self) -> anyio.abc.TaskGroup:
        if self._task_group is not None:
            raise RuntimeError("a client object can be entered once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return task_group

    @contextlib.contextmanager
    def guard(self) -> Iterator[anyio.CancelScope]:
        """Run a background task's body where only ``close()`` cancels it."""
        scope = anyio.CancelScope(shield=True)
        if self._closed:
            scope.cancel()
        self._guards.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._guards.discard(scope)

    async def close(self) -> None:
        """Cancel the background tasks and wait for them; raises what they raised."""
        if self._task_group is None or self._closed:
            return
        self._closed = True
        for scope in self._guards:
            scope.cancel()
        self._task_group.cancel_scope.cancel()
        # Not shielded: a cancel scope entered here would be exited after the task group's
        # own scope, which is not nesting. The tasks stop promptly anyway, being cancelled.
        await self._task_group.__aexit__(None, None, None)
