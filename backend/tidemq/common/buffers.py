"""The buffer types record and file code accepts (``collections.abc.Buffer`` is 3.12+)."""

from __future__ import annotations

import mmap
from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap
