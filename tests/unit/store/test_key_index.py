"""The on-disk key index: chains survive a crash between an entry and its header, and
retention drops only files whose entries all point below the log's minimum."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemq.store import mapped_file
from tidemq.store.index import KeyIndex, key_hash

SLOTS = 16


def colliding_keys(count: int) -> list[str]:
    """``count`` keys that share one slot of a 16-slot table."""
    target = key_hash("k0") % SLOTS
    keys = [k for k in (f"k{i}" for i in range(1000)) if key_hash(k) % SLOTS == target]
    assert len(keys) >= count
    return keys[:count]


def test_lookup_walks_the_chain_newest_first(tmp_path: Path) -> None:
    index = KeyIndex(str(tmp_path), SLOTS, 64)
    index.load()
    first, second = colliding_keys(2)
    for offset, key in enumerate([first, second, first, second, first]):
        index.put(key, 100 * offset, 1_000)
    index.mark_indexed(500)
    assert index.lookup(first, 10) == [400, 200, 0]
    assert index.lookup(second, 10) == [300, 100]
    assert index.lookup(first, 2) == [400, 200]
    assert index.lookup("absent", 10) == []
    index.close()


def test_a_crash_between_an_entry_and_its_header_keeps_older_entries(tmp_path: Path) -> None:
    """``put`` writes entry then slot; the header (entry count) waits for ``mark_indexed``.
    After a kill in between, the slot names an entry past the count (was: the whole chain
    behind it was unreachable, and re-indexing linked it to itself)."""
    first, second, third = colliding_keys(3)
    index = KeyIndex(str(tmp_path), SLOTS, 64)
    index.load()
    index.put(first, 100, 1_000)
    index.mark_indexed(200)
    index.put(second, 200, 1_000)  # the process dies before mark_indexed
    index.close(write_headers=False)

    recovered = KeyIndex(str(tmp_path), SLOTS, 64)
    recovered.load()
    assert recovered.lookup(first, 10) == [100]
    assert recovered.lookup(second, 10) == []  # its record is re-indexed by recovery
    recovered.put(third, 200, 1_000)  # another record took offset 200 after truncation
    recovered.mark_indexed(300)
    assert recovered.lookup(first, 10) == [100]
    assert recovered.lookup(third, 10) == [200]
    recovered.close()
    again = KeyIndex(str(tmp_path), SLOTS, 64)
    again.load()
    assert (again.lookup(first, 10), again.lookup(third, 10)) == ([100], [200])
    again.close()


def test_full_files_roll_and_lookups_span_files(tmp_path: Path) -> None:
    index = KeyIndex(str(tmp_path), SLOTS, 16)
    index.load()
    for offset in range(40):
        index.put("same", offset * 10, 1_000 + offset)
        index.mark_indexed(offset * 10 + 10)
    assert len(index.files) == 3
    assert index.lookup("same", 100) == [offset * 10 for offset in reversed(range(40))]
    index.close()
    reopened = KeyIndex(str(tmp_path), SLOTS, 16)
    reopened.load()
    assert len(reopened.lookup("same", 100)) == 40
    reopened.close()


def test_retention_keeps_a_file_while_the_next_one_is_empty(tmp_path: Path) -> None:
    """A file started ahead of need (``ensure_room``) has no entries yet: its first entry
    offset is unknown (was 0, and retention dropped the previous file with live keys)."""
    index = KeyIndex(str(tmp_path), SLOTS, 16)
    index.load()
    for offset in range(16):
        index.put(f"k{offset}", 1_000 + offset, 0)
    index.mark_indexed(2_000)
    index.ensure_room(4, 5_000)  # full: a new, still empty file named 5000
    assert [f.segment.start for f in index.files] == [1_000, 5_000]
    assert index.delete_below(1_005) == 0
    assert index.lookup("k10", 5) == [1_010]
    assert index.delete_below(5_000) == 1
    assert index.lookup("k10", 5) == []
    index.close()


def test_a_new_file_keeps_the_indexed_mark_through_a_crash(tmp_path: Path) -> None:
    """A file started when the last one filled up carries on its predecessor's mark, on
    disk at once (was: only in memory, so a crash before the next batch read it as 0 and
    recovery indexed the whole log again, duplicating every entry)."""
    index = KeyIndex(str(tmp_path), SLOTS, 16)
    index.load()
    for offset in range(16):
        index.put(f"k{offset}", 100 * offset, 0)
    index.mark_indexed(1_600)
    index.ensure_room(1, 1_600)
    assert len(index.files) == 2
    index.close(write_headers=False)
    recovered = KeyIndex(str(tmp_path), SLOTS, 16)
    recovered.load()
    assert recovered.indexed_until == 1_600
    assert recovered.problems == []
    recovered.close()


def test_put_hashes_writes_exactly_what_put_writes(tmp_path: Path) -> None:
    items = [(f"orders#k{i % 37}", 1000 + 100 * i) for i in range(200)]  # collisions too
    one_by_one = KeyIndex(str(tmp_path / "one"), SLOTS, 256)
    together = KeyIndex(str(tmp_path / "many"), SLOTS, 256)
    for index in (one_by_one, together):
        index.load()
        index.ensure_room(len(items), items[0][1])
    for key, offset in items[:50]:  # a file already holding entries, then a batch
        one_by_one.put(key, offset, 5_000)
        together.put(key, offset, 5_000)
    for key, offset in items[50:]:
        one_by_one.put(key, offset, 9_000)
    together.put_hashes([(key_hash(key), offset) for key, offset in items[50:]], 9_000)
    for index in (one_by_one, together):
        index.mark_indexed(99_999)
    assert bytes(one_by_one.files[-1].segment.map) == bytes(together.files[-1].segment.map)
    assert together.lookup("orders#k3", 100) == one_by_one.lookup("orders#k3", 100)
    one_by_one.close()
    together.close()


def test_a_new_index_file_is_not_populated_where_it_is_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An index file starts on the send path (the event loop): populating its ~42 MB of
    pages there stalled the loop for tens of milliseconds; they fault in as used."""
    populated: list[int] = []
    monkeypatch.setattr(mapped_file, "populate_pages",
                        lambda mapped, size, begin=0: populated.append(size))
    index = KeyIndex(str(tmp_path), SLOTS, 64)
    index.load()
    index.put("k", 0, 1_000)
    assert len(index.files) == 1
    assert populated == []
    assert index.lookup("k", 10) == [0]
