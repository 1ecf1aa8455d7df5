"""Small JSON metadata files (topics, consumer offsets), written atomically.

Each file is ``{"version": 1, "data": ...}``; writes go through ``atomic_write`` (temp file,
fsync, rename, fsync directory), so a crash leaves the old or the new file, never a mix. A
file that does not parse is kept aside as ``<name>.corrupt`` and reported, and the node
starts from an empty table rather than refusing to start.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from tidemq.store.files import atomic_write, read_file

logger = logging.getLogger("tidemq.broker.metadata")

_VERSION = 1


def load_json(path: str) -> Any | None:
    """The ``data`` of a metadata file; None when absent or unreadable (then reported)."""
    raw = read_file(path)
    if raw is None:
        return None
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("version") != _VERSION:
            raise ValueError("not a version-1 metadata document")
        return document["data"]
    except (ValueError, KeyError):
        aside = path + ".corrupt"
        os.replace(path, aside)
        logger.error("metadata file unreadable, set aside", extra={"path": path,
                                                                   "aside": aside})
        return None


def save_json(path: str, data: Any) -> None:
    """Replace ``path`` atomically (blocking: fsync). Raises DiskFull / StoreError."""
    payload = json.dumps({"version": _VERSION, "data": data}, sort_keys=True).encode()
    atomic_write(path, payload)
