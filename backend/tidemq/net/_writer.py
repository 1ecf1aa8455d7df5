"""The send side of a connection: one writer task, a byte-bounded queue, batched sends.

Frames are queued by any task with ``write_nowait`` (never blocks, so frames leave in the
order they were produced, which the connection's rising request ids rely on) and sent by
one writer task that joins whatever is queued into one ``send`` (up to
``batch_size_max_bytes``): under load, hundreds of small responses cost one syscall::

    producers --write_nowait--> [ frame | frame | frame ... ] --run()--> stream.send(batch)
                                |<-- queued_bytes -------->|
    producers --await wait_ready()-- while queued_bytes >= high_water_bytes

Latency: a frame written while nothing is queued or being sent is sent at once by
``write_nowait`` itself, with one non-blocking ``send`` on the socket (Trio, plain TCP
only): the writer task would reach it only in the scheduler's next pass, and every pass a
message waits for on each hop added up to a fifth of W3's end-to-end latency. At most one
frame goes out directly per ``DIRECT_SEND_SPACING_S``, or per run of the writer task if
that comes sooner: frames written right after one are queued and leave together in the
writer task, so under load a connection makes at most one direct ``send`` per pass or per
half millisecond more than it did. An idle connection's frames all go directly and never
wake the writer task (a wake-up is a task step the process runs before it can sleep again,
and on a shared core the peer our frame woke waits for it). Whatever the socket does not
take at once (a full buffer, an error) is queued in front, and the writer task sends it or
records the error. Other streams (TLS, asyncio's transports, test streams) always go
through the writer task, since only it may call their ``send``. Nor does a task that is
being cancelled send directly (a handler whose connection was just closed): its frame is
queued, and leaves only if the writer task is still running.

Back-pressure: producers call ``await wait_ready()`` before producing a frame, so the queue
stays near ``high_water_bytes`` (it may exceed it by one frame per waiting producer, which
the callers bound with their own in-flight limits). A peer that stops reading therefore
stalls our producers, and the reader (which answers SYSTEM_BUSY through the same queue)
stops reading: TCP pushes back on the peer.

Error handling: a failed send ends ``run()`` with the error recorded in ``failure``; the
writer then counts as closed, so waiting producers wake up and see it.
"""

from __future__ import annotations

import collections
import math
import socket
import time
from typing import Final, final

import anyio
import anyio.abc

from tidemq.common.units import KIB, MIB

DEFAULT_HIGH_WATER_BYTES = 4 * MIB
DEFAULT_BATCH_SIZE_MAX_BYTES = 256 * KIB
DIRECT_SEND_SPACING_S: Final = 500e-6
"""Least time between two direct sends of one writer, unless its task ran in between."""


@final
class FrameWriter:
    def __init__(
        self,
        stream: anyio.abc.ByteSendStream,
        *,
        high_water_bytes: int = DEFAULT_HIGH_WATER_BYTES,
        batch_size_max_bytes: int = DEFAULT_BATCH_SIZE_MAX_BYTES,
    ) -> None:
        self._stream = stream
        self._high_water_bytes = high_water_bytes
        self._batch_size_max_bytes = batch_size_max_bytes
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._closed = False
        self._failure: Exception | None = None
        self._data_queued = anyio.Event()
        self._progress = anyio.Event()
        self._socket = _direct_socket(stream)
        self._sending = False
        """The writer task is inside ``stream.send``: nothing may be sent beside it."""
        self._last_direct_send = -math.inf
        """When (perf_counter) a frame last went out directly; -inf once the writer task
        ran since."""

    @property
    def direct_sends(self) -> bool:
        """Whether ``write_nowait`` may send on the socket itself (see the module docstring)."""
        return self._socket is not None

    @property
    def queued_bytes(self) -> int:
        """Bytes queued or being sent."""
        return self._queued_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failure(self) -> Exception | None:
        """The error that ended ``run()``, if a send failed."""
        return self._failure

    def write_nowait(self, frame: bytes) -> None:
        """Queue ``frame`` for sending. The caller checks ``closed`` first."""
        assert not self._closed, "write after close"
        if self._socket is not None and not self._queue and not self._sending:
            now = time.perf_counter()
            if now - self._last_direct_send >= DIRECT_SEND_SPACING_S and \
                    anyio.current_effective_deadline() != -math.inf:
                self._last_direct_send = now
                try:
                    sent = self._socket.send(frame)
                except OSError:  # would block, or failed: the writer task retries, reports
                    sent = 0
                if sent == len(frame):
                    return
                frame = frame[sent:]
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        self._data_queued.set()

    def has_room(self) -> bool:
        """True when a producer may queue a frame now (or the writer closed: nothing to wait
        for)."""
        return self._queued_bytes < self._high_water_bytes or self._closed

    async def wait_ready(self) -> None:
        """Wait until the queue is below the high-water mark, or the writer closed."""
        while self._queued_bytes >= self._high_water_bytes and not self._closed:
            await self._progress.wait()

    async def wait_flushed(self) -> None:
        """Wait until everything queued was sent, or the writer failed."""
        while self._queued_bytes and self._failure is None:
            await self._progress.wait()

    def close(self) -> None:
        """Accept no more frames; ``run()`` returns once the queue is sent."""
        self._closed = True
        self._data_queued.set()
        self._signal_progress()

    async def run(self) -> None:
        """Send queued frames until closed and drained, or until a send fails."""
        while True:
            self._last_direct_send = -math.inf
            if not self._queue:
                if self._closed:
                    return
                await self._data_queued.wait()
                self._data_queued = anyio.Event()
                continue
            batch, batch_bytes = self._take_batch()
            self._sending = True
            try:
                await self._stream.send(batch)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._failure = exc
                self._closed = True
                self._signal_progress()
                return
            finally:
                self._sending = False
            self._queued_bytes -= batch_bytes
            self._signal_progress()

    def _take_batch(self) -> tuple[bytes, int]:
        frames = [self._queue.popleft()]
        batch_bytes = len(frames[0])
        while self._queue and batch_bytes + len(self._queue[0]) <= self._batch_size_max_bytes:
            frame = self._queue.popleft()
            frames.append(frame)
            batch_bytes += len(frame)
        batch = frames[0] if len(frames) == 1 else b"".join(frames)
        return batch, batch_bytes

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()


def _direct_socket(stream: anyio.abc.ByteSendStream) -> socket.socket | None:
    """The socket ``write_nowait`` may send on itself: a plain TCP stream on Trio, where the
    stream's ``send`` is a loop of non-blocking socket sends that keeps no bytes of its own.
    (asyncio's streams buffer in a transport, which a direct send would overtake; a TLS
    stream's socket carries ciphertext.)"""
    if not isinstance(stream, anyio.abc.SocketStream):
        return None
    try:
        if not anyio.get_cancelled_exc_class().__module__.startswith("trio"):
            return None  # asyncio
    except RuntimeError:  # no event loop running
        return None
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    return raw if isinstance(raw, socket.socket) else None
