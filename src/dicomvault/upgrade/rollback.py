"""Going back to Orthanc after an adoption: possible until dicomvault first removes a file that the
adopted Orthanc index still references.

Adoption leaves Orthanc's index untouched and writes ours beside it, so an operator can stop
dicomvault and start Orthanc again: instances stored since then are merely unknown to Orthanc
(orphan files). Once dicomvault deletes (or replaces, by overwriting an instance) one of Orthanc's
files, Orthanc's index points at a missing file. `RollbackWatch` logs that moment once, at warning
level, and records it in the global property DICOMVAULT_ORTHANC_ROLLBACK_ENDED (so it is said once
per archive, not once per run).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

from dicomvault.enums import GlobalProperty
from dicomvault.index.database import Index
from dicomvault.index.transactions import ReadTx
from dicomvault.ingest.store import now_iso
from dicomvault.model import FileInfo
from dicomvault.storage.accessor import StorageAccessor

logger = logging.getLogger(__name__)


class RollbackWatch:
    def __init__(self, index: Index, orthanc_index: Path) -> None:
        self._index = index
        self._orthanc_index = orthanc_index
        self._lock = threading.Lock()
        self._done = False

    @classmethod
    def install(cls, index: Index, accessor: StorageAccessor) -> RollbackWatch | None:
        """Watch the removals of `accessor` if the index was adopted from Orthanc and the way back
        is still open."""

        def read(tx: ReadTx) -> tuple[str | None, str | None]:
            return (
                tx.global_property(GlobalProperty.DICOMVAULT_ADOPTED_FROM_ORTHANC),
                tx.global_property(GlobalProperty.DICOMVAULT_ORTHANC_ROLLBACK_ENDED),
            )

        adopted, ended = index.read(read)
        if adopted is None or ended is not None:
            return None
        try:
            orthanc_index = Path(str(json.loads(adopted)["Index"]))
        except (ValueError, KeyError, TypeError):
            logger.warning("unreadable record of the Orthanc adoption: %r", adopted)
            return None
        watch = cls(index, orthanc_index)
        accessor.before_remove = watch.before_remove
        logger.info("adopted from the Orthanc index %s: going back to Orthanc is still possible", orthanc_index)
        return watch

    def _referenced_by_orthanc(self, uuid: str) -> bool:
        try:
            # Immutable: a read-only connection to a WAL database would still create -wal and -shm
            # files beside Orthanc's index (see orthanc_index.py).
            conn = sqlite3.connect(f"file:{self._orthanc_index}?mode=ro&immutable=1", uri=True, timeout=5)
            try:
                return conn.execute("SELECT 1 FROM AttachedFiles WHERE uuid = ?", (uuid,)).fetchone() is not None
            finally:
                conn.close()
        except sqlite3.Error:
            return True  # Orthanc's index cannot tell: assume the worst, and say so once

    def before_remove(self, info: FileInfo) -> None:
        if self._done or not self._referenced_by_orthanc(info.uuid):
            return
        with self._lock:
            if self._done:
                return
            self._done = True
            date = now_iso()
            self._index.write(lambda tx: tx.set_global_property(GlobalProperty.DICOMVAULT_ORTHANC_ROLLBACK_ENDED, date))
        logger.warning(
            "removing the file %s, which the adopted Orthanc index %s references: from now on, going back to "
            "Orthanc would show this instance's file as missing (this is said once)",
            info.uuid,
            self._orthanc_index,
        )
