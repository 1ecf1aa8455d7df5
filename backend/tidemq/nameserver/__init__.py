"""The name server node (DESIGN.md section 7): which brokers serve which topics.

``NameServer(config).run()`` serves the registry; see ``node`` for its services,
``registry`` for the state, ``replication`` for the three cluster modes and ``event_bus``
for the handlers that plug in through the ``tidemq.nameserver.handlers`` entry points.
"""

from tidemq.nameserver.node import NameServer as NameServer
from tidemq.nameserver.node import NameServerStarted as NameServerStarted
