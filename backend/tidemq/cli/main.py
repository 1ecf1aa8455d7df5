"""``tidemq``: the entry point. Each subcommand lives in its own module and registers itself
through ``register(subparsers)``; later subcommands plug in by adding a module to
``_COMMAND_MODULES``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from tidemq._version import __version__
from tidemq.errors import TideError

_COMMAND_MODULES = (
    "tidemq.cli.dev_command",
    "tidemq.cli.broker_command",
    "tidemq.cli.namesrv_command",
    "tidemq.cli.store_command",
    "tidemq.cli.client_commands",
    "tidemq.cli.bench_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidemq",
        description="TideMQ: a distributed message queue in the RocketMQ family, on Trio.",
    )
    parser.add_argument("--version", action="version", version=f"tidemq {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config FILE and repeated --set section.key=value, shared by node commands."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        dest="overrides", help="override one config value (repeatable)")


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator:
            raise TideError(f"--set {pair}: use section.key=value")
        overrides[key.strip()] = value.strip()
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args)
    except TideError as error:
        print(f"tidemq: error: {error.remark} [{error.code.name}]", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
