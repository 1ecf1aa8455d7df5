"""Leaf helpers shared by every layer: checksums, clocks, ids, units. Imports stdlib only
(plus the crc32c extension)."""
