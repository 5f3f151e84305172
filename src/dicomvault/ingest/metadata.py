"""Writing user metadata (`PUT` / `DELETE /{level}/{id}/metadata/{name}`) with Orthanc 1.10.1's rules.

Only user metadata (1024..65535) may be written or deleted; the metadata Orthanc records itself
(ReceptionDate, LastUpdate...) is read-only (403). Revisions: an `If-Match` that does not name the
current revision of an existing value is refused (409) whatever `CheckRevisions` says (as Orthanc);
with `CheckRevisions` on, changing an existing value or deleting one requires `If-Match`. Each
change is one index transaction that also logs `UpdatedMetadata` in `/changes`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dicomvault.enums import ChangeType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.metadata import ETag, check_revision, metadata_etag, require_if_match, require_user_type
from dicomvault.find.resources import require
from dicomvault.index.database import Index
from dicomvault.index.metadata import delete_metadata, get_metadata, put_metadata
from dicomvault.index.transactions import WriteTx
from dicomvault.storage.accessor import md5_hex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetadataWriter:
    index: Index
    check_revisions: bool = False

    def put(self, level: ResourceType, public_id: str, mtype: int, value: str, expected: ETag | None, now: str) -> ETag:
        """Create or replace one user metadata value; returns its new ETag."""
        require_user_type(mtype, "metadata")

        def write(tx: WriteTx) -> int:
            ref = require(tx, level, public_id)
            old = get_metadata(tx, ref.internal_id, mtype)
            revision = 0
            if old is not None:
                check_revision(metadata_etag(old), expected, self.check_revisions)
                revision = old.revision + 1
            put_metadata(tx, ref.internal_id, mtype, value, revision)
            tx.log_change(ChangeType.UPDATED_METADATA, ref, now)
            return revision

        revision = self.index.write(write)
        logger.info("metadata %d of %s/%s set (revision %d)", mtype, level.plural, public_id, revision)
        return ETag(revision, md5_hex(value.encode()))

    def delete(self, level: ResourceType, public_id: str, mtype: int, expected: ETag | None, now: str) -> None:
        """Delete one user metadata value (404 if absent)."""
        require_user_type(mtype, "metadata")
        require_if_match(expected, self.check_revisions)

        def write(tx: WriteTx) -> None:
            ref = require(tx, level, public_id)
            old = get_metadata(tx, ref.internal_id, mtype)
            if old is None:
                # Orthanc's answer for an absent value here is "unknown resource", not "inexistent item".
                raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"{ref.path} has no metadata {mtype}")
            if expected is not None:
                check_revision(metadata_etag(old), expected, self.check_revisions)
            delete_metadata(tx, ref.internal_id, mtype)
            tx.log_change(ChangeType.UPDATED_METADATA, ref, now)

        self.index.write(write)
        logger.info("metadata %d of %s/%s deleted", mtype, level.plural, public_id)
