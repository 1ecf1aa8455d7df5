"""The frame pump: one sans-IO ``Connection`` driven over one anyio byte stream.

Both ends of a TideMQ connection run the same pump; only the handshake differs (the client
sends HELLO in ``connect``, the server answers it in ``serve``). Three kinds of tasks meet
here::

                      +-------------------- Session.run() -------------------+
    socket --receive--> reader: Connection.receive_data / next_event          |
                      |   Response --> waiters[opaque].succeed()  ----------+ |
                      |   Request  --> handler worker (at most N at once) + | |
                      |                or SYSTEM_BUSY at once             | | |
                      | writer: FrameWriter.run() <-- responses ----------+ | |
    socket <--send----+                             <-- requests ----+      | |
                      +----------------------------------------------|------|-+
    requesting tasks (callers of request()) -------------------------+      |
                      await waiter  <---------------------------------------+

* Correlation: ``request()`` takes the next opaque, registers a waiter under it, queues the
  frame and waits. The reader completes the waiter whose opaque the response carries; a
  response without a waiter (its request timed out or was cancelled) is dropped. Request
  timeouts are deadlines in the waiter table, expired by one task per connection (see
  ``_pending`` for why not a cancel scope per request).
* Limits: at most ``max_outstanding_requests`` of our requests await answers (more wait
  for a slot); at most ``max_in_flight_requests`` of the peer's requests are handled at once
  (more are answered SYSTEM_BUSY at once, never queued); the send queue is bounded by
  bytes (see ``_writer``); reads are ``receive_size_bytes`` at a time.
* Handler workers: a request is queued and a parked worker task woken for it (or a new one
  started when none is parked); workers park between requests rather than exit, since an
  anyio task costs several times more to start than to wake (see ``_admit``).
* Immediate handling: with an ``immediate_handler``, the reader first offers it each
  request (when none that has not started is queued ahead of it, so requests of a
  connection start in order). It
  answers from the reader's own task what needs no waiting (a broker's send with
  ``flush = "async"``), or hands the request on with ``HandleLater``: to the async handler
  in a worker, or to a continuation of the work it began. This spares a wake-up and a task
  switch per request; the reader yields every ``_ANSWERED_NOW_PER_YIELD`` requests so a
  burst cannot hold the event loop.
* Handler errors never end the connection: an exception becomes an error response (a
  ``TideError`` keeps its code, anything else is INTERNAL and logged).

Resource handling: the conversation ends when the peer closes, breaks the protocol, the
socket fails, or ``close()`` is called. Then every waiter fails with ``ConnectionClosed``,
handler tasks get ``handler_grace_ms`` to finish (then are cancelled), what is queued is
flushed for at most
``flush_on_close_timeout_ms`` (so a PROTOCOL_ERROR answer reaches a misbehaving peer), and
the stream is closed. ``run()`` returns normally in all these cases.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, TypeAlias, final

import anyio
import anyio.abc
import anyio.lowlevel

from tidemq.errors import ErrorCode, TideError
from tidemq.net._errors import ConnectionClosed, RequestTimeout
from tidemq.net._options import ConnectionOptions, ConnectionStatistics
from tidemq.net._pending import PendingRequests, ResponseCallback, fresh_copy
from tidemq.net._writer import FrameWriter
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.connection import Connection, Role
from tidemq.protocol.events import NEED_DATA, PEER_CLOSED, Body, Fields, Request, Response
from tidemq.protocol.exceptions import (
    ConnectionBroken,
    LocalProtocolError,
    RemoteProtocolError,
    error_response,
)
from tidemq.protocol.frame import encode_response

logger = logging.getLogger("tidemq.net.session")

_IDLE_WORKERS_MAX = 128
"""Parked handler workers kept per connection; more exit (a burst starts new ones)."""

_ANSWERED_NOW_PER_YIELD = 64
"""Requests the reader answers itself between schedule points (see ``_handle_now``)."""

RequestHandler: TypeAlias = Callable[[Request], Awaitable[Response | None]]
Continuation: TypeAlias = Callable[[], Awaitable[Response | None]]


@final
class HandleLater:
    """What an immediate handler returns for a request it cannot answer without waiting.

    The request goes to a handler worker, which awaits ``continuation()`` when one is given
    (the rest of work the immediate handler began; its result is the answer), or else the
    session's async handler, from the start.

    ``started``: the immediate handler did what the order of requests is about (a broker's
    send appended its records) and only the answer waits. The requests behind it are then
    offered to the immediate handler too; otherwise they queue behind it, so that requests
    of a connection start in order.
    """

    __slots__ = ("continuation", "started")

    def __init__(self, continuation: Continuation | None = None, *,
                 started: bool = False) -> None:
        if started and continuation is None:
            raise ValueError("a started request needs the continuation that answers it")
        self.continuation = continuation
        self.started = started


HANDLE_LATER: Final = HandleLater()
"""``HandleLater()`` without a continuation: the async handler takes the request."""

ImmediateHandler: TypeAlias = Callable[[Request], "Response | HandleLater | None"]


def _closed(remark: str, cause: BaseException | None = None) -> ConnectionClosed:
    error = ConnectionClosed(remark)
    error.__cause__ = cause
    return error


@final
class Session:
    """One conversation over ``stream``. See the module docstring."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        connection: Connection,
        *,
        handler: RequestHandler | None,
        options: ConnectionOptions,
        peer_name: str,
        immediate_handler: ImmediateHandler | None = None,
    ) -> None:
        self._stream = stream
        self._connection = connection
        self._handler = handler
        self._immediate_handler = immediate_handler
        self._options = options
        self._peer_name = peer_name
        self._writer = FrameWriter(stream, high_water_bytes=options.send_high_water_bytes)
        self._pending = PendingRequests(options.max_outstanding_requests)
        self._in_flight_requests = 0
        # The handler pool (see _admit): admitted requests not yet picked up, the wake-up
        # events of idle workers, and whether workers should exit once the queue is empty.
        self._admitted: collections.deque[tuple[Request, Continuation | None, bool]] = \
            collections.deque()
        self._unstarted_admitted = 0
        """Admitted requests not picked up that had not started (``HandleLater.started``)."""
        self._idle_workers: list[anyio.Event] = []
        self._workers_closing = False
        self._answered_early: set[int] = set()
        """Requests a handler answered with ``respond_now`` and has not returned from."""
        self._close_reason: ConnectionClosed | None = None
        self._peer_complaint = ""
        self._frames_received = 0
        self._cancel_scope = anyio.CancelScope()
        self._running = False
        self._finished = anyio.Event()

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            outstanding_requests=len(self._pending),
            in_flight_requests=self._in_flight_requests,
            queued_send_bytes=self._writer.queued_bytes,
            closed=self.closed,
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Pump frames until the conversation ends (see the module docstring)."""
        self._running = True
        task_status.started()
        try:
            with self._cancel_scope:
                async with anyio.create_task_group() as io_group:
                    io_group.start_soon(self._write_until_closed)
                    io_group.start_soon(self._pending.expire_forever)
                    try:
                        async with anyio.create_task_group() as handler_group:
                            self._mark_closed(await self._read_until_closed(handler_group))
                            # Requests already received may finish (a oneway send must
                            # still be stored), within a grace period; a local close()
                            # cancels all.
                            handler_group.cancel_scope.deadline = (
                                anyio.current_time() + self._options.handler_grace_ms / 1000)
                            self._retire_workers()
                    finally:
                        # Requests that no worker reached (cancelled): no longer in flight.
                        self._in_flight_requests -= len(self._admitted)
                        self._admitted.clear()
                        self._unstarted_admitted = 0
                    await self._flush_before_close()
                    io_group.cancel_scope.cancel()
        finally:
            self._mark_closed(ConnectionClosed("connection closed"))
            self._writer.close()
            await anyio.aclose_forcefully(self._stream)
            self._finished.set()

    def close(self, remark: str = "connection closed by this end") -> None:
        """End the conversation now: fail waiters, cancel handlers, close the stream."""
        self._mark_closed(ConnectionClosed(remark))
        self._cancel_scope.cancel()

    async def drain(self) -> None:
        """Wait (at most ``flush_on_close_timeout_ms``) until what is queued was sent, so a
        graceful close does not drop oneway requests that were accepted for sending."""
        if self._running and not self._writer.closed:
            with anyio.move_on_after(self._options.flush_on_close_timeout_ms / 1000):
                await self._writer.wait_flushed()

    async def aclose(self) -> None:
        """Close gracefully: ``drain()``, then ``close()`` and wait for the stream."""
        await self.drain()
        self.close()
        if self._running:
            await self._finished.wait()
        else:
            await anyio.aclose_forcefully(self._stream)

    async def request(
        self, code: RequestCode, fields: Fields, body: Body, *, timeout_ms: int
    ) -> Response:
        """Send a request and wait for its response, whatever its code.

        Raises:
            RequestTimeout: no response within ``timeout_ms`` (the waiter is removed).
            ConnectionClosed: the connection closed before the response arrived.
            LocalProtocolError: the request cannot be encoded (nothing was sent).
        """
        deadline = anyio.current_time() + timeout_ms / 1000
        if not self._has_room_to_request() and not await self._wait_for_room(deadline):
            raise RequestTimeout(f"no room to send {code.name} within {timeout_ms} ms")
        self._raise_if_closed()
        # From here to write_nowait nothing awaits: frames leave in opaque order, and the
        # slot checked above is still free.
        opaque = self._connection.next_opaque()
        frame = self._send_request(Request(code, opaque, fields, body))
        waiter = self._pending.add(opaque, code, deadline, timeout_ms)
        try:
            self._writer.write_nowait(frame)
            return await waiter.wait()
        finally:
            self._pending.finish(opaque)

    def request_nowait(self, code: RequestCode, fields: Fields, body: Body, *, timeout_ms: int,
                       callback: ResponseCallback) -> int | None:
        """Send a request now, from the calling task, without waiting for anything: its
        response (or ``RequestTimeout`` / ``ConnectionClosed``) goes to ``callback``, called
        by the task that completes it (the reader, usually). Returns the request's opaque
        (for ``forget``), or None, and nothing sent, when it cannot go at once (no free
        slot, the send queue full, the connection closed or closing): the caller then
        uses ``request``.

        Raises:
            LocalProtocolError: the request cannot be encoded (nothing was sent).
        """
        if self._close_reason is not None or self._writer.closed or \
                not self._has_room_to_request():
            return None
        opaque = self._connection.next_opaque()
        try:
            frame = self._connection.send_request(Request(code, opaque, fields, body))
        except ConnectionBroken:
            return None
        self._pending.add_callback(opaque, code, anyio.current_time() + timeout_ms / 1000,
                                   timeout_ms, callback)
        self._writer.write_nowait(frame)
        return opaque

    def forget(self, opaque: int) -> bool:
        """Withdraw a ``request_nowait`` still waiting: its callback is never called (a late
        response is dropped). False if it was answered (or failed) already."""
        return self._pending.forget(opaque)

    async def send_oneway(
        self, code: RequestCode, fields: Fields, body: Body, *, timeout_ms: int
    ) -> None:
        """Queue a oneway request (no response). Waits only for room in the send queue."""
        deadline = anyio.current_time() + timeout_ms / 1000
        if not self._writer.has_room() and not await self._wait_for_room(deadline):
            raise RequestTimeout(f"no room to send {code.name} within {timeout_ms} ms")
        self._raise_if_closed()
        opaque = self._connection.next_opaque()
        frame = self._send_request(Request(code, opaque, fields, body, oneway=True))
        self._writer.write_nowait(frame)

    def _has_room_to_request(self) -> bool:
        return self._pending.has_free_slot() and self._writer.has_room()

    async def _wait_for_room(self, deadline: float) -> bool:
        """Wait for a free slot and room in the send queue; False if the deadline came first.
        The slow path only: a cancel scope costs more than the whole fast path."""
        with anyio.move_on_at(deadline):
            while not self.closed:
                if not self._pending.has_free_slot():
                    await self._pending.wait_slot_freed()
                elif not self._writer.has_room():
                    await self._writer.wait_ready()
                else:
                    return True
            return True  # closed: the caller raises ConnectionClosed
        return False

    def _send_request(self, request: Request) -> bytes:
        try:
            return self._connection.send_request(request)
        except ConnectionBroken as exc:
            raise _closed("the connection failed", exc) from exc

    def _raise_if_closed(self) -> None:
        if self._close_reason is not None:
            raise fresh_copy(self._close_reason)
        if self._writer.closed:
            raise _closed("the connection is closing")

    def _mark_closed(self, reason: ConnectionClosed) -> None:
        if self._close_reason is not None:
            return
        self._close_reason = reason
        self._pending.fail_all(reason)

    async def _write_until_closed(self) -> None:
        await self._writer.run()
        if self._writer.failure is not None:
            self._mark_closed(_closed("connection lost while sending", self._writer.failure))
            self._cancel_scope.cancel()

    async def _flush_before_close(self) -> None:
        self._writer.close()
        with anyio.move_on_after(self._options.flush_on_close_timeout_ms / 1000):
            await self._writer.wait_flushed()

    async def _read_until_closed(self, handler_group: anyio.abc.TaskGroup) -> ConnectionClosed:
        frame_deadline: float | None = None  # set while a frame is partly received
        while True:
            frames_before = self._frames_received
            reason = await self._dispatch_buffered_events(handler_group)
            if reason is not None:
                return reason
            if not self._connection.buffered_size_bytes:
                frame_deadline = None
            elif frame_deadline is None or self._frames_received != frames_before:
                stall_s = self._options.frame_stall_timeout_ms / 1000
                frame_deadline = anyio.current_time() + stall_s
            data = await self._receive(frame_deadline)
            if isinstance(data, ConnectionClosed):
                return data
            self._connection.receive_data(data)

    async def _receive(self, frame_deadline: float | None) -> bytes | ConnectionClosed:
        """The next bytes (``b""`` at the end of the stream), or why the conversation is over."""
        try:
            if frame_deadline is None:
                return await self._stream.receive(self._options.receive_size_bytes)
            with anyio.move_on_at(frame_deadline):
                return await self._stream.receive(self._options.receive_size_bytes)
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            return _closed("connection lost while receiving", exc)
        logger.info("peer_stalled_mid_frame", extra={"peer": self._peer_name})
        return _closed(f"the peer left a frame unfinished for "
                       f"{self._options.frame_stall_timeout_ms} ms")

    async def _dispatch_buffered_events(
        self, handler_group: anyio.abc.TaskGroup
    ) -> ConnectionClosed | None:
        """Act on every whole frame buffered; a reason when the conversation is over."""
        answered_now = 0
        while True:
            try:
                event = self._connection.next_event()
            except RemoteProtocolError as exc:
                self._answer_protocol_error(exc)
                return _closed(f"the peer broke the protocol: {exc.remark}", exc)
            if event is NEED_DATA:
                return None
            if event is PEER_CLOSED:
                if self._peer_complaint:
                    return _closed(f"peer closed after a protocol error: {self._peer_complaint}")
                return ConnectionClosed("peer closed the connection")
            self._frames_received += 1
            if isinstance(event, Response):
                self._deliver(event)
            elif self._in_flight_requests < self._options.max_in_flight_requests:
                if self._immediate_handler is not None and not self._unstarted_admitted:
                    self._handle_now(event, handler_group)
                    answered_now += 1
                    if answered_now % _ANSWERED_NOW_PER_YIELD == 0:
                        await anyio.lowlevel.checkpoint()
                else:
                    self._admit(event, handler_group)  # no coroutine for the common case
            else:
                await self._refuse_busy(event)

    def _deliver(self, response: Response) -> None:
        if self._pending.complete(response):
            return
        if response.code == ErrorCode.PROTOCOL_ERROR:
            self._peer_complaint = response.remark
        logger.debug("response_without_waiter",
                     extra={"peer": self._peer_name, "opaque": response.opaque})

    def _answer_protocol_error(self, error: RemoteProtocolError) -> None:
        logger.warning("peer_protocol_error",
                       extra={"peer": self._peer_name, "remark": error.remark})
        # Only a server answers: its peer sent requests, so an error response has a home (the
        # offending request's id, or 0 when the header was unreadable: the client keeps the
        # remark as the reason the connection closed). A client just closes.
        if self._connection.role is not Role.SERVER or self._writer.closed:
            return
        opaque = error.opaque if error.opaque is not None else 0
        # The connection is in ERROR now, so the frame is built by the stateless codec.
        frame = encode_response(error_response(opaque, error), self._connection.limits)
        self._writer.write_nowait(frame)

    async def _refuse_busy(self, request: Request) -> None:
        """Over ``max_in_flight_requests``: answer SYSTEM_BUSY at once (never queue)."""
        if request.oneway:
            logger.warning("oneway_dropped_busy",
                           extra={"peer": self._peer_name, "code": request.code.name})
            return
        remark = f"over {self._options.max_in_flight_requests} requests in flight"
        await self._send_response(request.respond(code=ErrorCode.SYSTEM_BUSY, remark=remark))

    def _handle_now(self, request: Request, handler_group: anyio.abc.TaskGroup) -> None:
        """Offer a request to the immediate handler, on the reader's task: answer it here,
        or hand it on to a worker as the handler says."""
        assert self._immediate_handler is not None
        try:
            outcome = self._immediate_handler(request)
        except Exception as exc:
            outcome = self._failure_answer(request, exc)
        if isinstance(outcome, HandleLater):
            self._admit(request, handler_group, outcome.continuation, started=outcome.started)
            return
        response = self._checked_answer(request, outcome)
        self._answered_early.discard(request.opaque)  # if it answered itself, it is done
        if response is None or self._writer.closed:
            return
        if self._writer.has_room():
            self._write_response(response)
        else:  # the send queue is full: a worker waits for room, as for any answer
            # Not "started": with the send queue full, the requests behind it wait too.
            self._admit(request, handler_group, partial(_answer_ready, response))

    def _admit(self, request: Request, handler_group: anyio.abc.TaskGroup,
               continuation: Continuation | None = None, *, started: bool = False) -> None:
        """Hand a request (the caller checked the in-flight limit) to a handler worker,
        which awaits ``continuation()`` if given, else the async handler. ``started``: see
        ``HandleLater``."""
        self._in_flight_requests += 1
        if not started:
            self._unstarted_admitted += 1
        # Handlers run in a pool of worker tasks rather than a task per request: an anyio
        # task costs far more to start than waking a parked worker. Every queued request
        # has a worker woken (or started) for it, so a handler that blocks (a parked pull)
        # never delays the requests behind it; a worker that finishes early may take a
        # request first, and the woken one then finds the queue empty and parks again.
        self._admitted.append((request, continuation, started))
        if self._idle_workers:
            self._idle_workers.pop().set()
        else:
            # A fixed name spares anyio from deriving one from the callable.
            handler_group.start_soon(self._work, name="tidemq.net.handler")

    async def _work(self) -> None:
        """A handler worker: handle queued requests; park when there are none (or exit,
        when enough workers are parked already or the conversation is over)."""
        admitted = self._admitted
        while True:
            while admitted:
                request, continuation, started = admitted.popleft()
                if not started:
                    self._unstarted_admitted -= 1
                await self._handle(request, continuation)
            if self._workers_closing or len(self._idle_workers) >= _IDLE_WORKERS_MAX:
                return
            wake = anyio.Event()
            self._idle_workers.append(wake)
            await wake.wait()

    def _retire_workers(self) -> None:
        """No more requests come: workers finish what is queued, then exit."""
        self._workers_closing = True
        idle, self._idle_workers = self._idle_workers, []
        for wake in idle:
            wake.set()

    async def _handle(self, request: Request, continuation: Continuation | None) -> None:
        try:
            response = await self._call_handler(request, continuation)
            if response is not None:
                await self._send_response(response)
        finally:
            self._in_flight_requests -= 1
            if self._answered_early:
                self._answered_early.discard(request.opaque)

    def respond_now(self, response: Response) -> bool:
        """Answer a request being handled from the calling task, now (not necessarily the
        handler's own task: a send answers the pulls it woke, see broker.long_polling). The
        handler then returns None. False, and nothing sent, when the answer cannot go at
        once (the send queue is full or closing, the response does not encode): the handler
        answers as usual then. A request answered already this way is not answered again
        (True)."""
        if response.opaque in self._answered_early:
            return True
        if self._writer.closed or not self._writer.has_room():
            return False
        try:
            frame = self._connection.send_response(response)
        except (LocalProtocolError, ConnectionBroken):
            return False
        self._answered_early.add(response.opaque)
        self._writer.write_nowait(frame)
        return True

    async def _call_handler(self, request: Request, continuation: Continuation | None
                            ) -> Response | None:
        if continuation is None and self._handler is None:
            remark = f"{request.code.name} is not served by this end"
            return None if request.oneway else request.respond(
                code=ErrorCode.INVALID_ARGUMENT, remark=remark)
        try:
            if continuation is not None:
                response = await continuation()
            else:
                assert self._handler is not None
                response = await self._handler(request)
        except Exception as exc:
            return self._failure_answer(request, exc)
        return self._checked_answer(request, response)

    def _failure_answer(self, request: Request, exc: Exception) -> Response | None:
        """The answer to a request whose handler raised (None when none is due)."""
        if not isinstance(exc, TideError):
            logger.exception("handler_failed",
                             extra={"peer": self._peer_name, "code": request.code.name},
                             exc_info=exc)
        if request.oneway or request.opaque in self._answered_early:
            return None
        return error_response(request.opaque, exc)

    def _checked_answer(self, request: Request, response: object) -> Response | None:
        """What a handler returned, as the answer to send (None when none is due)."""
        if request.oneway or request.opaque in self._answered_early:
            return None
        # Checked at run time too: a handler is user code, and a wrong return value must
        # not take the connection down.
        if not isinstance(response, Response) or response.opaque != request.opaque:
            logger.error("handler_bad_response",
                         extra={"peer": self._peer_name, "code": request.code.name})
            return request.respond(code=ErrorCode.INTERNAL, remark="handler gave no response")
        return response

    async def _send_response(self, response: Response) -> None:
        await self._writer.wait_ready()
        if self._writer.closed:
            return  # the conversation is ending: no one to answer
        self._write_response(response)

    def _write_response(self, response: Response) -> None:
        """Queue an answer (the writer is open and has room)."""
        try:
            frame = self._connection.send_response(response)
        except LocalProtocolError as exc:
            logger.error("response_not_encodable",
                         extra={"peer": self._peer_name, "remark": exc.remark})
            fallback = Response(ErrorCode.INTERNAL, response.opaque,
                                remark=f"the response could not be sent: {exc.remark}"[:512])
            frame = self._connection.send_response(fallback)
        except ConnectionBroken:
            return
        self._writer.write_nowait(frame)


async def _answer_ready(response: Response) -> Response:
    """A continuation whose answer is ready already (it waits for room to send it)."""
    return response
