"""The key index: find records by user key or unique id, on disk, RocketMQ IndexFile style.

Each index file is a fixed-size hash table with chained entries, mmap'd::

    header (48 bytes)
      begin_timestamp_ms u64 | end_timestamp_ms u64 | begin_commit_offset u64 |
      indexed_until u64 (commit offset: records before it are indexed) |
      entry_count u32 | slots u32 | entries_max u32 | reserved u32
    slot table: slots x u32           entry number + 1 of the newest entry in the slot, 0 empty
    entries:   entries_max x 20 bytes
      key_hash u32 | commit_offset u64 | timestamp_delta_s u32 | previous_entry u32 (+1, 0 end)

A lookup hashes the key, walks the slot's chain newest first and returns candidate commit
offsets; hashes collide, so the caller confirms the key in the record itself. Files are
named by the first commit offset they index; a full file is closed and a new one started.
``indexed_until`` makes re-dispatch at recovery idempotent: records before it are skipped.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from typing import Final, final

import crc32c as _crc32c_module

from tidemq.common.buffers import Buffer
from tidemq.common.crc import crc32c
from tidemq.errors import StoreCorrupt
from tidemq.store.files import store_error
from tidemq.store.mapped_file import MappedFile
from tidemq.store.native import NATIVE

HEADER: Final = struct.Struct("<QQQQIIII")
SLOT: Final = struct.Struct("<I")
ENTRY: Final = struct.Struct("<IQII")
_NAME: Final = re.compile(r"^\d{20}$")


def key_hash(key: str) -> int:
    return crc32c(key.encode())


def key_hash_seed(prefix: bytes) -> int:
    """The CRC of an index key's first bytes (``topic#``): ``key_hash_continued(rest,
    seed)`` is then ``key_hash`` of the whole key, without building the key's string."""
    return crc32c(prefix)


key_hash_continued: Final[Callable[[Buffer, int], int]] = _crc32c_module.crc32c
"""``crc32c(data, value)``: the CRC continued from ``value`` over ``data`` (the C function
itself, called once per key on the send path)."""


@final
class IndexFile:
    def __init__(self, segment: MappedFile, slots: int, entries_max: int) -> None:
        self.segment = segment
        self.slots = slots
        self.entries_max = entries_max
        self._entries_start = HEADER.size + slots * SLOT.size
        (self.begin_timestamp_ms, self.end_timestamp_ms, self.begin_commit_offset,
         self.indexed_until, self.entry_count, stored_slots, stored_entries,
         _) = HEADER.unpack_from(segment.map, 0)
        if stored_slots == 0:  # new file
            self._write_header()
            return
        on_disk = segment.size - segment.short_by_bytes
        needed = HEADER.size + stored_slots * SLOT.size + stored_entries * ENTRY.size
        if not stored_entries or needed > on_disk or self.entry_count > stored_entries or (
                self.entry_count and self.begin_timestamp_ms > self.end_timestamp_ms):
            raise StoreCorrupt(f"{segment.path}: index header ({stored_slots} slots, "
                               f"{self.entry_count}/{stored_entries} entries) does not fit "
                               f"its {on_disk} bytes or its own ranges")
        if (stored_slots, stored_entries) != (slots, entries_max):
            # An index written with other sizes: keep reading it with its own geometry.
            self.slots, self.entries_max = stored_slots, stored_entries
            self._entries_start = HEADER.size + self.slots * SLOT.size
        self._repair_slots()

    def _repair_slots(self) -> None:
        """Point every slot at a recovered entry again after a crash.

        ``put`` writes the entry, then the slot; the header (``entry_count``) is written at
        ``mark_indexed``. A kill in between leaves slots naming entries past
        ``entry_count``; they will be overwritten by re-indexing, so each such slot is
        moved back along its chain (entries are written before their slot, so the chain
        links are whole) to the newest entry that was recovered.
        """
        table = self.segment.view[HEADER.size:HEADER.size + self.slots * SLOT.size].cast("I")
        try:
            if max(table, default=0) <= self.entry_count:
                return
            for slot, number in enumerate(table):
                while number > self.entry_count:
                    previous = ENTRY.unpack_from(
                        self.segment.map, self._entries_start + (number - 1) * ENTRY.size)[3]
                    number = previous if previous < number else 0
                table[slot] = number
        finally:
            table.release()

    @staticmethod
    def file_size(slots: int, entries_max: int) -> int:
        size = HEADER.size + slots * SLOT.size + entries_max * ENTRY.size
        return size + (-size % 4096)

    @property
    def full(self) -> bool:
        return bool(self.entry_count >= self.entries_max)

    def put(self, key: str, commit_offset: int, timestamp_ms: int) -> None:
        assert not self.full
        hashed = key_hash(key)
        slot_position = HEADER.size + (hashed % self.slots) * SLOT.size
        mapped = self.segment.map
        previous = SLOT.unpack_from(mapped, slot_position)[0]
        if self.entry_count == 0:
            self.begin_timestamp_ms = timestamp_ms
            self.begin_commit_offset = commit_offset
        delta_s = max(0, (timestamp_ms - self.begin_timestamp_ms) // 1000)
        ENTRY.pack_into(mapped, self._entries_start + self.entry_count * ENTRY.size,
                        hashed, commit_offset, min(delta_s, 0xFFFFFFFF), previous)
        self.entry_count += 1
        SLOT.pack_into(mapped, slot_position, self.entry_count)
        self.end_timestamp_ms = max(self.end_timestamp_ms, timestamp_ms)

    def put_hashes(self, items: list[tuple[int, int]], timestamp_ms: int) -> None:
        """``put`` for a batch stored at one time, keys given by their ``key_hash``: the
        same entries, with the lookups and struct methods bound once (the live path
        indexes a unique id per message)."""
        if not items:
            return
        assert self.entry_count + len(items) <= self.entries_max
        if self.entry_count == 0:
            self.begin_timestamp_ms = timestamp_ms
            self.begin_commit_offset = items[0][1]
        delta_s = min(max(0, (timestamp_ms - self.begin_timestamp_ms) // 1000), 0xFFFFFFFF)
        mapped = self.segment.map
        slots = self.slots
        if NATIVE is not None:  # the loop below, in C
            self.entry_count = NATIVE.index_put(mapped, HEADER.size, self._entries_start,
                                                self.entry_count, slots, items, delta_s)
            self.end_timestamp_ms = max(self.end_timestamp_ms, timestamp_ms)
            return
        entry_size = ENTRY.size
        pack_entry = ENTRY.pack_into
        position = self._entries_start + self.entry_count * entry_size
        count = self.entry_count
        # The slot table as u32s (as _repair_slots reads it): an index, not two struct calls
        table = self.segment.view[HEADER.size:self._entries_start].cast("I")
        try:
            for hashed, commit_offset in items:
                slot = hashed % slots
                pack_entry(mapped, position, hashed, commit_offset, delta_s, table[slot])
                position += entry_size
                count += 1
                table[slot] = count
        finally:
            table.release()
        self.entry_count = count
        self.end_timestamp_ms = max(self.end_timestamp_ms, timestamp_ms)

    def mark_indexed(self, commit_offset_end: int) -> None:
        self.indexed_until = commit_offset_end
        self._write_header()

    def lookup(self, key: str, limit: int, begin_ms: int, end_ms: int) -> list[int]:
        """Commit offsets of entries whose key hash matches, newest first."""
        hashed = key_hash(key)
        mapped = self.segment.map
        number = SLOT.unpack_from(mapped, HEADER.size + (hashed % self.slots) * SLOT.size)[0]
        found: list[int] = []
        steps = 0
        while number and len(found) < limit and steps < self.entries_max:
            if number > self.entry_count:
                break  # a slot pointing past the recovered entries: stale
            entry_hash, commit_offset, delta_s, previous = ENTRY.unpack_from(
                mapped, self._entries_start + (number - 1) * ENTRY.size)
            timestamp_ms = self.begin_timestamp_ms + delta_s * 1000
            if entry_hash == hashed and begin_ms <= timestamp_ms + 999 and \
                    timestamp_ms <= end_ms:
                found.append(commit_offset)
            if previous >= number:
                break  # chains always point back: anything else is damage
            number = previous
            steps += 1
        return found

    def _write_header(self) -> None:
        HEADER.pack_into(self.segment.map, 0, self.begin_timestamp_ms, self.end_timestamp_ms,
                         self.begin_commit_offset, self.indexed_until, self.entry_count,
                         self.slots, self.entries_max, 0)

    def sync(self) -> None:
        self._write_header()
        if self.segment.acquire():
            try:
                self.segment.sync()
            finally:
                self.segment.release()


@final
class KeyIndex:
    """The sequence of index files in ``directory``."""

    def __init__(self, directory: str, slots: int, entries_per_file: int) -> None:
        self.directory = directory
        self.slots = slots
        self.entries_per_file = entries_per_file
        self.files: list[IndexFile] = []
        self.problems: list[str] = []  # damage found by load

    def load(self) -> None:
        """Open the index files. A damaged one (a header that does not fit its file, a
        truncated file) is deleted with every later file, and said so in ``problems``:
        the index is derived data, and ``indexed_until`` then falls back so that recovery
        indexes that range again."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            names = sorted(n for n in os.listdir(self.directory) if _NAME.match(n))
        except OSError as error:
            raise store_error(error, "listing", self.directory) from None
        size = IndexFile.file_size(self.slots, self.entries_per_file)
        for number, name in enumerate(names):
            path = os.path.join(self.directory, name)
            actual = os.path.getsize(path)
            segment = MappedFile(path, int(name), max(actual, size) if actual else size,
                                 create=False)
            try:
                self.files.append(IndexFile(segment, self.slots, self.entries_per_file))
            except StoreCorrupt as error:
                segment.destroy()
                for later in names[number + 1:]:
                    os.unlink(os.path.join(self.directory, later))
                self.problems.append(f"{error}: deleted with {len(names) - number - 1} "
                                     f"later file(s), indexed again")
                break

    @property
    def indexed_until(self) -> int:
        return self.files[-1].indexed_until if self.files else 0

    def put(self, key: str, commit_offset: int, timestamp_ms: int) -> None:
        """Index ``key`` -> ``commit_offset``. Raises DiskFull if a new file cannot be made."""
        self._writable(commit_offset).put(key, commit_offset, timestamp_ms)

    def put_hashes(self, items: list[tuple[int, int]], timestamp_ms: int) -> None:
        """Index a batch's keys, as (``key_hash``, commit offset) pairs (after
        ``ensure_room`` for them: they fit one file)."""
        if items:
            self._writable(items[0][1]).put_hashes(items, timestamp_ms)

    def ensure_room(self, count: int, commit_offset: int) -> None:
        """Make sure the next ``count`` entries fit (may start a new file)."""
        current = self._writable(commit_offset)
        if current.entry_count + count > current.entries_max:
            self._start_file(commit_offset)

    def mark_indexed(self, commit_offset_end: int) -> None:
        if self.files:
            self.files[-1].mark_indexed(commit_offset_end)

    def _writable(self, commit_offset: int) -> IndexFile:
        if not self.files or self.files[-1].full:
            return self._start_file(commit_offset)
        return self.files[-1]

    def _start_file(self, commit_offset: int) -> IndexFile:
        until = self.indexed_until
        size = IndexFile.file_size(self.slots, self.entries_per_file)
        name = f"{commit_offset:020d}"
        path = os.path.join(self.directory, name)
        if self.files and self.files[-1].segment.path == path:
            return self.files[-1]
        segment = MappedFile(path, commit_offset, size, create=True)
        index_file = IndexFile(segment, self.slots, self.entries_per_file)
        index_file.mark_indexed(until)  # on disk too: a crash now must not read it as 0
        self.files.append(index_file)
        return index_file

    def lookup(self, key: str, limit: int, begin_ms: int = 0,
               end_ms: int = 2**63 - 1) -> list[int]:
        """Candidate commit offsets for ``key``, newest first, at most ``limit``."""
        found: list[int] = []
        for index_file in reversed(self.files):
            if index_file.entry_count == 0:
                continue
            if index_file.end_timestamp_ms < begin_ms:
                break
            found.extend(index_file.lookup(key, limit - len(found), begin_ms, end_ms))
            if len(found) >= limit:
                break
        return found

    def truncate(self, commit_offset: int) -> None:
        """After the log was cut at ``commit_offset``: index again from there. Entries that
        point past the cut stay but never match: lookups confirm the key in the record."""
        if self.files and self.files[-1].indexed_until > commit_offset:
            self.files[-1].mark_indexed(commit_offset)

    def delete_below(self, commit_offset_min: int) -> int:
        """Retention: drop files whose every entry points below the log's minimum.

        A file's entries all point below the offset the next file is named by (it was
        started at the write offset of its time), which, unlike the next file's first
        entry, exists even while that file is still empty.
        """
        count = 0
        while len(self.files) > 1 and self.files[1].segment.start <= commit_offset_min:
            self.files.pop(0).segment.destroy()
            count += 1
        return count

    def sync(self) -> None:
        for index_file in list(self.files[-2:]):
            index_file.sync()

    def close(self, *, write_headers: bool = True) -> None:
        """Close every file; ``write_headers=False`` leaves headers as a crash would."""
        for index_file in self.files:
            if write_headers:
                index_file._write_header()
            index_file.segment.close()
