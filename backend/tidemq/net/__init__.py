"""The async shell of ``tidemq.protocol``, on anyio's API: Trio natively, asyncio too.

``serve()`` runs a server; ``connect()`` opens a ``ClientConnection``. Both drive the
sans-IO ``tidemq.protocol.connection.Connection`` over a byte stream with one frame pump
per connection (``_session``), which matches responses to requests by opaque id, bounds
everything (frame size, requests in flight each way, send buffer bytes) and turns handler
errors into error responses. This module only re-exports.
"""

from tidemq.net._client import DEFAULT_CONNECT_TIMEOUT_MS as DEFAULT_CONNECT_TIMEOUT_MS
from tidemq.net._client import DEFAULT_REQUEST_TIMEOUT_MS as DEFAULT_REQUEST_TIMEOUT_MS
from tidemq.net._client import ClientConnection as ClientConnection
from tidemq.net._client import connect as connect
from tidemq.net._errors import ConnectionClosed as ConnectionClosed
from tidemq.net._errors import RequestTimeout as RequestTimeout
from tidemq.net._options import ConnectionOptions as ConnectionOptions
from tidemq.net._options import ConnectionStatistics as ConnectionStatistics
from tidemq.net._peers import PeerConnections as PeerConnections
from tidemq.net._peers import split_address as split_address
from tidemq.net._pending import ResponseCallback as ResponseCallback
from tidemq.net._server import DEFAULT_HELLO_TIMEOUT_MS as DEFAULT_HELLO_TIMEOUT_MS
from tidemq.net._server import Handler as Handler
from tidemq.net._server import ImmediateHandler as ImmediateHandler
from tidemq.net._server import ServerConnectionContext as ServerConnectionContext
from tidemq.net._server import serve as serve
from tidemq.net._session import HANDLE_LATER as HANDLE_LATER
from tidemq.net._session import HandleLater as HandleLater
from tidemq.net._session import RequestHandler as RequestHandler
