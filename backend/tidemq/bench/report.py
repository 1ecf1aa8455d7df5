"""Figures, the printed table, the JSON file and the machine description of a benchmark run.

A ``Figure`` is one workload measured once per repetition (``seconds`` holds one wall time
per repetition). The table shows the median repetition and the best one; pass/fail against
a target uses the median, so one lucky repetition cannot pass a target. Ratios compare
medians with the run's own baselines: records/s against plain ``os.write`` of the same
record, MB/s (10**6 bytes) against the disk's sequential write.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
from dataclasses import dataclass, field
from typing import Any, Final

MB: Final = 1_000_000


@dataclass(slots=True)
class Figure:
    """One workload: ``items`` of ``item_bytes`` each, timed once per repetition."""

    key: str
    label: str
    items: int
    item_bytes: int
    target_per_s: float | None = None
    per_record: bool = True  # False for the disk row (1 MiB blocks): no records/s
    seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def rates(self) -> list[float]:
        return [self.items / seconds for seconds in self.seconds if seconds > 0]

    @property
    def measured(self) -> bool:
        return bool(self.rates())

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates())

    @property
    def best_rate(self) -> float:
        return max(self.rates())

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_mb_per_s(self) -> float:
        return self.median_rate * self.item_bytes / MB

    @property
    def passed(self) -> bool | None:
        if self.target_per_s is None or not self.measured:
            return None
        return self.median_rate >= self.target_per_s


@dataclass(frozen=True, slots=True)
class References:
    """The baselines the ratios divide by (0 when not measured)."""

    os_write_per_s: float
    disk_mb_per_s: float


_COLUMNS: Final = ("workload", "records", "s (median)", "records/s median", "records/s best",
                   "MB/s", "target /s", "result", "x os.write", "x disk MB/s")


def table_rows(figures: list[Figure], references: References) -> list[list[str]]:
    """One row of strings per measured figure, in ``_COLUMNS`` order."""
    rows: list[list[str]] = []
    for figure in figures:
        if not figure.measured:  # every repetition failed: say so rather than drop it
            rows.append([figure.label, f"{figure.items:,}"] + ["-"] * 5 + ["FAILED"]
                        + ["-"] * 2)
            continue
        passed = figure.passed
        per_record = figure.per_record
        records = f"{figure.items:,}" if per_record else \
            f"{figure.items * figure.item_bytes // (1 << 20):,} MiB"
        rows.append([
            figure.label,
            records,
            f"{figure.median_seconds:.2f}",
            f"{figure.median_rate:,.0f}" if per_record else "-",
            f"{figure.best_rate:,.0f}" if per_record else "-",
            f"{figure.median_mb_per_s:,.0f}",
            f">= {figure.target_per_s:,.0f}" if figure.target_per_s else "-",
            "-" if passed is None else ("PASS" if passed else "MISS"),
            _ratio(figure.median_rate, references.os_write_per_s) if per_record else "-",
            _ratio(figure.median_mb_per_s, references.disk_mb_per_s),
        ])
    return rows


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference > 0 else "-"


def render_table(rows: list[list[str]], *, markdown: bool = False) -> str:
    """A plain-text (aligned) or Markdown table of ``rows`` under ``_COLUMNS``."""
    header = list(_COLUMNS)
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header)))
                 + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def machine_description(data_root: str) -> dict[str, Any]:
    """What the figures were measured on: cores, memory, kernel, Python, the data's disk."""
    mount = mount_of(data_root)
    usage = shutil.disk_usage(data_root)
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpus": os.cpu_count(),
        "memory_bytes": _memory_total_bytes(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "data_root": os.path.abspath(data_root),
        "filesystem": {"mount_point": mount[0], "device": mount[1], "type": mount[2],
                       "size_bytes": usage.total, "free_bytes": usage.free},
    }


def mount_of(path: str) -> tuple[str, str, str]:
    """(mount point, device, filesystem type) of the mount holding ``path``."""
    real = os.path.realpath(path)
    best = ("/", "?", "?")
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount_point, fs_type = line.split()[:3]
                mount_point = mount_point.replace("\\040", " ")
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best[0]):
                    best = (mount_point, device, fs_type)
    except OSError:
        pass
    return best


def _memory_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def figure_json(figure: Figure) -> dict[str, Any]:
    rates = figure.rates()
    return {
        "key": figure.key, "label": figure.label, "items": figure.items,
        "item_bytes": figure.item_bytes, "seconds": figure.seconds, "rates_per_s": rates,
        "median_per_s": figure.median_rate if rates else None,
        "best_per_s": figure.best_rate if rates else None,
        "median_mb_per_s": figure.median_mb_per_s if rates else None,
        "target_per_s": figure.target_per_s, "passed": figure.passed, "notes": figure.notes,
    }


def write_json(path: str, document: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(document, file, indent=2)
        file.write("\n")
