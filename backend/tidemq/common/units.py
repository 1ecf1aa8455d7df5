"""Units for sizes and durations, and their parsing from config strings ("64MiB", "7d")."""

from __future__ import annotations

import re

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

_SIZE_UNITS = {"": 1, "b": 1, "kib": KIB, "mib": MIB, "gib": GIB, "kb": 1000, "mb": 10**6,
               "gb": 10**9}
_DURATION_UNITS = {"": 1, "ms": 1, "s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS,
                   "d": DAY_MS}
_PATTERN = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_size_bytes(text: str) -> int:
    """Parse "1GiB", "64 MiB", "4096" into bytes. Raises ValueError on anything else."""
    match = _PATTERN.match(text)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 64MiB, 1GiB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_duration_ms(text: str) -> int:
    """Parse "500ms", "10s", "5m", "72h", "7d" (or a bare "500", milliseconds, as a TOML
    integer would be) into milliseconds. Raises ValueError otherwise."""
    match = _PATTERN.match(text)
    if match is None or match.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 10s, 5m, 72h, 7d)")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
