"""``tidemq bench``: benchmarks (DESIGN.md section 10). Each workload is a sub-action:

    tidemq bench store [--quick] [--dir DIR] [--json FILE]   the storage engine alone

    tidemq bench produce|consume|latency [--quick] [--brokers ADDR]   client workloads

    tidemq bench namesrv [--quick] [--namesrv ADDR]   route lookups on one name server

Each action is a module under ``tidemq.bench`` with ``add_arguments(parser)`` and
``run_from_args(args) -> int``, and one entry in ``_ACTIONS``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, Final

# (action, help, module under tidemq.bench)
_ACTIONS: Final = (
    ("store", "storage engine: appends, group commit, read-back, disk baselines",
     "tidemq.bench.store_bench"),
    ("produce", "W1: produce 1 KiB messages with acks (broker in its own process)",
     "tidemq.bench.client_bench"),
    ("consume", "W2: consume from the start with acks (after producing the messages)",
     "tidemq.bench.client_bench"),
    ("latency", "W3: end-to-end latency percentiles at a fixed rate",
     "tidemq.bench.client_bench"),
    ("namesrv", "route lookups (GET_ROUTE) per second on one name server in its own process",
     "tidemq.bench.namesrv_bench"),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark")
    actions = parser.add_subparsers(dest="bench_action", metavar="ACTION", required=True)
    for name, help_text, module_name in _ACTIONS:
        action = actions.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(action)
        action.set_defaults(handler=_handler(module_name))


def _handler(module_name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        result: int = importlib.import_module(module_name).run_from_args(args)
        return result

    return run
