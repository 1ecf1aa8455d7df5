"""Client ids: who a connection belongs to, unique per client object.

A consumer's id is its identity in its group (allocation sorts members by id), so two
consumers in one process must differ: the id is ``role@host@pid@counter``.
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Final

_COUNTER: Final = itertools.count(1)


def default_client_id(role: str) -> str:
    return f"{role}@{socket.gethostname()[:64]}@{os.getpid()}@{next(_COUNTER)}"
