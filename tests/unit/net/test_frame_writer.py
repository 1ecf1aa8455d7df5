"""The send queue of a connection (tidemq.net._writer): order, batching, back-pressure."""

from __future__ import annotations

import anyio
import anyio.abc

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
