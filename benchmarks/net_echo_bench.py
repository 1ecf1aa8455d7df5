"""Echo throughput of tidemq.net over loopback: requests/s with many requests in flight.

One server (echo handler) and one client connection in one process; ``--in-flight`` tasks
each send requests with a ``--body-bytes`` body back to back until ``--requests`` are done.
Client and server share the process (and the GIL), so this measures the whole stack's CPU
cost per request, both ends included.

    PYTHONPATH=backend .venv/bin/python benchmarks/net_echo_bench.py [--backend asyncio]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import anyio

from tidemq.net import ConnectionOptions, ServerConnectionContext, connect, serve
from tidemq.protocol.codes import RequestCode
from tidemq.protocol.events import Fields, Request, Response


async def echo(request: Request, context: ServerConnectionContext) -> Response:
    return request.respond(request.fields, request.body)


async def run(requests_total: int, in_flight: int, body_bytes: int) -> float:
    body = b"x" * body_bytes
    fields: Fields = {"topic": "bench", "queue_id": 0}
    options = ConnectionOptions(max_in_flight_requests=in_flight * 2)
    remaining = requests_total
    async with anyio.create_task_group() as server_group:
        addresses = await server_group.start(partial(serve, echo, "127.0.0.1", 0, options=options))
        host, port = addresses[0]
        async with await connect(host, port, client_id="bench", options=options) as client:

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    response = await client.call(RequestCode.SEND_MESSAGE, fields, body)
                    assert len(response.body) == body_bytes

            started = time.perf_counter()
            async with anyio.create_task_group() as workers:
                for _ in range(in_flight):
                    workers.start_soon(worker)
            elapsed = time.perf_counter() - started
        server_group.cancel_scope.cancel()
    return requests_total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    rates = [
        anyio.run(run, arguments.requests, arguments.in_flight, arguments.body_bytes,
                  backend=arguments.backend)
        for _ in range(arguments.runs)
    ]
    rates.sort()
    print(f"backend={arguments.backend} in_flight={arguments.in_flight} "
          f"body_bytes={arguments.body_bytes} requests={arguments.requests} "
          f"runs={arguments.runs}: median {rates[len(rates) // 2]:,.0f} requests/s "
          f"(min {rates[0]:,.0f}, max {rates[-1]:,.0f})")


if __name__ == "__main__":
    main()
