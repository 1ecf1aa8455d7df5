"""Three name-server processes per mode and a real ``tidemq broker`` process registering
with all of them (heartbeat 300 ms). For each mode:

* the broker's registration, acknowledged by the mode's promise, shows on every node
  (GET_CLUSTER_INFO of each);
* each position is killed with ``kill -9`` in turn (peers: each node; primary: the
  primary, then a replica; chain: head, middle, tail). After each kill a new topic is
  created on the broker and must show in the routes of every node that serves reads
  (chain: only the tail answers GET_ROUTE; the others answer NOT_LEADER naming it);
* the killed node is restarted on its port and catches up: NAMESRV_STATUS says ready and
  its GET_CLUSTER_INFO shows the broker with every topic.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from cluster_broker import broker_process
from namesrv_cluster import NameServerCluster, ask, wait_for

from tidemq.errors import NotLeader
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Response

pytestmark = pytest.mark.slow

WAIT_S = 20.0
MODES = [("peers", "semi-sync"), ("primary", "async"), ("primary", "semi-sync"),
         ("primary", "sync"), ("chain", "semi-sync")]


async def status(address: str) -> dict[str, Any] | None:
    answer = await ask(address, RequestCode.NAMESRV_STATUS)
    return dict(answer.fields) if isinstance(answer, Response) else None


async def knows(address: str, broker: str, topics: set[str]) -> bool:
    """The node's registry holds ``broker`` serving every one of ``topics``."""
    answer = await ask(address, RequestCode.GET_CLUSTER_INFO)
    if not isinstance(answer, Response):
        return False
    replicas = [r["address"] for g in answer.fields["groups"] for r in g["replicas"]]
    return broker in replicas and topics <= set(answer.fields["topics"])


async def routes_right(cluster: NameServerCluster, broker: str, topic: str) -> bool:
    """Every node that serves reads routes ``topic`` to ``broker``; in chain mode exactly
    the tail does and every other live node says NOT_LEADER naming the tail."""
    answers = {m: await ask(m, RequestCode.GET_ROUTE, {"topic": topic}) for m in cluster.live()}
    served = {m: a for m, a in answers.items() if isinstance(a, Response)}
    if any(a.fields["groups"][0]["leader"] != broker for a in served.values()):
        return False
    if cluster.mode != "chain":
        return len(served) == len(answers)
    if len(served) != 1:
        return False
    (tail,) = served
    return all(isinstance(a, NotLeader) and a.leader == tail
               for m, a in answers.items() if m != tail)


async def settled(cluster: NameServerCluster) -> bool:
    """Every live node is ready and follows one writer (chain: the chain is whole)."""
    statuses = [await status(m) for m in cluster.live()]
    if any(s is None or not s["ready"] for s in statuses):
        return False
    if cluster.mode == "peers":
        return True
    writers = {s["writer"] for s in statuses if s is not None}
    if len(writers) != 1 or writers == {None}:
        return False
    if cluster.mode == "chain":
        head = await status(next(iter(writers)))
        return head is not None and len(head.get("chain", ())) == len(cluster.live())
    return True


async def victim(cluster: NameServerCluster, position: int) -> str:
    if cluster.mode == "peers":
        return cluster.members[position]
    writer_status = await status(cluster.live()[0])
    assert writer_status is not None
    writer = str(writer_status["writer"])
    if cluster.mode == "primary":
        return writer if position == 0 else next(m for m in cluster.live() if m != writer)
    head = await status(writer)
    assert head is not None
    chain = list(head["chain"])
    assert len(chain) == 3, chain
    return str(chain[position])  # head, middle, tail


async def create_topic(broker: str, topic: str) -> None:
    answer = await ask(broker, RequestCode.CREATE_TOPIC, {"topic": topic, "queue_count": 2})
    assert isinstance(answer, Response), answer


@pytest.mark.parametrize(("mode", "ack"), MODES, ids=[f"{m}-{a}" for m, a in MODES])
async def test_kill_each_position_and_restart(mode: str, ack: str, tmp_path: Path) -> None:
    cluster = NameServerCluster(mode, ack, tmp_path)
    with ExitStack() as stack:
        stack.callback(cluster.stop_all)
        for address in cluster.members:
            cluster.start(address)
        await wait_for("the name servers settle", lambda: settled(cluster), WAIT_S, cluster)
        broker_log = tmp_path / "broker.log"
        running = stack.enter_context(broker_process(tmp_path / "broker", broker_log, extra=[
            "--set", f"broker.namesrv_addresses={','.join(cluster.members)}",
            "--set", "broker.namesrv_heartbeat_interval_ms=300",
            "--set", "store.segment_size_bytes=8MiB"]))
        broker = running.address
        await create_topic(broker, "base")
        topics = {"base"}
        for member in cluster.members:
            await wait_for(f"{member} knows the broker",
                           lambda m=member: knows(m, broker, topics), WAIT_S, cluster)
        await wait_for("routes of 'base'", lambda: routes_right(cluster, broker, "base"),
                       WAIT_S, cluster)
        for position in range(3):
            killed = await victim(cluster, position)
            cluster.kill9(killed)
            topic = f"after-kill-{position}"
            await create_topic(broker, topic)
            topics.add(topic)
            await wait_for(f"routes of {topic!r} with {killed} dead",
                           lambda t=topic: routes_right(cluster, broker, t), WAIT_S, cluster)
            cluster.start(killed)
            await wait_for(f"{killed} catches up",
                           lambda k=killed: knows(k, broker, topics), WAIT_S, cluster)
            restarted = await status(killed)
            assert restarted is not None
            assert restarted["ready"] is True
            await wait_for("the cluster settles again", lambda: settled(cluster), WAIT_S,
                           cluster)
            for member in cluster.members:
                assert await knows(member, broker, topics), member
        await wait_for("routes after every restart",
                       lambda: routes_right(cluster, broker, "after-kill-2"), WAIT_S, cluster)
        if mode != "peers":
            final = await status(cluster.members[0])
            assert final is not None
            assert final["term"] >= 2  # at least one failover happened
