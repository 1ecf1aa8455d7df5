"""``tidemq admin topic|group|cluster ...``: administration through the SDK's ``Admin``."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from tidemq.client import Admin


def register_admin(subparsers: Any,
                   add_brokers: Callable[[argparse.ArgumentParser], None],
                   run: Callable[..., int]) -> None:
    admin = subparsers.add_parser("admin", help="administer topics and consumer groups")
    areas = admin.add_subparsers(dest="area", metavar="AREA", required=True)

    topic = areas.add_parser("topic", help="create, list, describe, delete topics")
    topic_actions = topic.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = topic_actions.add_parser("create", help="create a topic")
    create.add_argument("name")
    create.add_argument("--queues", type=int, default=4, help="queue count (default 4)")
    create.add_argument("--permission", type=int, default=6, help="4 read, 2 write, 6 both")
    listing = topic_actions.add_parser("list", help="list topics")
    listing.add_argument("--system", action="store_true", help="include system topics")
    describe = topic_actions.add_parser("describe", help="queues and offsets of a topic")
    describe.add_argument("name")
    delete = topic_actions.add_parser("delete", help="delete a topic")
    delete.add_argument("name")
    for parser, action in ((create, _topic_create), (listing, _topic_list),
                           (describe, _topic_describe), (delete, _topic_delete)):
        add_brokers(parser)
        parser.set_defaults(handler=partial(run, partial(_with_admin, action)))

    group = areas.add_parser("group", help="list, describe, reset consumer groups")
    group_actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    group_list = group_actions.add_parser("list", help="list groups")
    group_describe = group_actions.add_parser("describe", help="members, offsets and lag")
    group_describe.add_argument("name")
    reset = group_actions.add_parser("reset-offset", help="move a group's offsets")
    reset.add_argument("name")
    reset.add_argument("--topic", required=True)
    reset.add_argument("--to", required=True,
                       help="earliest, latest, or a timestamp in milliseconds")
    for parser, action in ((group_list, _group_list), (group_describe, _group_describe),
                           (reset, _group_reset)):
        add_brokers(parser)
        parser.set_defaults(handler=partial(run, partial(_with_admin, action)))

    cluster = areas.add_parser(
        "cluster", help="name servers (mode, role, health), broker groups, replicas, topics")
    cluster.add_argument("--json", action="store_true", help="one JSON object, not a table")
    add_brokers(cluster)
    cluster.set_defaults(handler=partial(run, partial(_with_admin, _cluster)))


async def _with_admin(action: Callable[[Admin, argparse.Namespace], Awaitable[None]],
                      args: argparse.Namespace) -> int:
    from tidemq.cli.client_commands import endpoints_of

    async with Admin(**endpoints_of(args)) as admin:
        await action(admin, args)
    return 0


def _emit(value: Any) -> None:
    from tidemq.cli.client_commands import emit

    emit(dataclasses.asdict(value) if dataclasses.is_dataclass(value) and
         not isinstance(value, type) else value)


async def _topic_create(admin: Admin, args: argparse.Namespace) -> None:
    _emit(await admin.create_topic(args.name, args.queues, args.permission))


async def _topic_list(admin: Admin, args: argparse.Namespace) -> None:
    for topic in await admin.list_topics(include_system=args.system):
        _emit(topic)


async def _topic_describe(admin: Admin, args: argparse.Namespace) -> None:
    _emit(await admin.describe_topic(args.name))


async def _topic_delete(admin: Admin, args: argparse.Namespace) -> None:
    await admin.delete_topic(args.name)
    _emit({"deleted": args.name})


async def _group_list(admin: Admin, args: argparse.Namespace) -> None:
    for name in await admin.list_groups():
        _emit({"group": name})


async def _group_describe(admin: Admin, args: argparse.Namespace) -> None:
    info = await admin.describe_group(args.name)
    _emit({**dataclasses.asdict(info), "lag": info.lag})


async def _group_reset(admin: Admin, args: argparse.Namespace) -> None:
    to: str | int = int(args.to) if str(args.to).isdigit() else args.to
    offsets = await admin.reset_offset(args.name, args.topic, to)  # type: ignore[arg-type]
    _emit({"group": args.name, "topic": args.topic,
           "offsets": [{"broker": queue.broker, "queue_id": queue.queue_id, "offset": offset}
                       for queue, offset in sorted(offsets.items(),
                                                   key=lambda item: (item[0].broker,
                                                                     item[0].queue_id))]})


async def _cluster(admin: Admin, args: argparse.Namespace) -> None:
    info = await admin.cluster()
    if args.json:
        _emit(info)
        return
    print("NAME SERVERS")
    for ns in info.namesrvs:
        health = "up" if ns.reachable else f"DOWN ({ns.error})"
        print(f"  {ns.address:<22} {health:<6} mode={ns.mode or '?'} role={ns.role or '?'} "
              f"writer={ns.writer or '-'} term={ns.term} brokers={ns.broker_count}")
    print("BROKER GROUPS")
    for group in info.groups:
        print(f"  {group.cluster}/{group.group}")
        for replica in group.replicas:
            print(f"    {replica.address:<22} {replica.role:<8} epoch={replica.epoch} "
                  f"topics={replica.topic_count} heartbeat={replica.heartbeat_age_ms}ms ago")
    print("TOPICS")
    for topic, groups in sorted(info.topics.items()):
        print(f"  {topic:<32} {', '.join(groups)}")
