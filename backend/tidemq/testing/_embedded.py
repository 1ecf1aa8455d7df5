"""An embedded broker: a real ``Broker`` on a free port of 127.0.0.1, for tests.

``open_embedded_broker`` runs one in the current Trio task (the broker is Trio-only)::

    async with open_embedded_broker(tmp_path) as broker:
        async with Producer(brokers=[broker.address]) as producer: ...

``embedded_broker_thread`` runs one in a background thread with its own ``trio.run``, for
code that is not on Trio (an asyncio application's tests)::

    with embedded_broker_thread(tmp_path) as broker:
        asyncio.run(main(broker.address))

With ``with_namesrv=True`` a name server runs beside the broker (the broker registers with
it) and ``broker.namesrv_address`` is what ``namesrv=`` takes.

Both bind port 0 (the OS picks a free port, so tests never collide), turn topic
auto-creation on (unless told otherwise), and use a store sized for tests (8 MiB segments,
small indexes) under ``data_dir``, or under a temporary directory removed afterwards.
Leaving stops the broker the way a node stops: cancellation, final flush, metadata saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Final

import trio

from tidemq.broker.node import Broker
from tidemq.common.units import MIB
from tidemq.config import BrokerConfig, NameServerConfig, StoreConfig, TidemqConfig
from tidemq.nameserver import NameServer

START_TIMEOUT_S: Final = 30.0

_TEST_STORE: Final[dict[str, Any]] = {
    "segment_size_bytes": 8 * MIB,
    "consume_queue_segment_entries": 16_384,
    "max_message_size_bytes": 4 * MIB,
    "append_batch_bytes_max": 4 * MIB,
    "index_slots": 4_096,
    "index_entries_per_file": 65_536,
    "flush_interval_ms": 100,
}


@dataclass(frozen=True, slots=True)
class EmbeddedBroker:
    """A running embedded broker."""

    host: str
    port: int
    data_dir: str
    broker: Broker
    """The node itself (for tests that look inside; its API is not the client's)."""
    namesrv_address: str | None = None
    """The embedded name server's ``"127.0.0.1:port"`` (``with_namesrv=True``), else None."""

    @property
    def address(self) -> str:
        """``"127.0.0.1:port"``, what ``brokers=[...]`` takes."""
        return f"{self.host}:{self.port}"


def embedded_config(data_dir: str | os.PathLike[str], *, auto_create_topics: bool = True,
                    **store_overrides: Any) -> TidemqConfig:
    """The embedded broker's configuration: port 0, a small store under ``data_dir``;
    ``store_overrides`` replace ``StoreConfig`` fields (``max_message_size_bytes=...``)."""
    store = StoreConfig(data_dir=os.fspath(data_dir), **{**_TEST_STORE, **store_overrides})
    broker = BrokerConfig(host="127.0.0.1", port=0, auto_create_topics=auto_create_topics)
    return TidemqConfig(broker=broker, store=store)


@contextlib.asynccontextmanager
async def open_embedded_broker(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    auto_create_topics: bool = True,
    config: TidemqConfig | None = None,
    with_namesrv: bool = False,
) -> AsyncIterator[EmbeddedBroker]:
    """Run a broker in this Trio task for the duration of the block (see the module
    docstring). ``config`` replaces the whole configuration (its port should be 0)."""
    temporary = None
    if data_dir is None and config is None:
        temporary = data_dir = await trio.to_thread.run_sync(tempfile.mkdtemp, "", "tidemq-")
    if config is None:
        assert data_dir is not None
        config = embedded_config(data_dir, auto_create_topics=auto_create_topics)
    try:
        async with trio.open_nursery() as outer:
            namesrv_address = None
            if with_namesrv:
                namesrv_config = dataclasses.replace(config, namesrv=NameServerConfig(port=0))
                namesrv = await outer.start(NameServer(namesrv_config).run)
                namesrv_address = namesrv.address
                config = dataclasses.replace(config, broker=dataclasses.replace(
                    config.broker, namesrv_addresses=(namesrv_address,)))
            broker = Broker(config)
            async with trio.open_nursery() as nursery:  # the broker stops first
                started = await nursery.start(broker.run)
                try:
                    yield EmbeddedBroker(started.host, started.port, config.store.data_dir,
                                         broker, namesrv_address)
                finally:
                    nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    finally:
        if temporary is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    lambda: shutil.rmtree(temporary, ignore_errors=True))


@contextlib.contextmanager
def embedded_broker_thread(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    auto_create_topics: bool = True,
    config: TidemqConfig | None = None,
    with_namesrv: bool = False,
) -> Iterator[EmbeddedBroker]:
    """Run a broker in a background thread (its own ``trio.run``) during the block.

    Raises:
        RuntimeError: the broker did not start within ``START_TIMEOUT_S`` (or failed: the
            cause is chained).
    """
    started: queue.Queue[tuple[EmbeddedBroker, trio.lowlevel.TrioToken, trio.CancelScope]
                         | BaseException] = queue.Queue()

    async def serve() -> None:
        with trio.CancelScope() as scope:
            async with open_embedded_broker(data_dir, auto_create_topics=auto_create_topics,
                                            config=config, with_namesrv=with_namesrv
                                            ) as broker:
                started.put((broker, trio.lowlevel.current_trio_token(), scope))
                await trio.sleep_forever()

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as error:
            started.put(error)

    thread = threading.Thread(target=run, name="tidemq-embedded-broker", daemon=True)
    thread.start()
    try:
        outcome = started.get(timeout=START_TIMEOUT_S)
    except queue.Empty:
        raise RuntimeError("the embedded broker did not start in time") from None
    if isinstance(outcome, BaseException):
        raise RuntimeError("the embedded broker failed to start") from outcome
    broker, token, scope = outcome
    try:
        yield broker
    finally:
        with contextlib.suppress(trio.RunFinishedError):  # it stopped by itself (crashed)
            trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(START_TIMEOUT_S)


def with_store(config: TidemqConfig, **store_overrides: Any) -> TidemqConfig:
    """``config`` with some store fields replaced."""
    return dataclasses.replace(config, store=dataclasses.replace(config.store,
                                                                 **store_overrides))
