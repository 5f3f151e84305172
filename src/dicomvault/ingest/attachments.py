"""Attachments of a resource with Orthanc 1.10.1's rules: reading them (description, bytes as
stored or uncompressed, MD5 verification) and changing them (user attachments: put, delete;
any attachment: compress, uncompress).

Only user attachments (content types 1024..65535) may be put or deleted; the `dicom` attachment
can be compressed or uncompressed, never replaced or deleted (403). Revisions follow the rules of
`find/metadata.py` (409 on a stale `If-Match`; `CheckRevisions` makes it mandatory to replace or
delete). Orthanc logs `UpdatedAttachment` in `/changes` for changes to user attachments only.

Files first, index second: a new file is written (and fsynced) before the index transaction that
points at it; if that transaction fails, the new file is removed and nothing changed. A file
replaced or deleted is removed only after the index committed. A crash in between leaves an orphan
file, which is harmless; the index never points at a missing file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from dicomvault.enums import ChangeType, CompressionType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.metadata import USER_RANGE, ETag, check_revision, require_if_match, require_user_type
from dicomvault.find.resources import require
from dicomvault.index.attachments import (
    StoredAttachment,
    delete_attachment,
    get_attachment,
    list_content_types,
    put_attachment,
)
from dicomvault.index.database import Index
from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.index.writer import CommitUncertain
from dicomvault.model import FileInfo, ResourceRef
from dicomvault.storage.accessor import StorageAccessor, decompress_zlib_with_size, md5_hex

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
T = TypeVar("T")


def attachment_etag(stored: StoredAttachment) -> ETag:
    """As Orthanc: the revision and the MD5 of the uncompressed content."""
    return ETag(stored.revision, stored.info.uncompressed_md5)


def _require_attachment(tx: ReadTx, level: ResourceType, public_id: str, content_type: int) -> StoredAttachment:
    ref = require(tx, level, public_id)
    stored = get_attachment(tx, ref.internal_id, content_type)
    if stored is None:
        raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"{ref.path} has no attachment {content_type}")
    return stored


@dataclass(frozen=True)
class Attachments:
    index: Index
    accessor: StorageAccessor
    check_revisions: bool = False

    # ---- reading ---------------------------------------------------------------------------
    def content_types(self, level: ResourceType, public_id: str) -> list[int]:
        """The content types attached to a resource, increasing."""

        def read(tx: ReadTx) -> list[int]:
            return list_content_types(tx, require(tx, level, public_id).internal_id)

        return self.index.read(read)

    def get(self, level: ResourceType, public_id: str, content_type: int) -> StoredAttachment:
        """One attachment's description and revision (404 if the resource does not carry it)."""
        return self.index.read(lambda tx: _require_attachment(tx, level, public_id, content_type))

    def read(self, info: FileInfo) -> bytes:
        """The uncompressed content."""
        return self.accessor.read(info)

    def open_stored(self, info: FileInfo) -> tuple[BinaryIO, int]:
        """The file as stored (compressed if it is) and its size on disk, for streaming."""
        handle = self.accessor.area.open(info.uuid, content_type=int(info.content_type))
        try:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(0)
        except BaseException:
            handle.close()
            raise
        return handle, size

    def verify_md5(self, level: ResourceType, public_id: str, content_type: int) -> None:
        """Check the stored file against both MD5s the index recorded (400 if they differ)."""

        def read(tx: ReadTx) -> StoredAttachment:
            ref = require(tx, level, public_id)
            stored = get_attachment(tx, ref.internal_id, content_type)
            if stored is None:
                # Orthanc 1.10.1 answers 400 here, where the other routes answer 404.
                raise DicomVaultError(ErrorCode.BAD_REQUEST, f"{ref.path} has no attachment {content_type} to verify")
            return stored

        info = self.index.read(read).info
        problem = None
        if info.compression == CompressionType.NONE:
            digest = hashlib.md5(usedforsecurity=False)
            handle, _size = self.open_stored(info)
            with handle:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    digest.update(chunk)
            if digest.hexdigest() != info.compressed_md5:
                problem = "the stored file does not match its recorded MD5"
        else:
            stored = self.accessor.read_raw(info)
            if md5_hex(stored) != info.compressed_md5:
                problem = "the stored file does not match its recorded MD5"
            else:
                try:
                    plain = decompress_zlib_with_size(stored, limit=info.uncompressed_size)
                except DicomVaultError as exc:
                    problem = f"the stored file does not decompress: {exc}"
                else:
                    if md5_hex(plain) != info.uncompressed_md5:
                        problem = "the uncompressed content does not match its recorded MD5"
        if problem is not None:
            logger.warning("verify-md5 of attachment %s (%s/%s): %s", info.uuid, level.plural, public_id, problem)
            # Orthanc answers 400 here; "corrupted file" says why.
            raise DicomVaultError(ErrorCode.CORRUPTED_FILE, problem, http_status=400)

    # ---- writing ---------------------------------------------------------------------------
    def put(
        self,
        level: ResourceType,
        public_id: str,
        content_type: int,
        data: bytes,
        expected: ETag | None,
        now: str,
    ) -> ETag:
        """Create or replace a user attachment; returns its new ETag."""
        require_user_type(content_type, "attachment")
        # Refuse what is bound to fail before writing any file (the transaction checks again).
        self.index.read(lambda tx: self._next_revision(tx, level, public_id, content_type, expected))
        info = self.accessor.write(data, content_type)

        def write(tx: WriteTx) -> tuple[StoredAttachment | None, int]:
            ref, old, revision = self._next_revision(tx, level, public_id, content_type, expected)
            put_attachment(tx, ref.internal_id, info, revision)
            tx.log_change(ChangeType.UPDATED_ATTACHMENT, ref, now)
            return old, revision

        old, revision = self._commit(write, info)
        if old is not None:
            self._discard(old.info)
        logger.info(
            "attachment %d of %s/%s set: %s, %d bytes (revision %d)",
            content_type,
            level.plural,
            public_id,
            info.uuid,
            info.uncompressed_size,
            revision,
        )
        return ETag(revision, info.uncompressed_md5)

    def _next_revision(
        self, tx: ReadTx, level: ResourceType, public_id: str, content_type: int, expected: ETag | None
    ) -> tuple[ResourceRef, StoredAttachment | None, int]:
        ref = require(tx, level, public_id)
        old = get_attachment(tx, ref.internal_id, content_type)
        if old is None:
            return ref, None, 0
        check_revision(attachment_etag(old), expected, self.check_revisions)
        return ref, old, old.revision + 1

    def delete(self, level: ResourceType, public_id: str, content_type: int, expected: ETag | None, now: str) -> None:
        """Delete a user attachment: its index row, then its file."""
        require_user_type(content_type, "attachment")
        require_if_match(expected, self.check_revisions)

        def write(tx: WriteTx) -> StoredAttachment:
            ref = require(tx, level, public_id)
            old = get_attachment(tx, ref.internal_id, content_type)
            if old is None:
                raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"{ref.path} has no attachment {content_type}")
            if expected is not None:
                check_revision(attachment_etag(old), expected, self.check_revisions)
            delete_attachment(tx, ref.internal_id, content_type)
            tx.log_change(ChangeType.UPDATED_ATTACHMENT, ref, now)
            return old

        old = self.index.write(write)
        self._discard(old.info)
        logger.info("attachment %d of %s/%s deleted (%s)", content_type, level.plural, public_id, old.info.uuid)

    def set_compression(
        self, level: ResourceType, public_id: str, content_type: int, compression: CompressionType, now: str
    ) -> None:
        """Rewrite an attachment compressed or uncompressed (nothing to do if it already is)."""
        before = self.get(level, public_id, content_type)
        if before.info.compression == compression:
            return
        try:
            data = self.accessor.read(before.info)
        except DicomVaultError:
            if self.get(level, public_id, content_type).info.uuid != before.info.uuid:
                # Replaced (and its file removed) between our look-up and our read: a lost race.
                raise DicomVaultError(
                    ErrorCode.REVISION, f"attachment {content_type} of {public_id} changed meanwhile"
                ) from None
            raise
        if before.info.uncompressed_md5 and md5_hex(data) != before.info.uncompressed_md5:
            # Rewriting would record fresh MD5s for damaged content and hide the damage.
            raise DicomVaultError(
                ErrorCode.CORRUPTED_FILE,
                f"attachment {before.info.uuid} does not match its recorded MD5: not rewritten",
            )
        info = self._write_as(data, content_type, compression)

        def write(tx: WriteTx) -> None:
            ref = require(tx, level, public_id)
            current = get_attachment(tx, ref.internal_id, content_type)
            if current is None or current.info.uuid != before.info.uuid:
                raise DicomVaultError(ErrorCode.REVISION, f"attachment {content_type} of {ref.path} changed meanwhile")
            put_attachment(tx, ref.internal_id, info, current.revision + 1)
            if content_type in USER_RANGE:  # as Orthanc: no change logged for its own attachments
                tx.log_change(ChangeType.UPDATED_ATTACHMENT, ref, now)

        self._commit(write, info)
        self._discard(before.info)
        logger.info(
            "attachment %d of %s/%s rewritten %s: %s (%d bytes) -> %s (%d bytes)",
            content_type,
            level.plural,
            public_id,
            "compressed" if compression == CompressionType.ZLIB_WITH_SIZE else "uncompressed",
            before.info.uuid,
            before.info.compressed_size,
            info.uuid,
            info.compressed_size,
        )

    # ---- files -----------------------------------------------------------------------------
    def _write_as(self, data: bytes, content_type: int, compression: CompressionType) -> FileInfo:
        """Write a new file with the compression asked for (not the configured one)."""
        return self.accessor.write(data, content_type, compression)

    def _commit(self, write: Callable[[WriteTx], T], new_file: FileInfo) -> T:
        try:
            return self.index.write(write)
        except CommitUncertain:
            logger.warning("attachment file %s kept: the index may hold it", new_file.uuid)
            raise
        except BaseException:
            self._discard(new_file)
            raise

    def _discard(self, info: FileInfo) -> None:
        try:
            self.accessor.remove(info)
        except Exception:
            # An orphan file is harmless (the index does not reference it); `check` lists it.
            logger.warning("could not remove the unreferenced attachment %s", info.uuid, exc_info=True)


def iter_file(handle: BinaryIO) -> Iterator[bytes]:
    """The chunks of an open file, closing it at the end (for streamed answers)."""
    with handle:
        yield from iter(lambda: handle.read(CHUNK), b"")
