"""Storage-engine benchmark: ``python benchmarks/store_bench.py [--quick] [--dir DIR]``.

The same run as ``tidemq bench store``; the code lives in ``tidemq.bench.store_bench`` so the
installed command can run it. Results and the machine they came from: docs/benchmarks.md.
"""

from __future__ import annotations

import sys

from tidemq.bench.store_bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
