"""Deleting a resource: index first (one transaction: the resource, its descendants, and the
ancestors it leaves empty), then the files, before the caller answers.

A crash between the two leaves orphan files, which are harmless and reported by `check`; the
reverse order could leave rows pointing at nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dicomvault.enums import ResourceType
from dicomvault.find.resources import require
from dicomvault.index.database import Index
from dicomvault.index.transactions import DeleteOutcome, WriteTx
from dicomvault.storage.accessor import StorageAccessor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deleter:
    index: Index
    accessor: StorageAccessor

    def delete(self, level: ResourceType, public_id: str, now: str) -> DeleteOutcome:
        def write(tx: WriteTx) -> DeleteOutcome:
            return tx.delete(require(tx, level, public_id), now)

        outcome = self.index.write(write)
        for info in outcome.files:
            try:
                self.accessor.remove(info)
            except Exception:
                logger.warning("deleted %s but could not remove file %s", public_id, info.uuid, exc_info=True)
        logger.info("deleted %s %s (%d files)", level.label.lower(), public_id, len(outcome.files))
        return outcome
