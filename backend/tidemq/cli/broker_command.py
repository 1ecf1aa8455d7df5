"""``tidemq broker --config FILE``: one broker node (one replica of a broker group)."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import trio

from tidemq.cli.main import add_config_arguments, parse_overrides
from tidemq.cli.node_runner import run_broker_until_signalled
from tidemq.config import load_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("broker", help="run a broker node")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, overrides=parse_overrides(args.overrides))
    trio.run(partial(run_broker_until_signalled, config, role="broker"))
    return 0
