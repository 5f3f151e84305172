"""`ServerContext`: the core services one server process runs with, handed to every front end.

Built by `server.build(config)`; front ends read from it and call its services, never the
database or the storage area directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dicomvault.config import Config
from dicomvault.index.database import Index
from dicomvault.ingest.stability import StabilityMonitor
from dicomvault.ingest.store import Ingest
from dicomvault.jobs.engine import JobsEngine
from dicomvault.network.modalities import Modalities
from dicomvault.network.queries import QueryRegistry
from dicomvault.storage.accessor import StorageAccessor


@dataclass
class ServerContext:
    config: Config
    index: Index
    accessor: StorageAccessor
    ingest: Ingest
    jobs: JobsEngine
    modalities: Modalities
    # The answers of C-FIND queries made over REST (`/queries`), bounded by QueryRetrieveSize.
    queries: QueryRegistry
    clock: Callable[[], float] = field(default=time.time)
    # The source of `IsStable` (None only for contexts built without a monitor).
    stability: StabilityMonitor | None = None
