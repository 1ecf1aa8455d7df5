"""Public test support (like ``trio.testing``): checkers and fakes for TideMQ's own tests and
for applications that embed its parts.

For applications testing against a real broker:

* ``open_embedded_broker(data_dir)``: an async context manager (Trio) running a broker on a
  free port; ``.address`` is what ``brokers=[...]`` takes.
* ``embedded_broker_thread(data_dir)``: the same in a background thread, for asyncio code.
* the pytest fixture ``embedded_broker`` (pytest-trio): add
  ``pytest_plugins = ["tidemq.testing"]`` to your ``conftest.py``, then::

      async def test_orders(embedded_broker):
          async with Producer(brokers=[embedded_broker.address]) as producer: ...
"""

import importlib.util

from tidemq.testing._embedded import EmbeddedBroker as EmbeddedBroker
from tidemq.testing._embedded import embedded_broker_thread as embedded_broker_thread
from tidemq.testing._embedded import embedded_config as embedded_config
from tidemq.testing._embedded import open_embedded_broker as open_embedded_broker
from tidemq.testing._embedded import with_store as with_store

if importlib.util.find_spec("pytest") is not None:  # the fixture needs pytest (optional)
    from tidemq.testing._fixtures import embedded_broker as embedded_broker
