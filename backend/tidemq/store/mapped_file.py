"""A fixed-size, preallocated, memory-mapped segment file with reference-counted views.

Python's ``mmap.close()`` fails while a memoryview of the map is alive, and a segment may be
fsync'd by a flusher thread while the event loop appends to it. So users ``acquire()`` a
segment before holding it outside the current call and ``release()`` it after; ``destroy()``
(retention) only marks the segment, and the last release closes and unlinks it. This is
RocketMQ's ReferenceResource idea.

Resource handling: one fd and one mmap per segment, both closed by ``close()``/``destroy()``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from collections.abc import Callable
from typing import Final, cast, final

from tidemq.errors import StoreError
from tidemq.store.files import preallocate, store_error, zero_fill

_ZERO_CHUNK: Final = bytes(1 << 20)


@final
class MappedFile:
    """One segment: ``size`` bytes at ``path`` covering offsets [start, start + size)."""

    def __init__(self, path: str, start: int, size: int, *, create: bool,
                 zero_filled: bool = False) -> None:
        self.path = path
        self.start = start
        self.size = size
        self.end = start + size
        self.short_by_bytes = 0  # > 0 when the file on disk was shorter than a segment
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            self._fd = os.open(path, flags, 0o644)
        except OSError as error:
            raise store_error(error, "opening", path) from None
        try:
            actual = os.fstat(self._fd).st_size
            if create and zero_filled:
                zero_fill(self._fd, size, path)
            elif create or actual < size:
                self.short_by_bytes = 0 if create else size - actual
                preallocate(self._fd, size, path)
            elif actual > size:
                raise StoreError(f"{path}: {actual} bytes, larger than a segment ({size})")
            # Never populated here: ``populate`` does it, in a worker thread, ahead of the
            # writer (a new index file's pages fault in as its entries are written).
            self.map = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(self._fd)
            if create:
                _unlink_quietly(path)
            raise
        self.view = memoryview(self.map)
        self._references = 0
        self._destroy_requested = False
        self._closed = False
        self._lock = threading.Lock()

    # -- reference counting -------------------------------------------------------------
    def acquire(self) -> bool:
        """Take a reference; False when the segment is already being destroyed/closed."""
        with self._lock:
            if self._closed or self._destroy_requested:
                return False
            self._references += 1
            return True

    def release(self) -> None:
        with self._lock:
            assert self._references > 0, "release without acquire"
            self._references -= 1
            finish = self._destroy_requested and self._references == 0
        if finish:
            self._close_now(unlink=True)

    def destroy(self) -> None:
        """Close and delete the file once nobody holds a reference."""
        with self._lock:
            self._destroy_requested = True
            finish = self._references == 0
        if finish:
            self._close_now(unlink=True)

    @property
    def references(self) -> int:
        return self._references

    def populate(self, begin: int, length: int) -> bool:
        """Fill the page tables of bytes [begin, begin + length) (blocking: a worker
        thread). Holds the segment's lock meanwhile, so a close waits for this chunk
        rather than unmapping under it. Returns False once the segment is closed."""
        with self._lock:
            if self._closed or self._destroy_requested:
                return False
            populate_pages(self.map, length, begin)
            return True

    # -- I/O ----------------------------------------------------------------------------
    def sync(self) -> None:
        """fdatasync the file (blocking: call it from a worker thread). On Linux this writes
        back pages dirtied through the shared mapping, as msync(MS_SYNC) would."""
        try:
            os.fdatasync(self._fd)
        except OSError as error:
            raise store_error(error, "syncing", self.path) from None

    def zero(self, begin: int, end: int) -> None:
        """Zero bytes [begin, end) of this segment (relative positions)."""
        position = begin
        while position < end:
            step = min(len(_ZERO_CHUNK), end - position)
            self.map[position:position + step] = _ZERO_CHUNK[:step]
            position += step

    def close(self) -> None:
        self._close_now(unlink=False)

    def _close_now(self, *, unlink: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.view.release()
        self.map.close()
        os.close(self._fd)
        if unlink:
            _unlink_quietly(self.path)

    @property
    def closed(self) -> bool:
        return self._closed


def _load_madvise() -> Callable[[int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int], int], function)


_MADVISE: Final = _load_madvise()
_MADV_POPULATE_READ: Final = 22  # Linux 5.14+


def populate_pages(mapped: mmap.mmap, size: int, begin: int = 0) -> None:
    """Fill the page tables of a new mapping ahead of use.

    ``MAP_POPULATE`` would do it inside the ``mmap`` call, which holds the GIL for the whole
    populate (up to seconds per GiB on a cold VM) and freezes the event loop even when run
    in a worker thread. ``madvise(MADV_POPULATE_READ)`` called through ctypes releases the
    GIL. On kernels without it (EINVAL) pages are simply faulted in on first write.
    """
    if _MADVISE is None:
        return
    window = (ctypes.c_char * size).from_buffer(mapped, begin)
    try:
        _MADVISE(ctypes.addressof(window), size, _MADV_POPULATE_READ)
    finally:
        del window  # the export must be gone before the map can ever be closed


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
