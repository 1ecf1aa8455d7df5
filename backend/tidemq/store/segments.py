"""An ordered run of same-size segment files, named by their first byte's offset.

    directory/
      00000000000000000000      segment covering [0, size)
      00000000001073741824      segment covering [size, 2 * size)
      ...

Names are the zero-padded 20-digit offset of the segment's first byte (RocketMQ's
MappedFileQueue). The queue finds the segment of an offset by bisection, creates the next
segment (using one preallocated ahead of need when there is one), and drops segments from
the front (retention) or the back (recovery truncation).
"""

from __future__ import annotations

import bisect
import os
import re
import threading
from typing import Final, final

from tidemq.errors import StoreError
from tidemq.store.files import store_error
from tidemq.store.idle_priority import run_at_idle_priority
from tidemq.store.mapped_file import MappedFile

_NAME: Final = re.compile(r"^\d{20}$")
_PREPARING: Final = ".preparing"
POPULATE_CHUNK_BYTES: Final = 4 * 1024 * 1024
"""A close waits at most for one chunk's populate (at idle priority on busy cores, that
chunk can take a while: keep it small)."""
_PAGE: Final = 4096


def segment_name(start: int) -> str:
    return f"{start:020d}"


@final
class SegmentQueue:
    """Segments of ``segment_size`` bytes in ``directory``."""

    def __init__(self, directory: str, segment_size: int, *,
                 zero_fill_prepared: bool = False) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.zero_fill_prepared = zero_fill_prepared
        """Prepare segments by writing zeros (``files.zero_fill``) rather than fallocate."""
        self.segments: list[MappedFile] = []
        self._starts: list[int] = []
        self._prepared: MappedFile | None = None
        self._populated_until = 0
        """``populate_ahead`` has populated the pages before this offset (or passed them:
        the writer was already there)."""
        self._prepare_lock = threading.Lock()  # prepare_next runs in a worker thread
        self._closed = False
        self.gaps: list[tuple[int, int]] = []  # (expected start, found start) on load

    def load(self) -> None:
        """Open the segments on disk. Records gaps in the sequence in ``self.gaps``."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            listing = os.listdir(self.directory)
            for name in listing:  # a preparation a crash interrupted: never a segment yet
                if name.endswith(_PREPARING):
                    os.unlink(os.path.join(self.directory, name))
            names = sorted(name for name in listing if _NAME.match(name))
        except OSError as error:
            raise store_error(error, "listing", self.directory) from None
        for name in names:
            start = int(name)
            if start % self.segment_size:
                raise StoreError(f"{self.directory}/{name}: not on a segment boundary "
                                 f"(segment size {self.segment_size})")
            if self.segments and self.segments[-1].end != start:
                self.gaps.append((self.segments[-1].end, start))
            segment = MappedFile(os.path.join(self.directory, name), start,
                                 self.segment_size, create=False)
            self.segments.append(segment)
            self._starts.append(start)

    @property
    def empty(self) -> bool:
        return not self.segments

    @property
    def first(self) -> MappedFile:
        return self.segments[0]

    @property
    def last(self) -> MappedFile:
        return self.segments[-1]

    @property
    def min_offset(self) -> int:
        return self.segments[0].start if self.segments else 0

    def find(self, offset: int) -> MappedFile | None:
        """The segment holding ``offset``, or None."""
        index = bisect.bisect_right(self._starts, offset) - 1
        if index < 0:
            return None
        segment = self.segments[index]
        return segment if offset < segment.end else None

    def create(self, start: int) -> MappedFile:
        """Create (or adopt the prepared) segment starting at ``start``; append it.

        Holds the preparation lock throughout: when the preparer thread is still making
        this very segment, the caller waits for it rather than racing it for the file.

        Raises:
            DiskFull: no room for the segment; nothing was changed.
        """
        assert start % self.segment_size == 0
        assert not self.segments or start == self.segments[-1].end, "segments are contiguous"
        with self._prepare_lock:
            prepared, self._prepared = self._prepared, None
            if prepared is not None and prepared.start == start:
                segment = prepared
            else:
                if prepared is not None:
                    prepared.destroy()
                if not self.segments:  # a queue's first segment: maybe no directory yet
                    self._make_directory()
                # Not prepared ahead (a fresh store, or a burst outran the preparer): no
                # populate here, on the caller's thread; pages fault in as they are written.
                segment = MappedFile(self._path(start), start, self.segment_size,
                                     create=True)
            self.segments.append(segment)
            self._starts.append(start)
        return segment

    @property
    def next_prepared(self) -> bool:
        """Whether the segment after the last one is already made (no lock: a hint)."""
        prepared = self._prepared
        return prepared is not None and \
            prepared.start == (self.segments[-1].end if self.segments else 0)

    def prepare_next(self) -> None:
        """Preallocate and map the segment after the last one (blocking: run in a thread).
        Its pages are populated later, as the writer comes near them (``populate_ahead``).

        Raises:
            DiskFull: no room; the next ``create`` will try again.
        """
        with self._prepare_lock:
            start = self.segments[-1].end if self.segments else 0
            if self._closed or (self._prepared is not None and self._prepared.start == start):
                return  # closed meanwhile (a put's preparation racing shutdown), or done
            if not self.segments:
                self._make_directory()
            path = self._path(start)
            if os.path.exists(path):
                return
            if not self.zero_fill_prepared:
                self._prepared = MappedFile(path, start, self.segment_size, create=True)
        if self.zero_fill_prepared:
            # Written under a temporary name, outside the lock (it takes seconds per GiB),
            # and published by a rename: a roll meanwhile creates the segment itself, and
            # this one is dropped. Never adopted half-written: the zeros would land on
            # records.
            temporary = path + _PREPARING
            _unlink_if_present(temporary)
            made = MappedFile(temporary, start, self.segment_size, create=True, zero_filled=True)
            with self._prepare_lock:
                current_end = self.segments[-1].end if self.segments else 0
                if self._closed or current_end != start or os.path.exists(path) or \
                        self._prepared is not None:
                    made.destroy()
                    return
                try:
                    os.rename(temporary, path)
                except OSError as error:
                    made.destroy()
                    raise store_error(error, "publishing", path) from None
                made.path = path
                self._prepared = made

    @property
    def populated_until(self) -> int:
        return self._populated_until

    @property
    def populatable_until(self) -> int:
        """The end of the segments there are to populate: the prepared one's if any."""
        prepared = self._prepared
        if prepared is not None:
            return prepared.end
        return self.segments[-1].end if self.segments else 0

    def populate_ahead(self, begin: int, end: int, *, at_idle_priority: bool = True) -> None:
        """Fill the page tables of [begin, end) in the last segment and the prepared one,
        skipping what an earlier call did (blocking: a worker thread).

        The pages are populated ``POPULATE_CHUNK_BYTES`` at a time (each chunk under its
        segment's lock, so a close waits for one chunk at most) by a thread of idle
        priority (``idle_priority``): it takes only cores nothing else wants (unless
        ``at_idle_priority`` is False: before a store serves, say). A roll
        meanwhile adopts the prepared segment as it is; populating only prefaults pages,
        it never changes their bytes.

        Populating follows the writer rather than a whole segment at once: a populate is
        CPU work (on a cold VM up to ~2 s per GiB), done for bytes about to be written,
        not for a gigabyte that may take hours to fill.
        """
        position = max(begin, self._populated_until)
        position -= position % _PAGE
        targets = [segment for segment in (*self.segments[-1:], self._prepared)
                   if segment is not None]
        if position >= end or not targets:
            return

        def populate() -> None:
            nonlocal position
            while position < end:
                segment = next((s for s in targets if s.start <= position < s.end), None)
                if segment is None:
                    return  # past the segments made so far
                chunk_end = min(end, segment.end, position + POPULATE_CHUNK_BYTES)
                if not segment.populate(position - segment.start, chunk_end - position):
                    return  # closed or destroyed meanwhile
                position = self._populated_until = chunk_end

        if at_idle_priority:
            run_at_idle_priority(populate, name="tidemq-populate")
        else:
            populate()

    def drop_front(self, count: int) -> list[MappedFile]:
        """Remove the first ``count`` segments from the queue and destroy them."""
        dropped = self.segments[:count]
        del self.segments[:count]
        del self._starts[:count]
        for segment in dropped:
            segment.destroy()
        return dropped

    def drop_after(self, offset: int) -> None:
        """Destroy every segment that starts after ``offset`` (recovery truncation)."""
        while self.segments and self.segments[-1].start > offset:
            self.segments.pop().destroy()
            self._starts.pop()

    def close(self) -> None:
        for segment in self.segments:
            segment.close()
        with self._prepare_lock:
            self._closed = True  # a preparation still zero-filling drops its file
            if self._prepared is not None:
                self._prepared.destroy()
                self._prepared = None

    def _make_directory(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as error:
            raise store_error(error, "creating", self.directory) from None

    def _path(self, start: int) -> str:
        return os.path.join(self.directory, segment_name(start))


def _unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
