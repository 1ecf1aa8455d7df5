"""The store's optional C accelerator, ``tidemq.store._records`` (``_records.c``).

It runs the store's per-record loops on the send path (check drafts, stamp and seal
records, hash their index keys) in C: the broker spent about half its CPU in those loops in
Python under batched sends (docs/performance.md). Each loop keeps its Python version, which
is the reference the tests hold the C code to, and what runs when the extension was not
built (no C compiler at install) or ``TIDEMQ_PURE_PYTHON=1`` is set.

``NATIVE`` is the extension module in use, or None.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Final


def _load() -> ModuleType | None:
    if os.environ.get("TIDEMQ_PURE_PYTHON") == "1":
        return None
    try:
        from tidemq.store import _records  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _records
    return module


NATIVE: Final = _load()
