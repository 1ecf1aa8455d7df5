"""``tidemq store``: offline tools for a store directory (the node must not be running).

    tidemq store inspect --data DIR     open (recovering if needed), print stats and queues
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from tidemq.cli.main import add_config_arguments, parse_overrides
from tidemq.config import load_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("store", help="inspect a store directory offline")
    actions = parser.add_subparsers(dest="store_action", metavar="ACTION", required=True)
    inspect = actions.add_parser("inspect", help="recover, then print stats and queues")
    add_config_arguments(inspect)
    inspect.add_argument("--data", metavar="DIR", required=True, help="data directory")
    inspect.set_defaults(handler=inspect_store)


def inspect_store(args: argparse.Namespace) -> int:
    from tidemq.store import MessageStore

    overrides = parse_overrides(args.overrides)
    overrides["store.data_dir"] = args.data
    config = load_config(args.config, overrides=overrides)
    store = MessageStore(config.store)
    report = store.open()
    try:
        print(json.dumps({
            "recovery": dataclasses.asdict(report),
            "stats": dataclasses.asdict(store.stats()),
            "queues": {topic: {str(q): {"min": store.min_offset(topic, q), "max": n}
                               for q, n in table.items()}
                       for topic, table in store.topics().items()},
        }, indent=2))
    finally:
        store.close()
    return 0
