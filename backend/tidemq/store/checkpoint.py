"""The checkpoint: how far each structure was flushed, and each queue's size at that time.

File layout (written atomically: temp file, fsync, rename)::

    magic u32 "TCKP" | version u32 | crc32c u32 of payload | payload length u32 | payload

The payload is a msgpack map: ``commit_log_flushed``, ``consume_queue_flushed`` and
``index_flushed`` (commit-log offsets, each a record boundary) and ``queues``
(``{topic: {queue_id: next queue offset}}``). Recovery starts scanning at the smallest
flushed offset, and checks each queue against its recorded size to find missing files.
A checkpoint that fails its checks is reported and ignored: recovery then scans the whole log.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from tidemq.common.crc import crc32c
from tidemq.store.files import atomic_write, read_file

_FRAME: Final = struct.Struct("<IIII")
_MAGIC: Final = 0x504B4354  # "TCKP"
_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    commit_log_flushed: int = 0
    consume_queue_flushed: int = 0
    index_flushed: int = 0
    queues: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def recovery_start(self) -> int:
        return min(self.commit_log_flushed, self.consume_queue_flushed, self.index_flushed)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    payload: bytes = msgpack.packb({
        "commit_log_flushed": checkpoint.commit_log_flushed,
        "consume_queue_flushed": checkpoint.consume_queue_flushed,
        "index_flushed": checkpoint.index_flushed,
        "queues": checkpoint.queues,
    }, use_bin_type=True, strict_types=False)
    return _FRAME.pack(_MAGIC, _VERSION, crc32c(payload), len(payload)) + payload


def decode_checkpoint(data: bytes) -> Checkpoint | str:
    """The checkpoint in ``data``, or a string saying why it is unusable."""
    if len(data) < _FRAME.size:
        return f"checkpoint too short ({len(data)} bytes)"
    magic, version, crc, length = _FRAME.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        return "checkpoint has a bad magic or version"
    payload = data[_FRAME.size:]
    if len(payload) != length or crc32c(payload) != crc:
        return "checkpoint fails its crc"
    try:
        raw: Any = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        queues = {str(topic): {int(q): int(n) for q, n in table.items()}
                  for topic, table in raw["queues"].items()}
        return Checkpoint(int(raw["commit_log_flushed"]), int(raw["consume_queue_flushed"]),
                          int(raw["index_flushed"]), queues)
    except (KeyError, TypeError, ValueError, AttributeError):
        return "checkpoint payload is malformed"


def write_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    """Blocking (fsync): run in a worker thread. Raises DiskFull/StoreError."""
    atomic_write(path, encode_checkpoint(checkpoint))


def read_checkpoint(path: str) -> Checkpoint | str | None:
    """The checkpoint at ``path``; None if there is none; a reason string if unusable."""
    data = read_file(path)
    if data is None:
        return None
    return decode_checkpoint(data)
