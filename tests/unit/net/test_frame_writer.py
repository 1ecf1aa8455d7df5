"""The send queue of a connection (tidemq.net._writer): order, batching, back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest

from tidemq.net import _writer
from tidemq.net._writer import FrameWriter


class GatedStream(anyio.abc.ByteSendStream):
    """A byte stream whose sends complete only when the test opens the gate."""

    def __init__(self, *, fail_with: Exception | None = None) -> None:
        self.sent: list[bytes] = []
        self.gate = anyio.Event()
        self.sending = anyio.Event()
        self.fail_with = fail_with

    async def send(self, item: bytes) -> None:
        self.sending.set()
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(item)

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_frames_queued_together_leave_in_one_send_in_order() -> None:
    stream = GatedStream()
    stream.gate.set()
    writer = FrameWriter(stream, batch_size_max_bytes=10)
    for frame in (b"aaaa", b"bbbb", b"cc", b"dddd"):
        writer.write_nowait(frame)
    writer.close()
    with anyio.fail_after(5):
        await writer.run()
    assert stream.sent == [b"aaaabbbbcc", b"dddd"]  # batches stop at 10 bytes
    assert writer.queued_bytes == 0


async def test_producers_wait_while_the_queue_is_over_the_high_water_mark() -> None:
    stream = GatedStream()
    writer = FrameWriter(stream, high_water_bytes=100)
    ready = anyio.Event()

    async def producer() -> None:
        await writer.wait_ready()
        ready.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(writer.run)
            writer.write_nowait(b"a" * 60)
            await writer.wait_ready()  # 60 < 100: no wait
            writer.write_nowait(b"b" * 60)
            group.start_soon(producer)
            await stream.sending.wait()
            await anyio.wait_all_tasks_blocked()
            assert not ready.is_set()  # 120 bytes queued, the peer is not taking them
            stream.gate.set()
            await ready.wait()
            writer.close()
    assert b"".join(stream.sent) == b"a" * 60 + b"b" * 60


async def test_failed_send_closes_the_writer_and_releases_producers() -> None:
    stream = GatedStream(fail_with=anyio.BrokenResourceError())
    writer = FrameWriter(stream, high_water_bytes=10)
    writer.write_nowait(b"x" * 20)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(writer.run)
            await stream.sending.wait()
            stream.gate.set()
            await writer.wait_ready()  # returns: the writer is closed, not drained
            await writer.wait_flushed()
    assert writer.closed
    assert isinstance(writer.failure, anyio.BrokenResourceError)


@contextlib.asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]]:
    """Two ends of a loopback TCP connection (anyio's plain socket streams)."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        client = await anyio.connect_tcp("127.0.0.1", port)
        server = await listener.listeners[0].accept()  # type: ignore[attr-defined]
    async with client, server:
        yield client, server


async def receive_exactly(stream: anyio.abc.ByteReceiveStream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        received += await stream.receive()
    return bytes(received)


async def test_a_frame_to_an_idle_trio_socket_leaves_without_the_writer_task(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(_writer.time, "perf_counter", lambda: clock[0])
    async with tcp_pair() as (near, far):
        writer = FrameWriter(near)
        assert writer.direct_sends
        writer.write_nowait(b"first")  # run() never started: only a direct send moves it
        assert writer.queued_bytes == 0
        # Right after a direct send, the next frame waits for the writer task (so a burst
        # of frames in one pass still leaves in one send), and keeps its place behind it.
        clock[0] += _writer.DIRECT_SEND_SPACING_S / 2
        writer.write_nowait(b"second")
        assert writer.queued_bytes == 6
        with anyio.fail_after(5):
            assert await receive_exactly(far, 5) == b"first"
            async with anyio.create_task_group() as group:
                group.start_soon(writer.run)
                assert await receive_exactly(far, 6) == b"second"
                writer.write_nowait(b"third")
                assert await receive_exactly(far, 5) == b"third"
                writer.close()
    async with tcp_pair() as (near, far):
        writer = FrameWriter(near)
        writer.write_nowait(b"one")
        clock[0] += _writer.DIRECT_SEND_SPACING_S
        writer.write_nowait(b"two")  # spaced out: directly too, no writer task needed
        assert writer.queued_bytes == 0
        with anyio.fail_after(5):
            assert await receive_exactly(far, 6) == b"onetwo"


async def test_what_the_socket_does_not_take_at_once_is_queued_in_order() -> None:
    async with tcp_pair() as (near, far):
        writer = FrameWriter(near, high_water_bytes=1 << 30)
        big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the socket buffers hold
        writer.write_nowait(big)
        assert 0 < writer.queued_bytes < len(big)  # part went at once, the rest waits
        writer.write_nowait(b"after")
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(writer.run)
                assert await receive_exactly(far, len(big) + 5) == big + b"after"
                writer.close()
        assert writer.queued_bytes == 0


async def test_a_task_being_cancelled_does_not_send_directly() -> None:
    """A handler whose connection was just closed (its scope cancelled) may still produce
    its answer; only a writer task that still runs may send it."""
    async with tcp_pair() as (near, _far):
        writer = FrameWriter(near)
        with anyio.CancelScope() as scope:  # noqa: ASYNC100 (cancelled, not a timeout)
            scope.cancel()
            writer.write_nowait(b"answer")
        assert writer.queued_bytes == 6


async def test_a_failed_direct_send_is_reported_by_the_writer_task() -> None:
    async with tcp_pair() as (near, _far):
        writer = FrameWriter(near)
        near.extra(anyio.abc.SocketAttribute.raw_socket).close()
        writer.write_nowait(b"lost")  # the send fails: queued for the writer task to report
        assert writer.queued_bytes == 4
        with anyio.fail_after(5):
            await writer.run()
        assert writer.closed
        assert writer.failure is not None


def test_streams_other_than_trio_sockets_go_through_the_writer_task() -> None:
    async def on_asyncio() -> bool:
        async with tcp_pair() as (near, _far):
            return FrameWriter(near).direct_sends

    assert not asyncio.run(on_asyncio())
    assert not FrameWriter(GatedStream()).direct_sends
