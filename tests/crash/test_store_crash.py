"""kill -9 at random moments: nothing acknowledged is lost, nothing partial is visible.

Each round starts ``store_writer.py`` on the same directory (so it first recovers from the
previous round's kill), lets it append for a random while, and SIGKILLs it: while it opens
and recovers, while it appends, rolls segments or flushes. Then the test opens the
directory in-process (the kernel released the dead writer's flock) and checks:

* recovery dropped nothing but a torn tail past the last acknowledged batch;
* every record of every acknowledged batch is served at its queue offset with its body
  (sha256), and its keys find it; acknowledged batches of earlier rounds too;
* the log holds only whole, valid records, and every consume-queue entry names a valid
  record of its topic, queue and queue offset (``check_store``);

then stops the store cleanly or abandons it (so the next writer recovers an unclean stop
twice over). A final round uses ``flush = "sync"``. The seed is printed; set TIDEMQ_SEED to
replay a run (kill timing still depends on the machine's speed).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tidemq.config import StoreConfig
from tidemq.protocol.record import iter_records
from tidemq.store import MessageStore
from tidemq.testing.store_checks import check_store

WRITER = Path(__file__).with_name("store_writer.py")
ROUNDS = 24
BUDGET_SECONDS = 45.0  # rounds stop early (at least 20 run) if the machine is slow


@dataclass(frozen=True)
class Batch:
    topic: str
    queue_id: int
    first: int
    end: int
    digests: tuple[str, ...]
    keys: tuple[str, ...]


def config_for(directory: Path) -> StoreConfig:
    return StoreConfig(data_dir=str(directory), segment_size_bytes=64 * 1024,
                       max_message_size_bytes=16 * 1024, append_batch_bytes_max=32 * 1024,
                       consume_queue_segment_entries=64, index_slots=64,
                       index_entries_per_file=256)


def run_writer(directory: Path, seed: int, flush: str, delay_s: float
               ) -> tuple[list[Batch], bool]:
    """Run the writer for ``delay_s`` and SIGKILL it. Returns the batches it acknowledged
    (whole lines only) and whether it had finished opening."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, str(WRITER), str(directory), str(seed),
                                flush], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env)
    try:
        process.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, \
        f"the writer exited by itself ({process.returncode}): {stderr.decode()[-2000:]}"
    lines = stdout.decode().split("\n")[:-1]  # the text after the last newline is torn
    opened = bool(lines) and "opened" in json.loads(lines[0])
    batches = [Batch(b["topic"], b["queue_id"], b["first"], b["end"],
                     tuple(b["digests"]), tuple(b["keys"]))
               for b in map(json.loads, lines[1:] if opened else [])]
    return batches, opened


def verify(directory: Path, acknowledged: list[Batch], *, context: str,
           abandon: bool, writer_opened: bool) -> bool:
    """Open in-process and check everything above. Returns whether a torn tail was cut."""
    store = MessageStore(config_for(directory))
    report = store.open()
    try:
        if writer_opened:  # (killed earlier, it may not even have taken the lock)
            assert not report.clean_shutdown, context
        last_end = max((b.end for b in acknowledged), default=0)
        for dropped in report.dropped:  # only a torn tail nobody was told about
            assert dropped.action == "truncated", (context, report)
            assert dropped.offset >= last_end, (context, report)
        assert report.consume_queue_problems == [], (context, report)
        assert report.index_problems == [], (context, report)
        records = check_store(store)
        assert records, context
        served = {}
        for topic, queue_id in {(b.topic, b.queue_id) for b in acknowledged}:
            got = store.get_messages(topic, queue_id, 0, max_count=1 << 20,
                                     max_bytes=1 << 40)
            served[(topic, queue_id)] = [(r.queue_offset, hashlib.sha256(r.body).hexdigest(),
                                          r.keys) for r in iter_records(got.data)]
        for batch in acknowledged:
            queue = served[(batch.topic, batch.queue_id)]
            for index, digest in enumerate(batch.digests):
                queue_offset = batch.first + index
                assert queue_offset < len(queue), (context, batch)
                found_offset, found_digest, keys = queue[queue_offset]
                assert (found_offset, found_digest) == (queue_offset, digest), (context, batch)
                key = batch.keys[index]
                assert keys == ([key] if key else []), (context, batch)
        for batch in acknowledged[-40:]:  # keys of recent batches (all of them is slow)
            for index, key in enumerate(batch.keys):
                if key:
                    found = store.lookup_by_key(batch.topic, key)
                    assert [r.queue_offset for r in found] == [batch.first + index], context
        return bool(report.dropped)
    finally:
        if abandon:
            store.abandon()
        else:
            store.close()


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int(os.environ.get("TIDEMQ_SEED", random.randrange(2**32)))
    print(f"TIDEMQ_SEED={seed}")
    rng = random.Random(seed)
    directory = tmp_path / "data"
    acknowledged: list[Batch] = []
    started = time.monotonic()
    torn_tails = killed_before_open = 0
    for round_number in range(1, ROUNDS + 2):
        out_of_time = round_number > 20 and time.monotonic() - started > BUDGET_SECONDS
        sync = round_number == ROUNDS + 1 or out_of_time  # the last round flushes sync
        delay = rng.uniform(0.3, 1.2) if rng.random() < 0.8 else rng.uniform(0.05, 0.3)
        context = f"TIDEMQ_SEED={seed} round {round_number} " \
                  f"({'sync' if sync else 'async'}, killed after {delay:.3f} s)"
        batches, opened = run_writer(directory, seed + round_number,
                                     "sync" if sync else "async", delay)
        killed_before_open += not opened
        acknowledged.extend(batches)
        if acknowledged:
            torn_tails += verify(directory, acknowledged, context=context,
                                 abandon=rng.random() < 0.4, writer_opened=opened)
        if sync:
            break
    assert round_number >= 21
    assert len(acknowledged) > 100, f"TIDEMQ_SEED={seed}: the writer barely ran"
    print(f"{round_number} rounds, {len(acknowledged)} acknowledged batches, "
          f"{torn_tails} torn tails repaired, {killed_before_open} kills before the store "
          f"opened, {time.monotonic() - started:.1f} s")
