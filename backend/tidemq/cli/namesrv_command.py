"""``tidemq namesrv --config FILE``: one name server node ([namesrv] section)."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import trio

from tidemq.cli.main import add_config_arguments, parse_overrides
from tidemq.cli.node_runner import run_namesrv_until_signalled
from tidemq.config import load_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("namesrv", help="run a name server node")
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, overrides=parse_overrides(args.overrides))
    trio.run(partial(run_namesrv_until_signalled, config))
    return 0
