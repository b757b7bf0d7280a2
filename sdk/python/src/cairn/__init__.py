"""Python client for cairn, content-addressed block storage with
millisecond snapshots, forks, clones and rollbacks of VM disks.

>>> import cairn
>>> c = cairn.Client()                      # $CAIRN_SERVER, $CAIRN_TOKEN
>>> c.snapshot("base", tag="golden")
"""

from ._calls import parse_duration, parse_size
from ._client import AsyncClient, Client
from ._errors import (
    CairnError,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    Unauthorized,
    Unavailable,
)
from ._models import Event, Extent, Hydration, Snapshot, Volume

__all__ = [
    "AsyncClient",
    "CairnError",
    "Client",
    "Conflict",
    "Event",
    "Extent",
    "Forbidden",
    "Hydration",
    "NotFound",
    "PreconditionFailed",
    "Snapshot",
    "Unauthorized",
    "Unavailable",
    "Volume",
    "parse_duration",
    "parse_size",
]
__version__ = "0.1.0"
