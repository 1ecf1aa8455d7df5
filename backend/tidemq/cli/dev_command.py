"""``tidemq dev``: the embedded development node, with its data in ./data by default.

Runs a name server (9876) and a broker (store, RPC server on 10911) that registers with
it, with ``config/dev.toml`` when started from the repository, so both
``Producer(namesrv="127.0.0.1:9876")`` and ``Producer(brokers=["127.0.0.1:10911"])`` work;
the console joins them when it lands. Stops cleanly on
SIGINT/SIGTERM (final flush and checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import os
from functools import partial
from typing import Any

import trio

from tidemq.cli.main import add_config_arguments, parse_overrides
from tidemq.cli.node_runner import run_broker_until_signalled
from tidemq.config import TidemqConfig, load_config

logger = logging.getLogger("tidemq.cli.dev")

DEFAULT_CONFIG = os.path.join("config", "dev.toml")  # relative to the working directory


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dev", help="run the embedded development node")
    add_config_arguments(parser)
    parser.add_argument("--data", metavar="DIR", help="data directory (default ./data)")
    parser.set_defaults(handler=run)


def load_dev_config(args: argparse.Namespace) -> TidemqConfig:
    overrides = parse_overrides(args.overrides)
    if args.data:
        overrides["store.data_dir"] = args.data
    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    return load_config(path, overrides=overrides)


def run(args: argparse.Namespace) -> int:
    config = load_dev_config(args)
    trio.run(partial(run_broker_until_signalled, config, role="dev", with_namesrv=True))
    return 0
