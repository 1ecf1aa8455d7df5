"""The process test_store_crash.py kills: appends batches until killed.

    python tests/crash/store_writer.py DATA_DIR SEED [async|sync]

Opens (and so recovers) the store in DATA_DIR, then appends batches of varying queues, sizes
and keys, and after each ``put_batch`` returns prints one JSON line per acknowledged batch
(flushed at once)::

    {"topic": ..., "queue_id": ..., "first": first queue offset, "count": n,
     "end": commit-log end offset, "digests": [sha256 of each body, hex], "keys": [...]}

With ``flush = "async"`` a batch is acknowledged once ``put_batch`` returns: its bytes are in
the page cache, which survives SIGKILL. The flusher is emulated by a ``flush()`` every few
batches, so the checkpoint, and where recovery starts scanning, move too. With ``sync`` a
batch is acknowledged only after its flush (fsync and checkpoint).

The first line is ``{"opened": ..., "report": ...}`` once recovery is done. The writer stops
by itself after ``--seconds`` (default 20) in case nobody kills it.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time

from tidemq.config import StoreConfig
from tidemq.protocol.record import encode_draft
from tidemq.store import MessageStore

TOPICS = ["orders", "audit", "%RETRY%billing"]


def config_for(directory: str, flush: str) -> StoreConfig:
    return StoreConfig(data_dir=directory, segment_size_bytes=64 * 1024,
                       max_message_size_bytes=16 * 1024, append_batch_bytes_max=32 * 1024,
                       consume_queue_segment_entries=64, index_slots=64,
                       index_entries_per_file=256, flush=flush)  # type: ignore[arg-type]


def body_for(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, rng.randrange(400), rng.randrange(400), rng.randrange(3_000)])
    kind = rng.randrange(3)
    if kind == 0:
        return bytes(size)  # zeros: must never read as the end of the log
    if kind == 1:
        return rng.randbytes(size)
    return (b"tide" * (size // 4 + 1))[:size]


def main(directory: str, seed: int, flush: str, seconds: float) -> None:
    rng = random.Random(seed)
    store = MessageStore(config_for(directory, flush))
    report = store.open()
    print(json.dumps({"opened": directory, "dropped": [d.action for d in report.dropped],
                      "clean": report.clean_shutdown}), flush=True)
    deadline = time.monotonic() + seconds
    batches = 0
    while time.monotonic() < deadline:
        topic = rng.choice(TOPICS)
        queue_id = rng.randrange(3)
        bodies = [body_for(rng) for _ in range(rng.choice([1, 1, 2, 3, 8]))]
        keys = [f"key-{seed}-{batches}-{i}" if rng.random() < 0.3 else "" for i in
                range(len(bodies))]
        drafts = [encode_draft(topic, body, {"KEYS": key} if key else None,
                               tag=rng.choice([None, "TagA"])) for body, key in
                  zip(bodies, keys, strict=True)]
        result = store.put_batch(topic, queue_id, drafts)
        if flush == "sync" or batches % 16 == 15:
            store.flush()
        print(json.dumps({
            "topic": topic, "queue_id": queue_id, "first": result.first_queue_offset,
            "count": result.count, "end": result.end_offset,
            "digests": [hashlib.sha256(body).hexdigest() for body in bodies],
            "keys": keys,
        }), flush=True)
        batches += 1
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "async",
         float(sys.argv[4]) if len(sys.argv) > 4 else 20.0)
