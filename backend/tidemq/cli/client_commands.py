"""``tidemq produce``, ``tidemq consume`` and ``tidemq admin``: the SDK from a shell.

Output is JSON lines (one object per message or result) so it pipes into ``jq``. Brokers
are found through ``--namesrv host:port,...`` (or ``TIDEMQ_NAMESRV``) when given, else
named by ``--brokers host:port,...`` (or ``TIDEMQ_BROKERS``, default 127.0.0.1:10911).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from tidemq.client import Consumer, Message, Producer
from tidemq.errors import InvalidArgument

DEFAULT_BROKERS = "127.0.0.1:10911"


def register(subparsers: Any) -> None:
    produce = subparsers.add_parser("produce", help="send one message per stdin line")
    _add_brokers(produce)
    produce.add_argument("topic")
    produce.add_argument("--key", help="message key (indexed: find it with admin queries)")
    produce.add_argument("--tag", help="message tag (consumers can filter on it)")
    produce.add_argument("--property", action="append", default=[], metavar="K=V",
                         help="a user property (repeatable)")
    produce.set_defaults(handler=partial(_run, _produce))

    consume = subparsers.add_parser("consume", help="print messages as JSON lines")
    _add_brokers(consume)
    consume.add_argument("topic")
    consume.add_argument("--group", required=True, help="consumer group")
    consume.add_argument("--expression", default="*", help="tag expression, e.g. 'a || b'")
    consume.add_argument("--from", dest="start_from", default="latest",
                         help="earliest, latest or a timestamp in ms (for a new group)")
    consume.add_argument("--max", type=int, default=0, help="stop after N messages (0: never)")
    consume.add_argument("--idle-timeout", type=float, default=0.0, metavar="SECONDS",
                         help="stop when no message came for this long (0: never)")
    consume.set_defaults(handler=partial(_run, _consume))

    from tidemq.cli.admin_command import register_admin

    register_admin(subparsers, _add_brokers, _run)


def _add_brokers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brokers", default=os.environ.get("TIDEMQ_BROKERS"),
                        help="comma-separated broker host:port list (env TIDEMQ_BROKERS; "
                             f"default {DEFAULT_BROKERS} when no name server is given)")
    parser.add_argument("--namesrv", default=os.environ.get("TIDEMQ_NAMESRV"),
                        help="comma-separated name server host:port list (env "
                             "TIDEMQ_NAMESRV): find the brokers through them")


def endpoints_of(args: argparse.Namespace) -> dict[str, Any]:
    """``brokers=`` and ``namesrv=`` for a client, from --brokers / --namesrv."""
    namesrv = _split(args.namesrv)
    brokers = _split(args.brokers)
    if not namesrv and not brokers:
        brokers = [DEFAULT_BROKERS]
    return {"brokers": brokers or None, "namesrv": namesrv or None}


def _split(value: str | None) -> list[str]:
    return [one.strip() for one in str(value or "").split(",") if one.strip()]


def _run(command: Callable[[argparse.Namespace], Awaitable[int]],
         args: argparse.Namespace) -> int:
    return trio.run(command, args)


def emit(value: Any) -> None:
    print(json.dumps(value, default=str), flush=True)


async def _produce(args: argparse.Namespace) -> int:
    properties: dict[str, str] = {}
    for pair in args.property:
        key, separator, value = pair.partition("=")
        if not separator:
            raise InvalidArgument(f"--property {pair}: use K=V")
        properties[key] = value
    stdin = trio.wrap_file(sys.stdin)
    async with Producer(**endpoints_of(args)) as producer:
        async for line in stdin:
            body = line.rstrip("\n").encode()
            result = await producer.send(args.topic, body, key=args.key, tag=args.tag,
                                         properties=properties or None)
            emit(dataclasses.asdict(result))
    return 0


def message_json(message: Message) -> dict[str, Any]:
    try:
        body: str = message.body.decode()
        encoding = "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(message.body).decode(), "base64"
    return {"topic": message.topic, "queue_id": message.queue_id,
            "queue_offset": message.queue_offset, "msg_id": message.msg_id,
            "keys": list(message.keys), "tag": message.tag, "body": body,
            "body_encoding": encoding, "properties": dict(message.properties),
            "reconsume_times": message.reconsume_times,
            "born_timestamp_ms": message.born_timestamp_ms,
            "store_timestamp_ms": message.store_timestamp_ms, "broker": message.broker}


async def _consume(args: argparse.Namespace) -> int:
    start_from: str | int = args.start_from
    if isinstance(start_from, str) and start_from.isdigit():
        start_from = int(start_from)
    count = 0
    async with Consumer(args.group, {args.topic: args.expression}, **endpoints_of(args),
                        start_from=start_from) as consumer:  # type: ignore[arg-type]
        while args.max <= 0 or count < args.max:
            wait = args.idle_timeout if args.idle_timeout > 0 else 15.0
            want = 32 if args.max <= 0 else min(32, args.max - count)
            batch = await consumer.receive(max=want, wait=wait)
            if not batch and args.idle_timeout > 0:
                break
            for message in batch:
                emit(message_json(message))
                await message.ack()
                count += 1
    return 0
