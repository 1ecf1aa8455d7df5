"""Running a node in the foreground: start it in a nursery, report, stop on SIGINT/SIGTERM.

Shutdown is cancellation: the node's ``run`` flushes what it acknowledged in its finally
blocks, so a SIGTERM never loses an acknowledged message.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import signal
from collections.abc import AsyncIterator

import trio

from tidemq.config import TidemqConfig


async def run_broker_until_signalled(config: TidemqConfig, *, role: str,
                                     with_namesrv: bool = False) -> None:
    """Run a broker (and, for ``tidemq dev``, a name server beside it, which the broker
    registers with) until SIGINT or SIGTERM."""
    from tidemq.broker.node import Broker
    from tidemq.nameserver import NameServer

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            report: dict[str, object] = {"event": "started", "role": role}
            if with_namesrv:
                namesrv = await nursery.start(NameServer(config).run)
                report["namesrv"] = namesrv.address
                if not config.broker.namesrv_addresses:
                    config = dataclasses.replace(config, broker=dataclasses.replace(
                        config.broker, namesrv_addresses=(namesrv.address,)))
            broker = Broker(config)
            started = await nursery.start(broker.run)
            report.update({"broker": started.address, "data_dir": broker.store.directory,
                           "recovery": dataclasses.asdict(started.recovery)})
            print(json.dumps(report), flush=True)
            freeze_startup_objects()
            await _stop_on_signal(signals, nursery)


async def run_namesrv_until_signalled(config: TidemqConfig) -> None:
    from tidemq.nameserver import NameServer

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            started = await nursery.start(NameServer(config).run)
            print(json.dumps({"event": "started", "role": "namesrv",
                              "namesrv": started.address, "mode": config.namesrv.mode,
                              "members": list(config.namesrv.members)}), flush=True)
            freeze_startup_objects()
            await _stop_on_signal(signals, nursery)


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (modules, config, tables) out of the garbage
    collector's reach: a full collection then walks only what traffic allocates, so its
    pauses stay short (a node's full collections took up to ~8 ms here; a client's with the
    start-up heap ~15-25 ms, every ~1.2 s under load: the W3 latency tail)."""
    gc.collect()
    gc.freeze()


async def _stop_on_signal(signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
    async for signal_number in signals:
        print(json.dumps({"event": "stopping", "signal": signal_number}), flush=True)
        nursery.cancel_scope.cancel()
        break
