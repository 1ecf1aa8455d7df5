"""Running a node in the foreground: start it in a nursery, report, stop on SIGINT/SIGTERM.

Shutdown is cancellation: the node's ``run`` flushes what it acknowledged in its finally
blocks, so a SIGTERM never loses an acknowledged message.
"""

from __future__ import annotations

import dataclasses
import json
import signal

import trio

from tidemq.config import TidemqConfig


async def run_broker_until_signalled(config: TidemqConfig, *, role: str) -> None:
    from tidemq.broker.node import Broker

    broker = Broker(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            started = await nursery.start(broker.run)
            print(json.dumps({"event": "started", "role": role, "broker": started.address,
                              "data_dir": broker.store.directory,
                              "recovery": dataclasses.asdict(started.recovery)}), flush=True)
            async for signal_number in signals:
                print(json.dumps({"event": "stopping", "signal": signal_number}), flush=True)
                nursery.cancel_scope.cancel()
                break
