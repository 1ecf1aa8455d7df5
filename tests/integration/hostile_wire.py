"""Raw-socket helpers for the hostile-input tests of the broker and the name server: hand-
built frames (bypassing the codec, so they can be wrong on purpose) and a reader that waits
for the server to close."""

from __future__ import annotations

import struct

import msgpack
import trio

from tidemq.protocol.codes import RequestCode


def frame(header: object, body: bytes = b"") -> bytes:
    packed = msgpack.packb(header)
    return struct.pack(">II", 4 + len(packed) + len(body), len(packed)) + packed + body


def hello(opaque: int = 1) -> bytes:
    return frame({"code": int(RequestCode.HELLO), "opaque": opaque, "flags": 0,
                  "fields": {"version": 1, "client_id": "hostile"}})


async def read_until_closed(stream: trio.SocketStream, limit_s: float) -> bytes:
    """Everything the server sends until it closes (fails the test if it never does)."""
    received = bytearray()
    with trio.fail_after(limit_s):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return bytes(received)
            if not chunk:
                return bytes(received)
            received += chunk
