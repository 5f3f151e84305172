"""The SQL of attachments: the `AttachedFiles` table (one file per resource and content type, its
sizes, MD5s and compression), with the revision that protects it against concurrent writers.

Functions take the caller's `ReadTx` / `WriteTx`; the business rules (which content types may be
written, revision checks, file handling, the change log) live in `ingest/attachments.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicomvault.enums import CompressionType, FileContentType
from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.model import FileInfo

_COLUMNS = "fileType, uuid, compressedSize, uncompressedSize, compressionType, uncompressedMD5, compressedMD5, revision"


@dataclass(frozen=True)
class StoredAttachment:
    """One attachment row: the file's description and the row's revision."""

    info: FileInfo
    revision: int


def _content_type(value: Any) -> FileContentType | int:
    try:
        return FileContentType(int(value))
    except ValueError:
        return int(value)


def _stored(row: Sequence[Any]) -> StoredAttachment:
    file_type, uuid, csize, usize, ctype, umd5, cmd5, revision = row
    info = FileInfo(
        uuid=str(uuid),
        content_type=_content_type(file_type),
        uncompressed_size=int(usize),
        uncompressed_md5=str(umd5),
        compression=CompressionType(int(ctype)),
        compressed_size=int(csize),
        compressed_md5=str(cmd5),
    )
    return StoredAttachment(info, int(revision))


def list_content_types(tx: ReadTx, internal_id: int) -> list[int]:
    """The content types attached to a resource, increasing (the order Orthanc lists them in)."""
    rows = tx.fetch_all("SELECT fileType FROM AttachedFiles WHERE id = ? ORDER BY fileType", (internal_id,))
    return [int(row[0]) for row in rows]


def get_attachment(tx: ReadTx, internal_id: int, content_type: int) -> StoredAttachment | None:
    row = tx.fetch_one(
        f"SELECT {_COLUMNS} FROM AttachedFiles WHERE id = ? AND fileType = ?",
        (internal_id, int(content_type)),
    )
    return None if row is None else _stored(row)


def put_attachment(tx: WriteTx, internal_id: int, info: FileInfo, revision: int) -> None:
    """Create or replace the attachment of `info.content_type`, recording `revision`."""
    tx.execute("DELETE FROM AttachedFiles WHERE id = ? AND fileType = ?", (internal_id, int(info.content_type)))
    tx.add_attachment(internal_id, info, revision)


def delete_attachment(tx: WriteTx, internal_id: int, content_type: int) -> None:
    tx.execute("DELETE FROM AttachedFiles WHERE id = ? AND fileType = ?", (internal_id, int(content_type)))
