"""Preparing commit-log segments ahead of need: zero-filled under a temporary name, then
published by a rename and adopted by the roll; leftovers of a crash are removed."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tidemq.store import segments
from tidemq.store.idle_priority import run_at_idle_priority
from tidemq.store.mapped_file import MappedFile
from tidemq.store.segments import SegmentQueue, segment_name

SIZE = 1024 * 1024


def test_a_zero_filled_segment_is_published_and_adopted(tmp_path: Path) -> None:
    queue = SegmentQueue(str(tmp_path), SIZE, zero_fill_prepared=True)
    queue.load()
    queue.prepare_next()
    assert sorted(os.listdir(tmp_path)) == [segment_name(0)]  # no temporary name left
    assert os.stat(tmp_path / segment_name(0)).st_size == SIZE
    assert queue.next_prepared  # the first segment, ready for the first create
    segment = queue.create(0)
    assert segment.path == str(tmp_path / segment_name(0))
    assert bytes(segment.map[:4096]) == bytes(4096)
    segment.map[0:5] = b"hello"  # the adopted mapping is the published file
    queue.prepare_next()  # the one after it
    assert queue.next_prepared
    queue.close()
    with open(tmp_path / segment_name(0), "rb") as file:
        assert file.read(5) == b"hello"


def test_a_preparation_cut_short_by_a_crash_is_removed_at_load(tmp_path: Path) -> None:
    leftover = tmp_path / (segment_name(SIZE) + ".preparing")
    leftover.write_bytes(bytes(100))
    queue = SegmentQueue(str(tmp_path), SIZE, zero_fill_prepared=True)
    queue.load()
    assert not leftover.exists()
    assert queue.empty
    queue.close()


def test_a_segment_created_by_a_roll_wins_over_a_late_preparation(tmp_path: Path) -> None:
    queue = SegmentQueue(str(tmp_path), SIZE, zero_fill_prepared=True)
    queue.load()
    first = queue.create(0)  # made inline: nothing was prepared
    first.map[0:3] = b"abc"
    queue.prepare_next()  # prepares the next one, never touches the first
    assert queue.next_prepared
    assert bytes(first.map[0:3]) == b"abc"
    assert sorted(os.listdir(tmp_path)) == [segment_name(0), segment_name(SIZE)]
    queue.close()


def test_a_preparation_finishing_after_close_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = SegmentQueue(str(tmp_path), SIZE, zero_fill_prepared=True)
    queue.load()
    queue.create(0)

    def made_then_closed(*args: Any, **kwargs: Any) -> MappedFile:
        made = MappedFile(*args, **kwargs)
        if kwargs.get("zero_filled"):
            queue.close()  # the store closes while the zeros were being written
        return made

    monkeypatch.setattr(segments, "MappedFile", made_then_closed)
    queue.prepare_next()
    assert sorted(os.listdir(tmp_path)) == [segment_name(0)]  # no segment, no temporary


def test_a_preparation_after_close_makes_nothing(tmp_path: Path) -> None:
    queue = SegmentQueue(str(tmp_path / "queue"), SIZE)
    queue.close()
    queue.prepare_next()  # a worker thread that lost the race with shutdown
    assert not (tmp_path / "queue").exists()
    assert not queue.next_prepared


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_pages_are_populated_ahead_of_the_writer_at_idle_priority(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, int]] = []  # (segment start, begin, length)
    threads: set[tuple[int, int]] = set()  # (scheduling policy, thread id)
    real = MappedFile.populate

    def recording(self: MappedFile, begin: int, length: int) -> bool:
        calls.append((self.start, begin, length))
        threads.add((os.sched_getscheduler(0), threading.get_ident()))
        return real(self, begin, length)

    monkeypatch.setattr(MappedFile, "populate", recording)
    queue = SegmentQueue(str(tmp_path), SIZE)
    queue.load()
    queue.prepare_next()
    assert calls == []  # making a segment populates nothing
    assert queue.populatable_until == SIZE  # the prepared first segment
    queue.populate_ahead(0, 256 * 1024)
    assert calls == [(0, 0, 256 * 1024)]
    assert {policy for policy, _ in threads} == {os.SCHED_IDLE}
    assert threading.get_ident() not in {ident for _, ident in threads}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller keeps its policy
    queue.populate_ahead(0, 256 * 1024)  # done already
    assert len(calls) == 1
    queue.populate_ahead(600 * 1024 + 100, 700 * 1024)  # the writer went past: from its page
    assert calls[-1] == (0, 600 * 1024, 100 * 1024)
    assert queue.populated_until == 700 * 1024

    queue.create(0)
    queue.prepare_next()  # the second segment: the populate goes on into it
    assert queue.populatable_until == 2 * SIZE
    queue.populate_ahead(SIZE - 4096, 3 * SIZE)  # stops where the made segments end
    assert calls[-2:] == [(0, SIZE - 4096, 4096), (SIZE, 0, SIZE)]
    assert queue.populated_until == 2 * SIZE
    queue.close()


def test_idle_priority_work_raises_in_the_caller() -> None:
    def failing() -> None:
        raise OSError("populate failed")

    with pytest.raises(OSError, match="populate failed"):
        run_at_idle_priority(failing)
